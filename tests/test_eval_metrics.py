"""Each eval metric behaves as its definition says, on constructed videos, with tiny random DINO/CLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from scenes import scene  # noqa: E402

from medvideocap.eval.metrics import METRICS, MetricError, build_metrics, parse_metric_models  # noqa: E402
from medvideocap.eval.metrics.base import consistency  # noqa: E402
from medvideocap.eval.tiny import (  # noqa: E402
    save_tiny_aesthetic_head,
    save_tiny_clip,
    save_tiny_dino,
    save_tiny_musiq,
    save_tiny_videoscore,
)

SHUFFLE = [0, 8, 1, 7, 2, 6, 3, 5, 4]  # keeps the first frame, so only the previous-frame terms change


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("eval-models")
    dino, clip = str(save_tiny_dino(root / "dino")), str(save_tiny_clip(root / "clip"))
    head = str(save_tiny_aesthetic_head(root / "head.safetensors", rating=6.0))
    return {
        "subject_consistency": {"": dino},
        "background_consistency": {"": clip},
        "imaging_quality_clipiqa": {"": clip},
        "text_video_alignment": {"": clip},
        "aesthetic_quality": {"": clip, "head": head},
        "videoscore": {"": str(save_tiny_videoscore(root / "videoscore"))},
        "imaging_quality": {"": str(save_tiny_musiq(root / "musiq.pth"))},
    }


STATIC = np.repeat(scene()[None], 9, axis=0)
MOVING = np.stack([scene(shift=i) for i in range(9)])
FADE = np.stack([((1 - t) * scene() + t * scene(shift=30)).astype(np.uint8) for t in np.linspace(0, 1, 9)])
NOISE = np.random.default_rng(0).integers(0, 256, (9, 48, 64, 3), dtype=np.uint8)


def _metric(name: str, models: dict[str, dict[str, str]]):  # type: ignore[no-untyped-def]
    (metric,) = build_metrics([name], models, device="cpu")
    return metric


def test_consistency_rule_is_vbench_mean_of_first_and_previous_cosine_clipped_at_zero() -> None:
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    assert consistency([e1, e1, e1]) == pytest.approx(1.0)
    # frame 1: (cos to first 1 + cos to prev 1) / 2 = 1; frame 2: (0 + 0) / 2 = 0; mean 0.5
    assert consistency([e1, e1, e2]) == pytest.approx(0.5)
    # frame 1 to first/prev is e2 vs e1 = 0; frame 2 (= e1): to first 1, to previous 0 -> 0.5; mean 0.25
    assert consistency([e1, e2, e1]) == pytest.approx(0.25)
    assert consistency([e1, [-1.0, 0.0]]) == 0.0  # a negative cosine is clipped, not averaged in
    assert consistency([e1]) == 1.0


@pytest.mark.parametrize("name", ["subject_consistency", "background_consistency"])
def test_consistency_metrics_score_a_static_video_1_and_shuffled_or_noise_lower(
    name: str, models: dict[str, dict[str, str]]
) -> None:
    metric = _metric(name, models)
    static = metric.score(STATIC, "a heart")
    assert static == pytest.approx(1.0, abs=1e-6)
    fade, shuffled, noise = (metric.score(v, "a heart") for v in (FADE, FADE[SHUFFLE], NOISE))
    assert 0.0 <= noise < fade < static
    assert shuffled < fade


def test_temporal_flickering_is_255_minus_mean_abs_difference_over_255() -> None:
    metric = _metric("temporal_flickering", {})
    assert metric.score(STATIC, "") == 1.0
    black_white = np.stack([np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)] * 3)
    assert metric.score(black_white, "") == 0.0
    steps = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (0, 10, 20, 30)])
    assert metric.score(steps, "") == pytest.approx((255 - 10) / 255)
    assert metric.score(MOVING[SHUFFLE], "") < metric.score(MOVING, "") < 1.0


def test_flow_interpolation_smoothness_recreates_smooth_motion_not_shuffled_frames_or_noise() -> None:
    metric = _metric("flow_interpolation_smoothness", {})
    assert metric.score(STATIC, "") == pytest.approx(1.0, abs=1e-3)
    moving = metric.score(MOVING, "")
    assert moving > 0.99  # a 1-px pan is what optical flow interpolates well
    assert metric.score(MOVING[SHUFFLE], "") < moving - 0.05
    assert metric.score(NOISE, "") < moving - 0.1


def test_aesthetic_quality_is_the_laion_rating_over_10_clipped(
    models: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    assert _metric("aesthetic_quality", models).score(MOVING, "") == pytest.approx(0.6, abs=1e-6)
    high = {"aesthetic_quality": {**models["aesthetic_quality"], "head": str(tmp_path / "h.safetensors")}}
    save_tiny_aesthetic_head(tmp_path / "h.safetensors", rating=12.0)
    assert _metric("aesthetic_quality", high).score(MOVING, "") == 1.0


def _independent_clip(model_dir: str, video: np.ndarray, texts: list[str]) -> np.ndarray:
    """Frame x text cosines computed straight with transformers, not through the metric code."""
    import torch
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(model_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(model_dir)(images=list(video), return_tensors="pt")[
        "pixel_values"
    ]
    tokens = AutoTokenizer.from_pretrained(model_dir)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
    img = torch.nn.functional.normalize(img, dim=-1)
    txt = torch.nn.functional.normalize(txt, dim=-1)
    return (img @ txt.T).numpy()


def test_text_video_alignment_is_mean_frame_prompt_cosine_clipped_at_zero(
    models: dict[str, dict[str, str]],
) -> None:
    metric = _metric("text_video_alignment", models)
    prompts = ["a heart", "a surgeon ties a knot", "an X-ray of a hand", "blood cells", "a nurse", "CPR"]
    cos = _independent_clip(models["text_video_alignment"][""], FADE, prompts)
    expected = np.clip(cos, 0, None).mean(axis=0)
    got = [metric.score(FADE, p) for p in prompts]
    assert got == pytest.approx(expected.tolist(), abs=1e-5)
    assert max(got) > 0.0 and len(set(np.round(got, 6))) > 1  # the prompt matters


def test_imaging_quality_clipiqa_is_softmax_of_good_vs_bad_photo(models: dict[str, dict[str, str]]) -> None:
    from medvideocap.eval.metrics.imaging_quality import ANTONYMS, LOGIT_SCALE

    metric = _metric("imaging_quality_clipiqa", models)
    cos = _independent_clip(models["imaging_quality_clipiqa"][""], FADE, list(ANTONYMS))
    logits = LOGIT_SCALE * cos
    prob_good = 1.0 / (1.0 + np.exp(logits[:, 1] - logits[:, 0]))
    assert metric.score(FADE, "ignored") == pytest.approx(float(prob_good.mean()), abs=1e-5)
    assert metric.score(STATIC, "") == pytest.approx(metric.score(STATIC[:1], ""), abs=1e-6)


# medical_accuracy asks a served judge: tests/test_eval_medical_accuracy.py runs it against a loopback server
@pytest.mark.parametrize("name", sorted(set(METRICS) - {"medical_accuracy"}))
def test_every_metric_is_in_unit_interval_deterministic_and_records_its_model(
    name: str, models: dict[str, dict[str, str]]
) -> None:
    first = _metric(name, models)
    values = [first.score(v, "a heart") for v in (STATIC, MOVING, NOISE)]
    again = _metric(name, models).score(NOISE, "a heart")
    assert all(0.0 <= v <= 1.0 for v in values)
    assert again == values[2]
    info = first.info()
    assert (
        info["name"] == name and info["definition"] and info["normalisation"] and info["relation_to_vbench"]
    )
    for role, model in info["models"].items():
        assert model["revision"].startswith("local:"), (role, model)


def test_defaults_are_the_real_model_ids() -> None:
    defaults = {name: cls.default_models for name, cls in METRICS.items()}
    assert defaults["subject_consistency"] == {"": "facebook/dino-vitb16"}
    assert defaults["background_consistency"] == {"": "openai/clip-vit-base-patch32"}
    assert defaults["text_video_alignment"] == {"": "openai/clip-vit-base-patch32"}
    assert defaults["aesthetic_quality"][""] == "openai/clip-vit-large-patch14"
    assert defaults["aesthetic_quality"]["head"].startswith("hf://")
    assert defaults["videoscore"] == {"": "TIGER-Lab/VideoScore-v1.1"}


def test_metric_model_overrides_parse_and_bad_ones_say_what_to_type() -> None:
    assert parse_metric_models(["subject_consistency=./dino", "aesthetic_quality.head=h.pth"]) == {
        "subject_consistency": {"": "./dino"},
        "aesthetic_quality": {"head": "h.pth"},
    }
    with pytest.raises(MetricError, match="expected NAME=PATH_OR_ID"):
        parse_metric_models(["subject_consistency"])
    with pytest.raises(MetricError, match="unknown metric 'dover'"):
        parse_metric_models(["dover=x"])
    with pytest.raises(MetricError, match="no model role"):
        build_metrics(["temporal_flickering"], {"temporal_flickering": {"": "x"}})
    with pytest.raises(MetricError, match="unknown metric.*dover; known: subject_consistency"):
        build_metrics(["dover"])
    with pytest.raises(MetricError, match=r"uint8 \(T, H, W, 3\)"):
        _metric("temporal_flickering", {}).score(np.zeros((3, 8, 8)), "")


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("subject_consistency", 2),
        ("background_consistency", 2),
        ("temporal_flickering", 2),
        ("flow_interpolation_smoothness", 3),
    ],
)
def test_a_temporal_metric_refuses_a_video_too_short_to_have_time_in_it(
    name: str, frames: int, models: dict[str, dict[str, str]]
) -> None:
    metric = _metric(name, models)
    short = np.stack([scene(float(i)) for i in range(frames - 1)])
    with pytest.raises(MetricError, match=f"{name} measures change over time and needs at least {frames}"):
        metric.score(short, "")
    assert 0.0 <= metric.score(np.stack([scene(float(i)) for i in range(frames)]), "") <= 1.0
