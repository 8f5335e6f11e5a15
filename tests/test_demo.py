"""The README's first command runs this; it must keep working end to end."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from medvideocap.cli import main


@pytest.mark.slow
def test_demo_builds_loads_recaptions_encodes_and_trains_then_resumes_as_a_no_op(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    info = json.loads((out / "dataset" / "meta" / "info.json").read_text())
    kept = sum(info["counts"].values())
    funnel = json.loads((out / "dataset" / "meta" / "funnel.json").read_text())
    assert funnel["inputs"] == 6 and 0 < kept < 6  # the static clip is dropped on purpose
    assert "Curation funnel" in (out / "dataset" / "README.md").read_text()

    recaptioned = pl.read_parquet(out / "recaption" / "dataset" / "metadata" / "train.parquet")
    names = {c["name"] for caps in recaptioned["captions"].to_list() for c in caps}
    assert {"detailed", "brief"} < names  # originals kept next to the new captions

    manifest = json.loads((out / "latents" / "manifest.json").read_text())
    assert manifest["fingerprint"]
    assert (
        json.loads((out / "run" / "medvideocap_train.json").read_text())["latents_fingerprint"]
        == (manifest["fingerprint"])
    )
    assert (out / "run" / "checkpoints" / "step-00000006").is_dir()
    assert (out / "run" / "final" / "pytorch_lora_weights.safetensors").is_file()

    again = CliRunner().invoke(main, ["demo", "--out", str(out)], catch_exceptions=False)
    assert again.exit_code == 0, again.output
