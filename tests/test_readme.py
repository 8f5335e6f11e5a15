"""Every shell command in README.md runs as written, on small data and tiny models.

The commands are read from the README itself (its ```bash blocks and the `medvideocap ...` cells of its
table), so a command added to or changed in the README is run here; one this test does not know how to
run fails it. Each runs as the real CLI in a subprocess, as written, with these substitutions (and only
these), which the test names where they happen:

* folder placeholders (``raw/``, ``mydata/``, ``latents/``, ``PATH_OR_REPO``, ...) become folders under a
  temporary directory, and optional ``[...]`` parts are included;
* the Hub is not reachable: ``convert FreedomIntelligence/MedVideoCap-55K`` reads a local folder shaped
  like that release (``fixtures_upstream``), and ``push`` runs in-process against the project's Hub
  stand-in (``fixtures_hubnative.HubStandIn``, checked against the real ``HfApi`` signatures);
* real model ids are replaced by tiny random models of the same classes (``medvideocap.tiny``,
  ``medvideocap.caption.tiny``) through the verbs' own options, appended to the README's arguments;
  ``eval`` runs one prompt (an appended ``--limit 1``) with the two metrics that need no weights;
* ``build --recipe medvideocap-55k`` needs the paper's models, so it runs as written with ``--dry-run``
  (the plan, naming every model), and the dataset the other commands use is built with ``--recipe demo``;
* ``make demo`` / ``make test`` are checked with ``make -n`` (the targets exist and expand): the demo itself
  is run by tests/test_demo.py, and ``make test`` is this suite.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_hubnative import HubStandIn, tree_files
from fixtures_upstream import make_upstream_release

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
UPSTREAM_REPO = "FreedomIntelligence/MedVideoCap-55K"


def readme_commands() -> list[str]:
    """Shell commands of the README: lines of its bash blocks, and table cells starting `medvideocap `."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    for row in re.findall(r"^\|.*\|$", text, flags=re.M):
        commands += [code for code in re.findall(r"`([^`]+)`", row) if code.startswith("medvideocap ")]
    return commands


def argv(command: str, places: dict[str, str]) -> list[str]:
    """The command's words with optional ``[...]`` parts included and placeholders replaced."""
    words = shlex.split(re.sub(r"\[([^\]]+)\]", r"\1", command))
    out = []
    for word in words:
        key, eq, value = word.rpartition("=")
        if word in places:
            word = places[word]
        elif eq and value in places:  # --set latents=latents/
            word = f"{key}={places[value]}"
        out.append(word)
    return out


# the order the verbs run in (each needs what an earlier one made)
ORDER = [
    "make",
    "build",
    "info",
    "validate",
    "stats",
    "recaption",
    "encode-latents",
    "train",
    "generate",
    "eval",
]
ORDER += ["convert", "push"]


def test_readme_starts_with_make_demo_and_make_test_and_lists_every_verb() -> None:
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"]
    verbs = {shlex.split(c)[1] for c in commands if c.startswith("medvideocap ")}
    unknown = verbs - set(ORDER)
    assert not unknown, f"README commands this test does not run yet: {unknown}"


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from medvideocap.caption.tiny import save_tiny_vlm
    from medvideocap.demo import make_raw_videos
    from medvideocap.tiny import save_tiny_pipeline

    tmp = tmp_path_factory.mktemp("readme")
    make_raw_videos(tmp / "raw", seconds=2.5)
    save_tiny_pipeline(tmp / "tiny-wan")
    save_tiny_vlm(tmp / "tiny-vlm")
    return {
        "raw/": str(tmp / "raw"),
        "mydata/": str(tmp / "mydata"),
        "mydata-qwen/": str(tmp / "mydata-qwen"),
        "latents/": str(tmp / "latents"),
        "mvc55k/": str(tmp / "mvc55k"),
        "PATH_OR_REPO": str(tmp / "mydata"),
        "DIR": str(tmp / "plots"),
        "runs/x/final": str(tmp / "run" / "final"),
        "sample.mp4": str(tmp / "sample.mp4"),
        "evals/x/": str(tmp / "evals" / "x"),
        UPSTREAM_REPO: str(make_upstream_release(tmp / "upstream", n_clips=4)),
        "_tmp": str(tmp),
    }


