"""``medical_accuracy``: a judge behind the caption backends scores videos with the shipped rubric; replies
that are no verdict are counted and listed as unscored, never scored 0. The judge is a real loopback
OpenAI-compatible server (tests/fixtures_caption.py) or a tiny random Qwen2.5-VL."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from fixtures_caption import REFUSAL, Action, FakeChatServer
from PIL import Image
from videos import make_video

from medvideocap.caption import sample_frames
from medvideocap.caption.tiny import save_tiny_vlm
from medvideocap.cli import main
from medvideocap.eval.metrics import DEFAULT_METRICS, MetricError, Unscored, build_metrics
from medvideocap.eval.metrics.medical_accuracy import (
    CRITERIA,
    RUBRIC_VERSION,
    MedicalAccuracy,
    frame_indices,
    load_rubric,
)
from medvideocap.eval.prompts import load_prompts
from medvideocap.eval.runner import EvalError, read_video, run_eval

JUDGE = "judge-vl-test"
PROMPTS = [
    {
        "id": "good",
        "category": "clinical practice",
        "prompt": "a surgeon closes a skin incision with sutures",
    },
    {"id": "refused", "category": "clinical practice", "prompt": "an appendectomy, laparoscopic view"},
    {"id": "garbage", "category": "medical teaching", "prompt": "a nurse measures blood pressure"},
    {"id": "range", "category": "medical animation", "prompt": "the heart's four chambers contracting"},
]


def verdict(anatomy: Any = 5, procedure: Any = 4, instruments: Any = 3, safety: Any = 1) -> str:
    scores = {"anatomy": anatomy, "procedure": procedure, "instruments": instruments, "safety": safety}
    return json.dumps({"scores": scores, "justification": "Sutures cross the wound; no gloves are worn."})


#: What the judge answers for each prompt of :data:`PROMPTS`.
REPLIES = {
    "good": verdict(),
    "refused": REFUSAL,
    "garbage": "4 4 3 ??? ####",
    "range": verdict(safety=6),
}


def by_prompt(body: dict[str, Any]) -> Action:
    """The server's answer: the reply scripted for the prompt the request carries."""
    text = body["messages"][1]["content"][-1]["text"]
    for p in PROMPTS:
        if json.dumps(p["prompt"]) in text:
            return Action(content=REPLIES[p["id"]])
    raise AssertionError(f"no scripted reply for {text!r}")


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def server() -> Iterator[FakeChatServer]:
    with FakeChatServer(by_prompt).running() as srv:
        yield srv


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 1-second 8-fps mp4 per prompt, named as ``eval --videos`` reads them (one checkpoint)."""
    folder = tmp_path_factory.mktemp("judged") / "mine"
    for i, p in enumerate(PROMPTS):
        make_video(
            folder / f"{p['id']}-s0.mp4",
            seconds=1,
            fps=8,
            size=(48, 32),
            source=("testsrc2", "testsrc")[i % 2],
        )
    return folder


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


def judge(url: str, **options: Any) -> MedicalAccuracy:
    return MedicalAccuracy({"": JUDGE}, device="cpu", endpoint=url, **options)


def clip(frames: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(frames, 32, 48, 3), dtype=np.uint8)


def decode_images(body: dict[str, Any]) -> list[Image.Image]:
    parts = body["messages"][1]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert all(u.startswith("data:image/jpeg;base64,") for u in urls)
    return [Image.open(io.BytesIO(base64.b64decode(u.partition(",")[2]))) for u in urls]


def test_a_verdict_scores_the_mean_of_its_criteria_mapped_from_1_5_and_keeps_the_raw_reply(
    server: FakeChatServer,
) -> None:
    value, record = judge(server.url).assess(clip(), PROMPTS[0]["prompt"])
    assert value == pytest.approx(np.mean([(5 - 1) / 4, (4 - 1) / 4, (3 - 1) / 4, (1 - 1) / 4]))
    _, sha = load_rubric()
    assert record["raw"] == REPLIES["good"]
    assert record["scores"] == {"anatomy": 5, "procedure": 4, "instruments": 3, "safety": 1}
    assert record["justification"].startswith("Sutures cross")
    assert record["judge"] == {"backend": "openai", "model": JUDGE, "fingerprint": "fp_test42"}
    assert record["rubric"] == {"version": RUBRIC_VERSION, "sha256": sha}
    assert record["frames"] == [1, 3, 5, 7, 9, 11, 13, 15]


def test_the_request_carries_the_frames_as_images_the_rubric_and_the_prompt(
    server: FakeChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sk-judge-secret")
    metric = judge(server.url, api_key_env="JUDGE_KEY", frames=5)
    metric.assess(clip(), PROMPTS[0]["prompt"])
    (request,) = server.requests
    body = request["body"]
    rubric, _ = load_rubric()
    assert request["path"] == "/v1/chat/completions" and body["model"] == JUDGE
    assert body["messages"][0] == {"role": "system", "content": rubric}
    assert all(f'"{c}"' in rubric for c in CRITERIA)
    images = decode_images(body)
    assert [im.size for im in images] == [(48, 32)] * 5
    text = body["messages"][1]["content"][-1]
    assert text["type"] == "text" and json.dumps(PROMPTS[0]["prompt"]) in text["text"]
    assert "The 5 images above" in text["text"]
    assert body["temperature"] == 0.0
    assert request["headers"]["Authorization"] == "Bearer sk-judge-secret"
    assert "sk-judge-secret" not in json.dumps(metric.info()) + repr(metric.__dict__)


@pytest.mark.parametrize(
    "reply,kind",
    [
        (REFUSAL, "refusal"),
        ("I can't help with evaluating surgical footage.", "refusal"),
        ("4 4 3 ??? ####", "unparseable"),
        ("", "unparseable"),
        ('{"anatomy": 4, "procedure": 4}', "unparseable"),
        (json.dumps({"scores": {"anatomy": 4, "procedure": 4, "instruments": 4}}), "unparseable"),
        (verdict(safety="4"), "unparseable"),
        (verdict(safety=True), "unparseable"),
        (verdict(safety=6), "out_of_range"),
        (verdict(anatomy=0), "out_of_range"),
        (verdict(procedure=3.5), "out_of_range"),
        ("<|im_start|>assistant " + verdict(), "markup"),
    ],
)
def test_a_reply_that_is_no_verdict_leaves_the_video_unscored_with_the_reason_and_raw_reply(
    reply: str, kind: str
) -> None:
    with (
        FakeChatServer(lambda body: Action(content=reply)).running() as srv,
        pytest.raises(Unscored) as caught,
    ):
        judge(srv.url).assess(clip(), "a nurse measures blood pressure")
    assert caught.value.kind == kind
    assert str(caught.value).startswith(f"{kind}: ")
    assert caught.value.record["raw"] == reply
    assert caught.value.record["judge"]["model"] == JUDGE
    assert caught.value.record["rubric"]["version"] == RUBRIC_VERSION


def test_a_fenced_verdict_with_words_around_it_is_read() -> None:
    reply = "Here is my assessment:\n```json\n" + verdict(2, 2, 2, 2) + "\n```\nLet me know."
    with FakeChatServer(lambda body: Action(content=reply)).running() as srv:
        value, record = judge(srv.url).assess(clip(), "a nurse measures blood pressure")
    assert value == pytest.approx(0.25) and record["raw"] == reply


def test_a_judge_that_gives_no_reply_stops_the_run_saying_what_to_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sk-judge-secret")
    with FakeChatServer(lambda body: Action(status=401)).running() as srv:
        metric = judge(srv.url, api_key_env="JUDGE_KEY")
        with pytest.raises(MetricError, match=r"gave no reply: HTTP 401.*--judge-endpoint") as caught:
            metric.assess(clip(), "a nurse measures blood pressure")
    assert "sk-judge-secret" not in str(caught.value)


def test_the_default_endpoint_without_a_key_fails_before_any_video_is_scored() -> None:
    with pytest.raises(MetricError, match="OPENAI_API_KEY"):
        build_metrics(["medical_accuracy"], device="cpu")
    with pytest.raises(MetricError, match="environment variable NO_SUCH_KEY"):
        MedicalAccuracy(device="cpu", endpoint="http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY")
    with pytest.raises(MetricError, match="for the openai judge backend"):
        MedicalAccuracy(device="cpu", backend="transformers", endpoint="http://127.0.0.1:9/v1")
    with pytest.raises(MetricError, match="not among the metrics selected"):
        build_metrics(["temporal_flickering"], options={"medical_accuracy": {"endpoint": "http://x/v1"}})
    assert "medical_accuracy" not in DEFAULT_METRICS


def test_the_judge_sees_the_frames_sample_frames_reads_from_the_mp4(tmp_path: Path) -> None:
    for seconds, fps, n in [(2, 8, 8), (2, 8, 5), (1, 5, 8), (3, 10, 7)]:
        path = make_video(tmp_path / f"{seconds}-{fps}.mp4", seconds=seconds, fps=fps, size=(48, 32))
        video = read_video(path)
        images, _ = sample_frames(path, n)
        mine = [video[i] for i in frame_indices(len(video), n)]
        assert len(mine) == len(images), (seconds, fps, n)
        for a, b in zip(mine, images, strict=True):
            assert np.array_equal(a, np.asarray(b)), (seconds, fps, n)


def _journal(out: Path) -> dict[str, dict[str, Any]]:
    lines = (out / "journal.jsonl").read_text().splitlines()
    return {e["id"]: e for e in map(json.loads, lines)}


def test_eval_videos_scores_what_the_judge_judged_and_lists_the_rest_as_unscored(
    server: FakeChatServer, videos: Path, prompts_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    prompts = load_prompts(prompts_file)
    summary = run_eval(out, prompts=prompts, metrics=[judge(server.url)], videos=videos)
    assert (summary.videos, summary.scored, summary.unscored) == (4, 1, 3)
    assert len(server.requests) == 4

    scores = pl.read_parquet(out / "scores.parquet")
    assert scores["prompt_id"].to_list() == ["good"] and scores["value"].to_list() == [pytest.approx(0.5625)]
    result = json.loads((out / "summary.json").read_text())
    mine = result["checkpoints"]["mine"]
    assert mine["means"] == {"medical_accuracy": 0.5625} and mine["videos"] == 1
    assert mine["total"] is None  # the judge is not in the VBench-style total
    assert result["unscored"]["count"] == 3
    assert result["unscored"]["counts"] == {
        "mine": {"medical_accuracy": {"refusal": 1, "unparseable": 1, "out_of_range": 1}}
    }
    assert sorted(r["prompt_id"] for r in result["unscored"]["videos"]) == ["garbage", "range", "refused"]
    info = result["metrics"]["medical_accuracy"]
    assert info["models"]["model"] == {"id": JUDGE, "revision": "served"}
    assert info["models"]["rubric"] == {"id": RUBRIC_VERSION, "revision": f"sha256:{load_rubric()[1]}"}
    assert info["judge"] == {"backend": "openai", "endpoint": server.url, "frames": 8}

    report = (out / "report.md").read_text()
    assert "## Unscored" in report and "3 video scores are missing" in report
    for pid, kind in [("refused", "refusal"), ("garbage", "unparseable"), ("range", "out_of_range")]:
        assert f"| mine | {pid} | 0 | medical_accuracy | `{kind}: " in report
    assert "Not in the total (weight 0): medical_accuracy" in report

    journal = _journal(out)
    good = journal["score/mine/good/0/medical_accuracy"]
    assert (
        good["ok"] and good["record"]["raw"] == REPLIES["good"] and good["record"]["judge"]["model"] == JUDGE
    )
    for pid in ("refused", "garbage", "range"):
        entry = journal[f"score/mine/{pid}/0/medical_accuracy"]
        assert not entry["ok"] and entry["record"]["raw"] == REPLIES[pid]
        assert entry["record"]["rubric"] == {"version": RUBRIC_VERSION, "sha256": load_rubric()[1]}

    again = run_eval(out, prompts=prompts, metrics=[judge(server.url)], videos=videos)
    assert (again.scored, again.unscored) == (0, 0) and len(server.requests) == 4  # settled: not asked again
    assert json.loads((out / "summary.json").read_text()) == result


def test_a_folder_refuses_to_mix_two_rubrics_or_two_judges(
    server: FakeChatServer, videos: Path, prompts_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    prompts = load_prompts(prompts_file)
    run_eval(out, prompts=prompts, metrics=[judge(server.url)], videos=videos)
    edited = judge(server.url)
    edited.rubric_sha256 = "0" * 64
    with pytest.raises(EvalError, match="metric 'medical_accuracy' was .* mix two models"):
        run_eval(out, prompts=prompts, metrics=[edited], videos=videos)
    other = MedicalAccuracy({"": "another-judge"}, device="cpu", endpoint=server.url)
    with pytest.raises(EvalError, match="mix two models"):
        run_eval(out, prompts=prompts, metrics=[other], videos=videos)


def test_the_cli_takes_the_judge_model_endpoint_and_key_variable(
    server: FakeChatServer, videos: Path, prompts_file: Path, tmp_path: Path
) -> None:
    args = ["eval", "--videos", str(videos), "--out", str(tmp_path / "o"), "--prompts", str(prompts_file)]
    args += [
        "--metrics",
        "medical_accuracy",
        "--metric-model",
        f"medical_accuracy={JUDGE}",
        "--device",
        "cpu",
    ]
    env = {"JUDGE_KEY": "sk-cli-secret", "HF_HUB_OFFLINE": "1"}
    res = CliRunner().invoke(
        main, [*args, "--judge-endpoint", server.url, "--judge-api-key-env", "JUDGE_KEY"], env=env
    )
    assert res.exit_code == 0, res.output
    assert "4 videos (0 generated, 1 scores new, 3 unscored)" in res.output
    assert "sk-cli-secret" not in res.output
    assert {r["body"]["model"] for r in server.requests} == {JUDGE}
    assert {r["headers"]["Authorization"] for r in server.requests} == {"Bearer sk-cli-secret"}
    args[args.index("medical_accuracy")] = "temporal_flickering"
    res = CliRunner().invoke(main, [*args[:-4], "--judge-endpoint", server.url])
    assert res.exit_code == 1 and "medical_accuracy, not among the metrics selected" in res.output


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-qwen2.5-vl")


def test_a_local_vlm_judges_through_the_transformers_backend(tiny_vlm: Path) -> None:
    metric = MedicalAccuracy({"": str(tiny_vlm)}, device="cpu", backend="transformers", frames=2)
    assert metric.info()["models"]["model"]["revision"].startswith("local:")
    with pytest.raises(Unscored) as caught:  # a random model answers words, not a verdict
        metric.assess(clip(4), "a nurse measures blood pressure")
    record = caught.value.record
    assert caught.value.kind in ("unparseable", "refusal") and record["raw"]
    assert record["judge"] == {"backend": "transformers", "model": str(tiny_vlm), "fingerprint": None}
    assert record["frames"] == [1, 3]
