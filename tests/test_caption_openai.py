"""The openai backend against a loopback chat-completions server that is told what to do per request."""

from __future__ import annotations

import base64
import io
import json
import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from fixtures_caption import BRIEF, DETAILED, GOOD_REPLY, REFUSAL, Action, FakeChatServer, record
from PIL import Image

from medvideocap.caption import make_captioner, sample_frames
from medvideocap.caption.openai_api import RetryPolicy, parse_retry_after

KEY = "sk-test-SECRET-0123456789"


@pytest.fixture
def frames(tiny_clip):
    return sample_frames(tiny_clip, 8)[0]


@pytest.fixture
def server():
    srv = FakeChatServer()
    with srv.running():
        yield srv


def captioner(server, monkeypatch, **kw):
    monkeypatch.setenv("MVC_TEST_KEY", KEY)
    sleeps: list[float] = []
    opts = dict(
        model="served-vlm",
        endpoint=server.url,
        api_key_env="MVC_TEST_KEY",
        sleep=sleeps.append,
        rng=random.Random(0),
        retry=RetryPolicy(max_retries=4, base_delay=1.0, max_delay=8.0),
        timeout=5.0,
    )
    opts.update(kw)
    cap = make_captioner("openai", **opts)
    return cap, sleeps


def test_request_carries_frames_as_jpeg_data_urls_context_and_key(server, frames, monkeypatch):
    cap, sleeps = captioner(server, monkeypatch)
    res = cap.caption(frames, record(), template="detailed_brief")
    assert res.ok and res.error is None and sleeps == []
    [req] = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert req["headers"]["Accept-Encoding"] == "identity"  # the reply cap counts bytes as sent
    body = req["body"]
    assert body["model"] == "served-vlm"
    system, user = body["messages"]
    assert "medical" in system["content"]
    parts = user["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 8
    head, b64 = images[0]["image_url"]["url"].split(",", 1)
    assert head == "data:image/jpeg;base64"
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "JPEG" and img.size == (64, 48)
    text = parts[-1]["text"]
    assert "Laparoscopic suturing basics" in text and "pass the needle" in text
    assert "0.1, 0.4, 0.6, 0.9" in text  # the frame times the model is told about


def test_captions_carry_provenance(server, frames, monkeypatch):
    cap, _ = captioner(server, monkeypatch, name_prefix="served-vlm/detailed_brief-v1")
    res = cap.caption(frames, record(), template="detailed_brief")
    by_name = {c.name: c for c in res.captions}
    assert set(by_name) == {"served-vlm/detailed_brief-v1/detailed", "served-vlm/detailed_brief-v1/brief"}
    d = by_name["served-vlm/detailed_brief-v1/detailed"]
    assert d.text == DETAILED and d.style == "detailed"
    assert by_name["served-vlm/detailed_brief-v1/brief"].text == BRIEF
    assert d.source == "openai" and d.model == "served-vlm" and d.model_revision == "fp_test42"
    assert d.prompt == "detailed_brief" and d.prompt_version == "1"
    assert d.frame_timestamps == [0.125, 0.375, 0.625, 0.875, 1.125, 1.375, 1.625, 1.875]
    params = json.loads(d.params)
    assert params["temperature"] == 0.2 and params["frames"] == 8 and params["attempt"] == 0
    assert d.created_at is not None and abs(d.created_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert res.raw == GOOD_REPLY


def test_429_honours_retry_after(server, frames, monkeypatch):
    server.script = [Action(status=429, headers={"Retry-After": "7"}), Action()]
    cap, sleeps = captioner(server, monkeypatch)
    res = cap.caption(frames, record(), template="detailed_brief")
    assert res.ok and len(server.requests) == 2
    assert sleeps == [7.0]  # longer than the 0.5-1 s backoff, so the server's word wins


def test_5xx_backs_off_exponentially_with_jitter_within_bounds(server, frames, monkeypatch):
    server.script = [Action(status=500), Action(status=502), Action(status=503), Action()]
    cap, sleeps = captioner(server, monkeypatch)
    res = cap.caption(frames, record(), template="detailed_brief")
    assert res.ok and len(server.requests) == 4
    assert len(sleeps) == 3
    for k, s in enumerate(sleeps):
        assert 2**k / 2 <= s <= 2**k, (k, s)
    assert len(set(sleeps)) == 3


def test_gives_up_after_max_retries_with_capped_delays(server, frames, monkeypatch):
    server.default = lambda body: Action(status=503)
    cap, sleeps = captioner(
        server, monkeypatch, retry=RetryPolicy(max_retries=6, base_delay=1.0, max_delay=4.0)
    )
    res = cap.caption(frames, record(), template="detailed_brief")
    assert not res.ok and res.captions == []
    assert "HTTP 503" in res.error and "gave up after 7 attempts" in res.error
    assert len(server.requests) == 7 and len(sleeps) == 6
    assert all(s <= 4.0 for s in sleeps) and all(s >= 2.0 for s in sleeps[2:])
    assert res.attempts == 1  # transport failures are not re-asked by the hygiene retry


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_other_4xx_fail_at_once(server, frames, monkeypatch, status):
    server.script = [Action(status=status, body='{"error": "bad request shape"}')]
    cap, sleeps = captioner(server, monkeypatch)
    res = cap.caption(frames, record(), template="detailed_brief")
    assert not res.ok and f"HTTP {status}" in res.error and "bad request shape" in res.error
    assert len(server.requests) == 1 and sleeps == []


def test_key_never_appears_in_errors_or_repr(server, frames, monkeypatch):
    server.default = lambda body: Action(status=401, body=f'{{"error": "invalid key Bearer {KEY}"}}')
    cap, _ = captioner(server, monkeypatch)
    res = cap.caption(frames, record(), template="detailed_brief")
    assert "MVC_TEST_KEY" in res.error and KEY not in res.error and "***" in res.error
    assert KEY not in repr(cap)


def test_missing_key_is_an_error_before_any_request(monkeypatch):
    monkeypatch.delenv("MVC_NO_SUCH_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="MVC_NO_SUCH_KEY"):
        make_captioner("openai", api_key_env="MVC_NO_SUCH_KEY")
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        make_captioner("openai")  # the hosted API default always needs one
    local = make_captioner("openai", endpoint="http://127.0.0.1:8000/v1")  # a local vLLM may not
    assert "Authorization" not in local._client.headers


def test_timeouts_are_retried(server, frames, monkeypatch):
    server.script = [Action(delay=1.5), Action()]
    cap, sleeps = captioner(server, monkeypatch, timeout=0.3)
    res = cap.caption(frames, record(), template="detailed_brief")
    assert res.ok and len(server.requests) == 2 and len(sleeps) == 1


def test_unreadable_response_body_is_retried(server, frames, monkeypatch):
    server.script = [Action(raw_body=b'{"choices": [ oops'), Action()]
    cap, sleeps = captioner(server, monkeypatch)
    res = cap.caption(frames, record(), template="detailed_brief")
    assert res.ok and len(server.requests) == 2 and len(sleeps) == 1


def test_refusal_is_asked_once_more_then_accepted(server, frames, monkeypatch):
    server.script = [Action(content=REFUSAL), Action()]
    cap, _ = captioner(server, monkeypatch)
    res = cap.caption(frames, record(), template="detailed_brief")
    assert res.ok and res.attempts == 2
    assert res.history[0]["raw"] == REFUSAL and res.history[0]["error"].startswith("refusal")
    temps = [r["body"]["temperature"] for r in server.requests]
    assert temps[1] > temps[0]  # the second ask is not a replay of the first
    params = json.loads(res.captions[0].params)
    assert params["attempt"] == 1 and params["temperature"] == temps[1]  # provenance records what was sent


def test_two_refusals_are_recorded_as_failure_with_raw(server, frames, monkeypatch):
    server.default = lambda body: Action(content=REFUSAL)
    cap, _ = captioner(server, monkeypatch)
    res = cap.caption(frames, record(), template="detailed_brief")
    assert not res.ok and res.error.startswith("refusal") and res.raw == REFUSAL
    assert res.attempts == 2 and len(server.requests) == 2


def test_malformed_json_reply_is_retried_then_fails(server, frames, monkeypatch):
    cut = GOOD_REPLY[: len(GOOD_REPLY) // 3]
    server.script = [Action(content=cut), Action(content='{"detailed": 12, "brief": null}')]
    cap, _ = captioner(server, monkeypatch)
    res = cap.caption(frames, record(), template="detailed_brief")
    assert not res.ok and res.error.startswith("unparseable")
    assert res.history[0]["raw"] == cut


def test_concurrency_limit_is_respected(server, tiny_clip, monkeypatch):
    server.default = lambda body: Action(delay=0.2)
    cap, _ = captioner(server, monkeypatch, concurrency=2)
    frames = sample_frames(tiny_clip, 2)[0]
    items = [(frames, record(f"c{i}")) for i in range(6)]
    results = cap.caption_batch(items, template="detailed_brief")
    assert [r.ok for r in results] == [True] * 6
    assert len(server.requests) == 6 and 1 <= server.max_inflight <= 2


def test_retry_policy_and_retry_after_parsing():
    rng = random.Random(1)
    policy = RetryPolicy(max_retries=3, base_delay=2.0, max_delay=10.0, max_retry_after=30.0)
    for k in range(8):
        cap = min(10.0, 2.0 * 2**k)
        assert cap / 2 <= policy.delay(k, None, rng) <= cap
    assert policy.delay(0, 1000.0, rng) == 30.0  # a server asking for 17 minutes gets the cap
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=12), usegmt=True), now) == 12.0
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_structured_template_yields_one_json_caption(server, frames, monkeypatch):
    tmpl_fields = [
        "setting",
        "people",
        "actions",
        "instruments",
        "anatomy",
        "imaging_modality",
        "on_screen_text",
        "camera",
    ]
    reply = {f: "none" for f in tmpl_fields}
    reply.update(
        setting="operating room", actions="a gloved hand passes a curved needle", anatomy="abdominal wall"
    )
    server.script = [Action(content=json.dumps(reply))]
    cap, _ = captioner(server, monkeypatch, json_mode=True)
    res = cap.caption(frames, record(), template="structured")
    [c] = res.captions
    assert res.ok and c.name == "structured" and c.style == "structured"
    assert json.loads(c.text) == reply
    body = server.requests[0]["body"]
    assert body["response_format"] == {"type": "json_object"}
    assert all(f'"{f}"' in body["messages"][1]["content"][-1]["text"] for f in tmpl_fields)


def test_reply_controls_are_stripped_and_markup_is_an_error_not_a_caption(server, frames, monkeypatch):
    shown = DETAILED + " Systolic pressure stays <90 mmHg on the monitor."
    hostile = json.dumps({"detailed": "\x1b[31m" + shown + "\u202e\x07", "brief": BRIEF + "\x1b]0;pwned\x07"})
    cap, _ = captioner(server, monkeypatch, hygiene_retries=0)
    server.script = [Action(content=hostile)]
    res = cap.caption(frames, record(), template="detailed_brief")
    assert res.ok and {c.name: c.text for c in res.captions} == {"detailed": shown, "brief": BRIEF}
    assert "\x1b" not in res.raw and "\u202e" not in res.raw  # what the journal records is stripped too
    lenient, _ = captioner(server, monkeypatch, hygiene_retries=0, check_quality=False)
    for markup in ("<|im_start|>assistant\n", "<script>alert(1)</script>\n"):
        for cap_ in (cap, lenient):
            server.script = [Action(content=markup + GOOD_REPLY + " tail" * 1000)]
            res = cap_.caption(frames, record(), template="detailed_brief")
            assert not res.ok and res.captions == [] and res.final
            assert res.error.startswith("markup: markup in reply") and "chat template" in res.error
            assert res.raw.startswith(markup) and len(res.raw) < 1200  # only the start is recorded


def test_oversized_replies_are_cut_off_while_streaming(server, tiny_clip, monkeypatch):
    runaway = "A surgeon ties a knot. " * ((4 << 20) // 23)  # about 4 MiB of caption
    server.default = lambda body: Action(content=runaway)
    cap, sleeps = captioner(server, monkeypatch, concurrency=2, max_reply_bytes=64 << 10)
    frames = sample_frames(tiny_clip, 2)[0]
    results = cap.caption_batch([(frames, record("c0")), (frames, record("c1"))], template="detailed_brief")
    assert len(server.requests) == 2 and sleeps == []  # not retried: the next reply would be as big
    for res in results:
        assert not res.ok and res.captions == [] and res.raw == ""
        assert "over 65536 bytes (max_reply_bytes)" in res.error
        assert "A surgeon ties a knot." in res.error and len(res.error) < 1400  # the first KB, no more


@pytest.mark.parametrize("trickle_head", [False, True], ids=["body", "status-and-headers"])
def test_timeout_is_a_deadline_for_the_whole_request(server, frames, monkeypatch, trickle_head):
    server.script = [Action(trickle=10.0, trickle_head=trickle_head)]  # every read comes within 1 s
    cap, _ = captioner(server, monkeypatch, timeout=1.0, max_retries=0)
    start = time.monotonic()
    res = cap.caption(frames, record(), template="detailed_brief")
    assert not res.ok and res.error.startswith("timed out: no complete reply within 1 s")
    assert time.monotonic() - start < 6.0  # the trickle alone takes 10 s
