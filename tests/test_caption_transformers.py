"""The transformers backend end to end with a tiny random Qwen2.5-VL (real architecture, processor and
chat template; gibberish text): frames in, text out, provenance stored, batching and hygiene retries."""

from __future__ import annotations

import json

import pytest
from fixtures_caption import record
from videos import make_video

from medvideocap.caption import make_captioner, sample_frames
from medvideocap.caption.tiny import save_tiny_vlm


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return save_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-qwen2.5-vl")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("vlm_clips")
    return [
        make_video(d / "a.mp4", seconds=2, fps=8),
        make_video(d / "b.mp4", seconds=1, fps=8, source="testsrc"),
        make_video(d / "c.mp4", seconds=3, fps=8, size=(96, 64)),
    ]


def _spy_generate(cap):
    calls = []
    real = cap.net.generate

    def generate(**kwargs):
        calls.append({"batch": kwargs["input_ids"].shape[0], "do_sample": kwargs.get("do_sample")})
        return real(**kwargs)

    cap.net.generate = generate
    return calls


def test_tiny_qwen25vl_captions_frames_with_provenance(tiny_vlm, clips):
    cap = make_captioner(
        "transformers",
        model=str(tiny_vlm),
        revision="local-test",
        batch_size=2,
        check_quality=False,
        params={"max_new_tokens": 12, "temperature": 0.0},
        name_prefix="tiny/brief-v1",
    )
    assert type(cap.net).__name__ == "Qwen2_5_VLForConditionalGeneration"
    calls = _spy_generate(cap)
    items = []
    for i, clip in enumerate(clips):
        frames, ts = sample_frames(clip, 8 if i != 1 else 4)
        items.append((frames, record(f"clip_{i}")))
    results = cap.caption_batch(items, template="brief")
    assert [c["batch"] for c in calls] == [2, 1] and all(c["do_sample"] is False for c in calls)
    assert all(r.ok for r in results)
    for (frames, _rec), res in zip(items, results, strict=True):
        [c] = res.captions
        assert c.name == "tiny/brief-v1/brief" and c.text.strip() and res.raw.strip()
        assert c.source == "transformers" and c.model == str(tiny_vlm) and c.model_revision == "local-test"
        assert c.prompt == "brief" and c.prompt_version == "1" and c.style == "brief"
        assert c.frame_timestamps == [f.info["timestamp"] for f in frames]
        params = json.loads(c.params)
        assert params["max_new_tokens"] == 12 and params["frames"] == len(frames) and params["seed"] == 0
    assert len(results[1].captions[0].frame_timestamps) == 4
    # Greedy decoding of the same frames gives the same text.
    again = cap.caption(items[0][0], items[0][1], template="brief")
    assert again.raw == results[0].raw


def test_gibberish_fails_hygiene_after_one_sampled_retry(tiny_vlm, clips):
    cap = make_captioner(
        "transformers", model=str(tiny_vlm), params={"max_new_tokens": 16, "temperature": 0.0}
    )
    calls = _spy_generate(cap)
    frames, _ = sample_frames(clips[0], 4)
    res = cap.caption(frames, record(), template="detailed_brief")
    assert not res.ok and res.captions == [] and res.attempts == 2
    assert res.error.startswith(("unparseable", "garbled", "length"))
    assert len(res.history) == 1 and res.history[0]["raw"]
    assert [c["do_sample"] for c in calls] == [False, True]  # the retry samples, so it can differ


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown caption backend"):
        make_captioner("vllm-direct")
