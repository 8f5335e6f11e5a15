"""The 0.1 module paths (``medvideocap/aliases.py``): each still imports, gives the very module the new path
gives (so a monkeypatch through either name reaches both), and warns with the new path."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from medvideocap import aliases


@pytest.mark.parametrize("old,new", sorted(aliases.MOVED.items()))
def test_old_path_is_the_new_module_and_warns(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


def test_0_1_readme_imports_run_in_a_fresh_interpreter() -> None:
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "import medvideocap\n"
        "from medvideocap.media.probe import probe\n"
        "from medvideocap import FrameSpec, load, load_latents\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "from medvideocap.probe import probe as old\n"
        "from medvideocap.frames import FrameSpec as OldSpec\n"
        "assert old is probe and OldSpec is FrameSpec\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_module_still_fails_to_import() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("medvideocap.no_such_module")
