"""Stage-level behaviour of the build: recipes, start-up checks, model stages with tiny weights,
cropping, camera motion, dry runs and resume safety."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from videos import make_video

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
    with pytest.raises(RecipeError, match="no builders file"):
        load_recipe("no-such-recipe")


def test_missing_optional_stage_dependency_fails_at_start_up_with_the_install_hint(
    small_raw: Path, tmp_path: Path
) -> None:
    if importlib.util.find_spec("easyocr") and importlib.util.find_spec("dover"):
        pytest.skip("easyocr and DOVER are both installed, so the paper recipe has nothing missing")
    with pytest.raises(MissingDependencyError, match="pip install"):
        build(small_raw, tmp_path / "out", recipe="medvideocap-55k")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.build").exists()


def test_ocr_stage_counts_burned_in_words(tmp_path: Path) -> None:
    pytest.importorskip(
        "easyocr", reason="OCR backend easyocr is not installed (pip install 'medvideocap[ocr]')"
    )
    raw = tmp_path / "raw"
    text = "drawtext=text='one two three four five six':fontsize=14:fontcolor=white:x=4:y=50"
    make_video(raw / "text.mp4", seconds=3, vf=text, **SIZE)
    recipe = _recipe({"stage": "ocr", "max_words": 2})
    [outcome] = Pipeline(recipe, tmp_path / "work").run(discover(raw)[0])
    assert outcome.stage == "ocr" and outcome.scores["text_words"] > 2


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
    assert [s["stage"] for s in plan["stages"]][:2] == ["probe", "split"] and plan["models"] == []
    assert plan["video_seconds"] == pytest.approx(6.0, abs=0.3) and plan["already_done"] == 0
    assert not out.exists() and not Path(f"{out}.build").exists()


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
    from medvideocap.schema import Caption

    seen = {}

    class Fake:
        def caption(self, frames, record, *, template):
            seen.update(frames=len(frames), id=record.id, template=template)
            text = "A colour test pattern with a moving clock."
            result = type("R", (), {})()
            result.ok, result.error = True, None
            result.captions = [
                Caption(name="detailed", text=text, style="detailed", source="fake", model="fake-1")
            ]
            return result

    monkeypatch.setattr(caption_stage, "_captioner", lambda cfg: Fake())
    recipe = _recipe(
        {"stage": "split", "min_seconds": 1.0},
        {"stage": "caption", "backend": "openai", "frames": 4, "template": "detailed_brief"},
    )
    sample = next(s for s in discover(small_raw) if s.input == "a.mp4")
    [outcome] = Pipeline(recipe, tmp_path / "work").run(sample)
    assert outcome.kept and seen == {"frames": 4, "id": "a-000", "template": "detailed_brief"}
    assert outcome.record["captions"][0]["model"] == "fake-1"


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

    from medvideocap.writer import DatasetWriter

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