def _tiny_options(words: list[str], places: dict[str, str]) -> list[str]:
    """Options appended so the command runs with tiny models on CPU (the README gives real model ids)."""
    verb = words[1]
    tmp = Path(places["_tmp"])
    if verb == "recaption":
        return ["--model", str(tmp / "tiny-vlm"), "--template", "brief", "--no-hygiene"] + [
            "--max-new-tokens",
            "8",
            "--frames",
            "4",
        ]
    if verb == "encode-latents":
        return ["--vae", str(tmp / "tiny-wan"), "--max-length", "32", "--num-frames", "9", "--fps", "8"] + [
            "--height",
            "64",
            "--width",
            "96",
            "--position",
            "center",
        ]
    if verb == "train":
        sets = [f"model_id={tmp / 'tiny-wan'}", f"output_dir={tmp / 'run'}", "max_steps=2", "num_workers=0"]
        sets += ["gradient_accumulation_steps=1", "mixed_precision='no'", "gradient_checkpointing=false"]
        sets += ["text_seq_len=32", "lora_rank=4", "lora_alpha=4", "checkpoint_every=2", "validation_every=0"]
        sets += ["report_to=null", "warmup_steps=0", "validation_frames=9", "validation_height=64"]
        sets += ["validation_width=96", "validation_steps=2"]
        return [w for s in sets for w in ("--set", s)]
    if verb == "generate":
        return ["--frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu"]
    if verb == "eval":  # one prompt (a later --limit wins) and the metrics that need no model weights
        small = ["--frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu"]
        return [*small, "--limit", "1", "--metrics", "temporal_flickering,flow_interpolation_smoothness"]
    return []


def _run(words: list[str]) -> subprocess.CompletedProcess[str]:
    if words[0] == "medvideocap":
        words = [sys.executable, "-m", "medvideocap", *words[1:]]
    t0 = time.monotonic()
    done = subprocess.run(words, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    print(f"{time.monotonic() - t0:6.1f} s  rc {done.returncode}  {shlex.join(words[2:])[:160]}", flush=True)
    return done


@pytest.mark.timeout(1500)  # ten CLI runs, four of them loading torch models: minutes on two loaded cores
def test_every_readme_command_runs_as_written(
    places: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = sorted(
        readme_commands(), key=lambda c: ORDER.index(shlex.split(c)[0 if c.startswith("make") else 1])
    )
    ran = []
    for command in commands:
        words = argv(command, places)
        if words[0] == "make":  # `make -n`: the target exists and expands; running it is another test's job
            done = _run(["make", "-n", words[1]])
            assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
            ran.append(command)
            continue
        verb = words[1]
        if verb == "push":  # the Hub stand-in, in-process: HfApi(token=...) -> HubStandIn
            import huggingface_hub

            from medvideocap.cli import main

            api = HubStandIn(Path(places["_tmp"]) / "remote")
            monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None, api=api: api)
            result = CliRunner().invoke(main, words[1:])
            assert result.exit_code == 0, f"{command}: {result.output[-3000:]}"
            repo_id = words[3]
            assert tree_files(api.branch_dir(repo_id)) == tree_files(Path(words[2]))
            ran.append(command)
            continue
        if verb == "build" and "medvideocap-55k" in words:
            plan = _run([*words, "--dry-run"])  # the paper's recipe needs its models: plan it as written
            assert plan.returncode == 0, f"{command} --dry-run: {plan.stderr[-3000:]}"
            assert json.loads(plan.stdout)["models"], plan.stdout[-2000:]
            words = [w if w != "medvideocap-55k" else "demo" for w in words]
        done = _run([*words, *_tiny_options(words, places)])
        assert done.returncode == 0, f"{command} (run as {shlex.join(words)}):\n{done.stderr[-4000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-4000:]
        ran.append(command)
    assert sorted(ran) == sorted(readme_commands())
    assert (Path(places["sample.mp4"])).stat().st_size > 0
    assert (Path(places["evals/x/"]) / "report.md").is_file()
    shutil.rmtree(Path(places["_tmp"]) / "remote", ignore_errors=True)
