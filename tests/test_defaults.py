from __future__ import annotations

from pathlib import Path

import yaml

import medvideocap
from medvideocap.defaults import WAN_T2V_1_3B, WAN_T2V_14B
from medvideocap.generate import DEFAULT_BASE
from medvideocap.latents.encode import DEFAULT_MODEL
from medvideocap.train import TrainConfig


def test_every_verb_defaults_to_the_one_wan_id() -> None:
    assert WAN_T2V_1_3B == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert DEFAULT_MODEL == DEFAULT_BASE == TrainConfig().model_id == WAN_T2V_1_3B


def test_the_shipped_training_configs_name_it() -> None:
    configs = sorted((Path(medvideocap.__file__).parent / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        wanted = WAN_T2V_14B if path.stem.startswith("medgen-14b") else WAN_T2V_1_3B
        assert yaml.safe_load(path.read_text())["model_id"] == wanted, path
