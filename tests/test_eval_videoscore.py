"""The ``videoscore`` metric (VideoScore v1.1) loads a VideoScore-shaped checkpoint through transformers'
Idefics2 classes and its safetensors head, feeds it what VideoScore is fed, and maps its 1-4 ratings to
[0, 1]; the real 8B backbone's shapes are checked on the ``meta`` device."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from scenes import scene  # noqa: E402

from medvideocap.eval.metrics import MetricError, build_metrics  # noqa: E402
from medvideocap.eval.metrics.videoscore import (  # noqa: E402
    ASPECTS,
    HEAD_WEIGHT,
    IDEFICS2_8B_CONFIG,
    INDEX_FILE,
    QUERY_PROMPT,
    VideoScore,
    frame_indices,
    query_text,
)
from medvideocap.eval.tiny import save_tiny_videoscore  # noqa: E402

RATINGS = (1.0, 4.0, 2.5, 0.4, 4.6)  # the last two leave the 1-4 scale, as a regression head can


STATIC = np.repeat(scene()[None], 9, axis=0)
MOVING = np.stack([scene(shift=3 * i) for i in range(9)])
SHUFFLED = MOVING[[0, 8, 1, 7, 2, 6, 3, 5, 4]]
NOISE = np.random.default_rng(0).integers(0, 256, (9, 48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videoscore")
    return {
        "random": save_tiny_videoscore(root / "random"),
        "fixed": save_tiny_videoscore(root / "fixed", ratings=RATINGS),
    }


def _metric(path: Path) -> VideoScore:
    (metric,) = build_metrics(["videoscore"], {"videoscore": {"": str(path)}}, device="cpu")
    assert isinstance(metric, VideoScore)
    return metric


def test_scores_are_in_unit_interval_deterministic_and_see_the_frames_and_their_order(
    checkpoints: dict[str, Path],
) -> None:
    metric = _metric(checkpoints["random"])
    aspects = {name: metric.aspects(v, "a heart") for name, v in [("static", STATIC), ("moving", MOVING)]}
    aspects |= {"shuffled": metric.aspects(SHUFFLED, "a heart"), "noise": metric.aspects(NOISE, "a heart")}
    for name, video in [("static", STATIC), ("moving", MOVING), ("shuffled", SHUFFLED), ("noise", NOISE)]:
        assert tuple(aspects[name]) == ASPECTS
        assert all(np.isfinite(r) for r in aspects[name].values())
        value = metric.score(video, "a heart")
        assert 0.0 <= value <= 1.0
        assert _metric(checkpoints["random"]).score(video, "a heart") == value
        assert metric.aspects(video, "a heart") == aspects[name]
    # random weights judge nothing, but different frames (or the same frames reordered) must reach the head
    rows = [tuple(a.values()) for a in aspects.values()]
    assert len(set(rows)) == len(rows)
    assert metric.aspects(MOVING, "a lung") != aspects["moving"]


def test_score_is_the_mean_of_the_five_ratings_mapped_from_1_4_and_clipped(
    checkpoints: dict[str, Path],
) -> None:
    metric = _metric(checkpoints["fixed"])
    assert metric.aspects(MOVING, "a heart") == pytest.approx(dict(zip(ASPECTS, RATINGS, strict=True)))
    # (1-1)/3, (4-1)/3, (2.5-1)/3, 0.4 -> below 1 -> 0, 4.6 -> above 4 -> 1
    assert metric.score(MOVING, "a heart") == pytest.approx((0 + 1 + 0.5 + 0 + 1) / 5)


def test_model_id_and_revision_are_recorded(checkpoints: dict[str, Path]) -> None:
    info = _metric(checkpoints["random"]).info()
    other = _metric(checkpoints["fixed"]).info()
    assert info["name"] == "videoscore" and info["definition"] and info["normalisation"]
    assert info["models"]["model"]["id"] == str(checkpoints["random"])
    assert info["models"]["model"]["revision"].startswith("local:")
    assert other["models"]["model"]["revision"] != info["models"]["model"]["revision"]
    assert VideoScore.default_models == {"": "TIGER-Lab/VideoScore-v1.1"}


def test_a_missing_head_file_is_a_metric_error_that_names_it(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    broken = Path(shutil.copytree(checkpoints["random"], tmp_path / "no-head-shard"))
    shard = json.loads((broken / INDEX_FILE).read_text())["weight_map"][HEAD_WEIGHT]
    (broken / shard).unlink()
    with pytest.raises(MetricError, match=f"head file .*{shard} is missing"):
        _metric(broken).score(MOVING, "a heart")

    no_weights = Path(shutil.copytree(checkpoints["random"], tmp_path / "no-weights"))
    for file in no_weights.glob("model*.safetensors*"):
        file.unlink()
    with pytest.raises(MetricError, match=r"neither model\.safetensors\.index\.json nor model\.safetensors"):
        _metric(no_weights).score(MOVING, "a heart")


def test_frames_and_query_are_what_videoscore_is_fed(checkpoints: dict[str, Path]) -> None:
    assert frame_indices(9).tolist() == list(range(9))
    assert frame_indices(48).tolist() == list(range(48))
    assert frame_indices(96).tolist() == list(range(0, 96, 2))
    picked = frame_indices(81)
    assert len(picked) == 48 and picked[0] == 0 and picked[-1] == 79 and (np.diff(picked) > 0).all()

    text = query_text("a heart", 3)
    assert text.startswith(
        "\nSuppose you are an expert in judging and evaluating the quality of AI-generated"
    )
    assert (
        'For this video, the text prompt is "a heart",\nall the frames of video are as follows:\n<image> '
        in text
    )
    assert text.endswith(":\n<image> <image> <image> ")
    assert "sub-score, \nthe lowest 1.0" in QUERY_PROMPT  # the template's own trailing space is kept
    assert query_text("{braces} kept", 1).count("{braces} kept") == 1

    metric = _metric(checkpoints["random"])
    long = np.stack([scene(shift=i) for i in range(60)])  # more than 48 frames: 48 of them are scored
    assert 0.0 <= metric.score(long, "a heart") <= 1.0
    with pytest.raises(MetricError, match="videoscore measures change over time and needs at least 2"):
        metric.score(MOVING[:1], "a heart")


def test_real_idefics2_8b_backbone_and_head_build_on_meta_with_the_published_size() -> None:
    """The real VideoScore v1.1 weights, per the Hub's file listing of TIGER-Lab/VideoScore-v1.1 (tree
    dcecee6f43e27307a0fe97abe6faf67fc479badc): four bf16 shards of 4.97 + 4.92 + 5.00 + 1.66 GB = 16.55 GB,
    i.e. 8.27e9 parameters at 2 bytes (each size is rounded to 10 MB, so +-0.02 GB). The same backbone with
    Idefics2's language-model head instead of the score head is the "8.4B params" the Hub shows for Mantis'
    generative VideoScore sibling Mantis-VL/mantis-8b-idefics2-video-eval-refined-40k_4096_generation."""
    import torch
    from transformers import Idefics2Config, Idefics2Model

    text_config = IDEFICS2_8B_CONFIG["text_config"]
    with torch.device("meta"):
        backbone = Idefics2Model(Idefics2Config(**IDEFICS2_8B_CONFIG))
        head = torch.nn.Linear(text_config["hidden_size"], len(ASPECTS))
    assert all(p.device.type == "meta" for p in backbone.parameters())
    backbone_params = sum(p.numel() for p in backbone.parameters())
    params = backbone_params + sum(p.numel() for p in head.parameters())
    assert abs(2 * params - 16.55e9) <= 0.02e9
    lm_head = text_config["vocab_size"] * text_config["hidden_size"]
    assert round((backbone_params + lm_head) / 1e9, 1) == 8.4

    vision, text = backbone.vision_model, backbone.text_model
    assert vision.embeddings.position_embedding.weight.shape == (70 * 70, 1152)  # 980 px / patch 14
    assert len(vision.encoder.layers) == 27
    assert backbone.connector.perceiver_resampler.latents.shape == (64, 4096)
    assert len(text.layers) == 32 and text.embed_tokens.weight.shape == (32003, 4096)
