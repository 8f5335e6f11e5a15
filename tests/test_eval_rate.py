"""`medvideocap rate serve`: two raters in a real headless browser, the server killed midway, every
choice exported exactly once and read back by `eval --import-ratings`."""

from __future__ import annotations

import csv
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from medvideocap.eval.metrics import build_metrics
from medvideocap.eval.prompts import load_prompts
from medvideocap.eval.rate import RatingStore
from medvideocap.eval.ratings import import_ratings
from medvideocap.eval.runner import EvalError, run_eval
from medvideocap.generate import write_mp4

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# What a closed network needs (no background fetches), as root in a container (no sandbox).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An eval folder with two checkpoints' videos of three prompts: three blind pairs to rate."""
    root = tmp_path_factory.mktemp("rate")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps(
                {"id": f"p{i}", "prompt": f"a surgeon ties knot {i} <b>", "category": "medical teaching"}
            )
            + "\n"
            for i in range(3)
        )
    )
    y, x = np.mgrid[0:32, 0:32].astype(np.float32)
    for i in range(3):
        for label, noise in (("steady", 0), ("jittery", 40)):
            rng = np.random.default_rng(i)
            video = np.stack(
                [
                    np.stack([128 + 90 * np.sin((x + t + i) / 6), 128 + 90 * np.cos(y / 5), x * 4], -1)
                    for t in range(5)
                ]
            )
            video = np.clip(video + rng.integers(-noise, noise + 1, video.shape), 0, 255).astype(np.uint8)
            write_mp4(video, root / "videos" / label / f"p{i}-s0.mp4")
    out = root / "run"
    run_eval(
        out,
        prompts=load_prompts(prompts),
        metrics=build_metrics(["temporal_flickering"], device="cpu"),
        videos=root / "videos",
    )
    return out


class Server:
    """``medvideocap rate serve`` in a subprocess on a free port; ``url`` is what it printed."""

    def __init__(self, folder: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "medvideocap", "rate", "serve", str(folder), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        assert ready, "the rating server printed no URL in 120 s"
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (make test installs it)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _click(page: object, button: str) -> None:
    with page.expect_navigation():  # type: ignore[attr-defined]
        page.click(button)  # type: ignore[attr-defined]


def test_two_raters_in_a_browser_survive_a_killed_server_and_export_each_choice_once(
    eval_dir: Path, browser: object
) -> None:
    server = Server(eval_dir)
    raters = {}
    for name in ("dr-a", "dr-b"):
        page = browser.new_context().new_page()  # type: ignore[attr-defined]
        page.goto(server.url)
        page.fill("#rater", name)
        _click(page, "#start")
        raters[name] = page
    a, b = raters["dr-a"], raters["dr-b"]
    key = json.loads((eval_dir / "ratings" / "key.json").read_text())
    assert a.inner_text("#position") == "1" and b.inner_text("#position") == "1"
    body = a.content()
    assert "steady" not in body and "jittery" not in body  # blind
    assert "&lt;b&gt;" in body  # the prompt is text, not markup
    video = a.request.get(a.eval_on_selector("video", "v => v.src"))
    assert video.ok and video.body()[4:8] == b"ftyp"

    _click(a, "#left")  # the two raters interleave: a, b, a, b
    _click(b, "#right")
    _click(a, "#tie")
    _click(b, "#right")
    assert a.inner_text("#position") == "3" and b.inner_text("#position") == "3"
    server.kill()  # mid-session: two pairs each are stored, nothing else

    server = Server(eval_dir)
    try:
        for page, button in ((a, "#right"), (b, "#left")):
            page.goto(server.url + "r/" + page.inner_text("#who"))  # the rater comes back: resumes at pair 3
            assert page.inner_text("#position") == "3"
            _click(page, button)
            assert "All 3 pairs rated" in page.inner_text("#done")
    finally:
        server.kill()

    res = subprocess.run(
        [sys.executable, "-m", "medvideocap", "rate", "export", str(eval_dir)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    exported = Path(res.stdout.strip())
    rows = list(csv.DictReader(exported.open()))
    got = {(r["rater"], r["pair"]): r["choice"] for r in rows}
    assert len(rows) == len(got) == 6  # every (rater, pair) exactly once
    pairs = [p["pair"] for p in csv.DictReader((eval_dir / "ratings" / "sheet.csv").open())]
    assert [got[("dr-a", p)] for p in pairs] == ["left", "tie", "right"]
    assert [got[("dr-b", p)] for p in pairs] == ["right", "right", "left"]
    assert set(key["pairs"]) == set(pairs)
    text = import_ratings(exported, resamples=100)
    assert "6 ratings from 2 rater(s) (dr-a, dr-b)" in text


def test_a_rater_who_changes_their_mind_replaces_their_choice_and_bad_input_is_named(eval_dir: Path) -> None:
    store = RatingStore(eval_dir)
    pair = store.pairs[0]["pair"]
    store.record("dr-c", pair, "left")
    store.record("dr-c", pair, "right", "second look")
    mine = [r for r in store.rows() if r["rater"] == "dr-c"]
    assert [(r["pair"], r["choice"], r["notes"]) for r in mine] == [(pair, "right", "second look")]
    with pytest.raises(EvalError, match="pair 'r9999' is not in"):
        store.record("dr-c", "r9999", "left")
    with pytest.raises(EvalError, match="choice 'both'"):
        store.record("dr-c", pair, "both")
    with pytest.raises(EvalError, match="rater '../x'"):
        store.record("../x", pair, "left")
