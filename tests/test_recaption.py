"""``medvideocap recaption`` end to end: upstream and hub-native sources, journal, resume after SIGKILL,
failure records, --where/--limit, and --write producing a new hub-native dataset beside the source."""

from __future__ import annotations

import errno
import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_caption import BRIEF, DETAILED, REFUSAL, Action, FakeChatServer
from fixtures_disk import half_written, resize, tmpfs
from fixtures_upstream import make_upstream_release

from medvideocap.caption import make_captioner
from medvideocap.caption.recaption import JOURNAL_FILE, RecaptionError, recaption
from medvideocap.dataset.source import open_source

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    return make_upstream_release(tmp_path_factory.mktemp("up") / "release", n_clips=6)


@pytest.fixture
def server():
    srv = FakeChatServer()
    with srv.running():
        yield srv


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _journal_ids(out: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (out / JOURNAL_FILE).read_text().splitlines() if line.strip()]


def _cap(server, **kw):
    opts = dict(
        model="served-vlm", endpoint=server.url, concurrency=1, sleep=lambda s: None, rng=random.Random(0)
    )
    opts.update(kw)
    return make_captioner("openai", **opts)


def test_upstream_recaption_write_keeps_originals_and_video_bytes(upstream, server, tmp_path):
    before = _tree_digest(upstream)
    out = tmp_path / "run"
    summary = recaption(upstream, out, backend="openai", captioner=_cap(server), write=True)
    assert summary.selected == 6 and summary.captioned == 6 and summary.failed == 0
    assert summary.caption_names == [
        "served-vlm/detailed_brief-v1/detailed",
        "served-vlm/detailed_brief-v1/brief",
    ]
    assert sorted(_journal_ids(out)) == [f"{i:05d}" for i in range(6)]
    assert _tree_digest(upstream) == before  # the source is only read

    from medvideocap.dataset.hubnative import HubNativeDataset

    ds = HubNativeDataset.open(out / "dataset")
    clips = open_source(upstream, None)
    index = {clip_id: i for i, clip_id in enumerate(clips.ids)}
    seen = 0
    for split in ds.splits:
        for rec in ds.records(split):
            seen += 1
            orig = clips.record(index[rec.id])
            names = {c.name for c in rec.captions}
            assert {"detailed", "brief", *summary.caption_names} <= names
            assert rec.caption("detailed") == orig.caption("detailed")  # originals untouched
            assert rec.caption("served-vlm/detailed_brief-v1/detailed") == DETAILED
            assert rec.caption("served-vlm/detailed_brief-v1/brief") == BRIEF
            new = next(c for c in rec.captions if c.name.endswith("/detailed") and c.source == "openai")
            assert (
                new.prompt == "detailed_brief"
                and new.model == "served-vlm"
                and len(new.frame_timestamps) == 8
            )
            assert ds.read_video(split, rec.id) == clips.reader(index[rec.id])[0]()
    assert seen == 6
    info = json.loads((out / "dataset" / "meta" / "info.json").read_text())
    assert info["recipe"]["recaption"]["template"] == "detailed_brief-v1"


def test_finished_run_resumes_without_building_a_captioner(upstream, server, tmp_path, monkeypatch):
    out = tmp_path / "run"
    recaption(upstream, out, backend="openai", captioner=_cap(server), limit=2)

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run must not load a model")

    monkeypatch.setattr("medvideocap.caption.recaption.make_captioner", no_model)
    again = recaption(upstream, out, backend="openai", model="served-vlm", limit=2)
    assert again.already_done == 2 and again.captioned == 0


def test_rerun_captions_nothing_twice(upstream, server, tmp_path):
    out = tmp_path / "run"
    recaption(upstream, out, backend="openai", captioner=_cap(server), limit=3)
    assert len(server.requests) == 3
    again = recaption(upstream, out, backend="openai", captioner=_cap(server), limit=5)
    assert again.already_done == 3 and again.captioned == 2 and len(server.requests) == 5
    ids = _journal_ids(out)
    assert len(ids) == len(set(ids)) == 5


def test_failures_are_journaled_with_raw_and_only_backend_failures_retried_by_default(
    upstream, server, tmp_path
):
    out = tmp_path / "run"
    server.script = [Action(content=REFUSAL), Action(content=REFUSAL), Action(status=400, body="bad image")]
    summary = recaption(upstream, out, backend="openai", captioner=_cap(server), limit=4)
    assert summary.failed == 2 and summary.captioned == 2
    entries = _last_entries(out)
    first, second = entries["00000"], entries["00001"]
    assert not first["ok"] and first["error"].startswith("refusal") and first["raw"] == REFUSAL
    assert first["attempts"] == 2 and first["history"][0]["raw"] == REFUSAL and first["captions"] == []
    assert first["final"] is True  # the reply was the problem: settled until --retry-failed
    assert not second["ok"] and "HTTP 400" in second["error"] and second["final"] is False
    rerun = recaption(upstream, out, backend="openai", captioner=_cap(server), limit=4)
    assert rerun.captioned == 1 and rerun.already_done == 3  # the backend failure is asked again
    retried = recaption(upstream, out, backend="openai", captioner=_cap(server), limit=4, retry_failed=True)
    assert retried.captioned == 1 and retried.failed == 0
    assert {k for k, v in _last_entries(out).items() if v["ok"]} == {f"{i:05d}" for i in range(4)}


def test_a_broken_backend_stops_the_run_and_the_rerun_recovers(upstream, server, tmp_path):
    out = tmp_path / "run"
    server.default = lambda body: Action(status=404, body='{"error": "model served-vlm does not exist"}')
    with pytest.raises(RecaptionError, match="3 clips in a row.*HTTP 404.*does not exist"):
        recaption(upstream, out, backend="openai", captioner=_cap(server), max_backend_failures=3)
    assert 3 <= len(_journal_ids(out)) < 6
    server.default = lambda body: Action()
    summary = recaption(upstream, out, backend="openai", captioner=_cap(server))
    assert summary.already_done == 0 and summary.captioned == 6
    assert all(e["ok"] for e in _last_entries(out).values()) and len(_last_entries(out)) == 6


def _last_entries(out):
    entries = {}
    for line in (out / JOURNAL_FILE).read_text().splitlines():
        e = json.loads(line)
        entries[e["id"]] = e
    return entries


def test_where_and_limit_select_clips(upstream, server, tmp_path):
    out = tmp_path / "run"
    s = recaption(
        upstream,
        out,
        backend="openai",
        captioner=_cap(server),
        where='category == "clinical_practice" or fps == 12',
    )
    picked = sorted(_journal_ids(out))
    clips = open_source(upstream, None)
    records = [clips.record(i) for i in range(len(clips))]
    expect = sorted(r.id for r in records if r.category == "clinical_practice" or r.fps == 12)
    assert picked == expect and s.selected == len(expect) and 0 < len(expect) < 6


def test_changed_settings_on_resume_are_refused(upstream, server, tmp_path):
    out = tmp_path / "run"
    recaption(upstream, out, backend="openai", captioner=_cap(server), limit=1)
    with pytest.raises(RecaptionError, match="template"):
        recaption(upstream, out, backend="openai", captioner=_cap(server), limit=1, template="brief")


def test_out_inside_source_is_refused(upstream, server):
    with pytest.raises(RecaptionError, match="never modified"):
        recaption(upstream, upstream / "run", backend="openai", captioner=_cap(server))


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(upstream, tmp_path):
    srv = FakeChatServer(default=lambda body: Action(delay=1.0))  # slow enough to kill mid-run
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "medvideocap", "recaption", str(upstream), "--out", str(out), "--backend", "openai",
        "--endpoint", "URL", "--model", "served-vlm", "--concurrency", "1", "--no-progress",
    ]  # fmt: skip
    with srv.running():
        cmd[cmd.index("URL")] = srv.url
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        journal = out / JOURNAL_FILE
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = set(_journal_ids(out))
        assert 2 <= len(done_before) < 6
        sent_before = len(srv.requests)
        srv.default = lambda body: Action()
        summary = recaption(upstream, out, backend="openai", captioner=_cap(srv))
    ids = _journal_ids(out)
    assert sorted(ids) == [f"{i:05d}" for i in range(6)] and len(ids) == len(set(ids))
    assert summary.already_done == len(done_before) and summary.captioned == 6 - len(done_before)
    assert len(srv.requests) - sent_before == 6 - len(done_before)  # nothing journaled was asked again


def test_hub_native_source_keeps_splits(upstream, server, tmp_path):
    from medvideocap.dataset.hubnative import HubNativeDataset
    from medvideocap.dataset.writer import DatasetWriter

    src = tmp_path / "hub"
    with DatasetWriter(src, split_fn=lambda r: "test" if r.id in ("00001", "00004") else "train") as w:
        clips = open_source(upstream, None)
        for i in range(len(clips)):
            w.write(clips.record(i), clips.reader(i)[0]())
    before = _tree_digest(src)
    out = tmp_path / "run"
    summary = recaption(src, out, backend="openai", captioner=_cap(server), template="brief", write=True)
    assert summary.captioned == 6 and _tree_digest(src) == before
    ds = HubNativeDataset.open(out / "dataset")
    assert {r.id for r in ds.records("test")} == {"00001", "00004"}
    for rec in ds.records("train"):
        assert rec.caption("served-vlm/brief-v1/brief") is not None


def test_a_bug_in_the_backend_stops_the_run_with_its_traceback_and_a_truncated_clip_is_journaled(
    server, tmp_path, monkeypatch
):
    """Error policy: a truncated mp4 is a failure entry and the run goes on; a TypeError planted in the
    backend's ``_generate`` (a bug, not an API error) stops the run as itself, never journaled as a
    failed caption. Clips finished before it, the truncated one included, are kept; the rerun after the
    fix captions the rest."""
    from fixtures_loader import make_hub_native

    from medvideocap.caption.openai_api import OpenAICaptioner

    src = make_hub_native(tmp_path / "hub", 4, corrupt=("truncated",))  # c000 c001 c002 bad_truncated c003
    real = OpenAICaptioner._generate

    def planted(self, jobs):
        if any(job.record.id == "c003" for job in jobs):
            raise TypeError("_body() got an unexpected keyword argument 'planted'")
        return real(self, jobs)

    monkeypatch.setattr(OpenAICaptioner, "_generate", planted)
    out = tmp_path / "run"
    with pytest.raises(TypeError, match="planted") as caught:
        recaption(src, out, backend="openai", captioner=_cap(server), template="brief")
    assert caught.traceback[-1].name == "planted"
    entries = {e["id"]: e for e in map(json.loads, (out / JOURNAL_FILE).read_text().splitlines())}
    assert sorted(entries) == ["bad_truncated", "c000", "c001", "c002"]
    bad = entries["bad_truncated"]
    assert not bad["ok"] and bad["error"].startswith("frames: FrameError") and "cannot decode" in bad["error"]
    assert all(entries[c]["ok"] for c in ("c000", "c001", "c002"))
    monkeypatch.undo()
    again = recaption(src, out, backend="openai", captioner=_cap(server), template="brief")
    assert again.captioned == 1 and again.already_done == 4 and _journal_ids(out)[-1] == "c003"


@pytest.mark.slow
def test_transformers_backend_through_the_cli_with_write(upstream, tmp_path):
    from medvideocap.caption.tiny import save_tiny_vlm
    from medvideocap.dataset.hubnative import HubNativeDataset

    model = save_tiny_vlm(tmp_path / "tiny-qwen")
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "medvideocap", "recaption", str(upstream), "--out", str(out),
         "--backend", "transformers", "--model", str(model), "--device", "cpu", "--template", "brief",
         "--frames", "4", "--batch-size", "3", "--max-new-tokens", "6", "--no-hygiene", "--write",
         "--no-progress"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    name = "tiny-qwen/brief-v1/brief"
    assert summary["captioned"] == 6 and summary["caption_names"] == [name]
    ds = HubNativeDataset.open(out / "dataset")
    recs = [r for s in ds.splits for r in ds.records(s)]
    assert len(recs) == 6
    for rec in recs:
        c = next(c for c in rec.captions if c.name == name)
        assert (
            c.text and c.source == "transformers" and c.model == str(model) and len(c.frame_timestamps) == 4
        )
        assert rec.caption("brief") is not None  # the upstream caption is still there
        assert json.loads(c.params)["max_new_tokens"] == 6


def test_cli_reports_bad_where_without_a_traceback(upstream, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "medvideocap", "recaption", str(upstream), "--out", str(tmp_path / "r"),
         "--backend", "openai", "--endpoint", "http://127.0.0.1:9/v1", "--where", "colour == 'red'"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode != 0 and "unknown field 'colour'" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_ray_engine_runs_the_same_work_and_resumes(upstream, server, tmp_path):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        out = tmp_path / "run"
        opts = dict(backend="openai", engine="ray", model="served-vlm", endpoint=server.url, concurrency=2)
        first = recaption(upstream, out, limit=2, **opts)
        assert first.captioned == 2 and len(server.requests) == 2
        second = recaption(upstream, out, **opts)
        assert second.already_done == 2 and second.captioned == 4 and len(server.requests) == 6
    finally:
        ray.shutdown()
    ids = _journal_ids(out)
    assert sorted(ids) == [f"{i:05d}" for i in range(6)] and len(ids) == len(set(ids))
    entry = json.loads((out / JOURNAL_FILE).read_text().splitlines()[0])
    assert entry["ok"] and entry["captions"][0]["name"] == "served-vlm/detailed_brief-v1/detailed"


def test_write_follows_the_journal_across_limit_growth_and_retried_failures(upstream, server, tmp_path):
    from medvideocap.dataset.hubnative import HubNativeDataset

    def written(out):
        ds = HubNativeDataset.open(out / "dataset")
        return {
            r.id: r.caption("served-vlm/detailed_brief-v1/brief") for s in ds.splits for r in ds.records(s)
        }

    def journal(out):  # shown when an assertion fails
        lines = (out / JOURNAL_FILE).read_text().splitlines()
        return [(e["id"], e["ok"], e.get("error")) for e in map(json.loads, lines)], len(server.requests)

    out = tmp_path / "run"
    server.script = [Action(content=REFUSAL), Action(content=REFUSAL)]
    recaption(upstream, out, backend="openai", captioner=_cap(server), limit=2, write=True)
    assert written(out) == {"00000": None, "00001": BRIEF}, journal(out)  # failed: only its originals
    recaption(upstream, out, backend="openai", captioner=_cap(server), limit=3, write=True)
    assert written(out) == {"00000": None, "00001": BRIEF, "00002": BRIEF}, journal(out)  # appended
    recaption(upstream, out, backend="openai", captioner=_cap(server), limit=3, write=True, retry_failed=True)
    assert written(out) == {"00000": BRIEF, "00001": BRIEF, "00002": BRIEF}, journal(out)  # rebuilt
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset",
        "dataset_state.json",
        "journal.jsonl",
        "run.json",
        "summary.json",
    ]


def test_two_identical_runs_write_datasets_with_the_same_fingerprint(upstream, server, tmp_path):
    infos = []
    for run in ("first", "second"):
        recaption(upstream, tmp_path / run, backend="openai", captioner=_cap(server), write=True)
        infos.append(json.loads((tmp_path / run / "dataset" / "meta" / "info.json").read_text()))
        time.sleep(0.01)  # the captions' created_at differ between the runs
    stamps = [
        {c["created_at"] for r in _dataset_rows(tmp_path / run) for c in r["captions"] if c["created_at"]}
        for run in ("first", "second")
    ]
    assert stamps[0] and stamps[0].isdisjoint(stamps[1])  # provenance kept, and it differs
    assert infos[0]["fingerprint"] == infos[1]["fingerprint"]
    server.default = lambda body: Action(content=json.dumps({"detailed": DETAILED + " Then", "brief": BRIEF}))
    recaption(upstream, tmp_path / "other", backend="openai", captioner=_cap(server), write=True)
    other = json.loads((tmp_path / "other" / "dataset" / "meta" / "info.json").read_text())
    assert other["fingerprint"] != infos[0]["fingerprint"]  # content still counts


def _dataset_rows(run: Path) -> list[dict]:
    import polars as pl

    return pl.concat(pl.read_parquet(p) for p in (run / "dataset" / "metadata").glob("*.parquet")).to_dicts()


def _cli_run(upstream, server, out, *extra):
    from click.testing import CliRunner

    from medvideocap.cli import main

    args = ["recaption", str(upstream), "--out", str(out), "--backend", "openai", "--model", "served-vlm"]
    args += ["--endpoint", server.url, "--concurrency", "1", "--no-progress", *extra]
    return CliRunner().invoke(main, args)


def test_exit_status_is_1_when_every_clip_failed_and_the_journal_is_kept(upstream, server, tmp_path):
    server.default = lambda body: Action(content=REFUSAL)
    out = tmp_path / "run"
    result = _cli_run(upstream, server, out, "--limit", "3")
    assert result.exit_code == 1, result.output
    assert "no clip was captioned" in result.output and "Traceback" not in result.output
    assert len(_journal_ids(out)) == 3  # the failures are journaled, not lost
    again = _cli_run(upstream, server, out, "--limit", "3")  # a rerun of the failed job fails again
    assert again.exit_code == 1, again.output


def test_failed_clips_beyond_max_failures_set_the_exit_status(upstream, server, tmp_path):
    server.script = [Action(content=REFUSAL), Action(content=REFUSAL)]  # clip 00000 is refused twice
    out = tmp_path / "run"
    result = _cli_run(upstream, server, out, "--limit", "3")
    assert result.exit_code == 1 and "1 of 3 clips failed" in result.output, result.output
    assert json.loads(result.stdout.split("\nError")[0])["ok_total"] == 2  # the captioned are kept
    assert _cli_run(upstream, server, out, "--limit", "3", "--max-failures", "1").exit_code == 0
    nothing = _cli_run(upstream, server, tmp_path / "none", "--where", "duration > 100")
    assert nothing.exit_code == 1 and "no clip was selected" in nothing.output


def test_ray_address_from_the_cli_reaches_the_one_ray_bootstrap(upstream, server, tmp_path, ray_session_spy):
    """--ray-address is honoured (the recaption engine once ignored it and always read RAY_ADDRESS)."""
    from click.testing import CliRunner

    import medvideocap.caption.recaption as module
    from medvideocap.cli import main

    spy = ray_session_spy(module)
    args = ["recaption", str(upstream), "--out", str(tmp_path / "run"), "--backend", "openai"]
    args += ["--endpoint", server.url, "--model", "served-vlm", "--engine", "ray", "--limit", "1"]
    res = CliRunner().invoke(main, [*args, "--ray-address", "head:6379"])
    assert isinstance(res.exception, spy.error), res.output
    res = CliRunner().invoke(main, args)
    assert isinstance(res.exception, spy.error), res.output
    assert spy.asked == ["head:6379", None]  # None: medvideocap.dist falls back to RAY_ADDRESS, then local
    assert server.requests == []


# --- a disk that refuses a write (issue row 11): one line, exit 1, the journal whole, an exact resume


@pytest.mark.parametrize("size", [16 * 1024, 64 * 1024], ids=["full-while-journaling", "full-while-writing"])
def test_a_full_disk_is_one_line_and_the_rerun_with_space_finishes_the_same_dataset(
    upstream, server, tmp_path, size
):
    reference = tmp_path / "reference"
    assert _cli_run(upstream, server, reference, "--write").exit_code == 0
    disk = tmp_path / "disk"
    with tmpfs(disk, size):
        out = disk / "run"
        full = _cli_run(upstream, server, out, "--write")
        assert full.exit_code == 1, full.output
        line = full.output.strip().splitlines()[-1]
        assert line.startswith(f"Error: {out}/") and ": no space left on the device (" in line, line
        assert "Traceback" not in full.output and half_written(disk) == []
        journaled = len(_journal_ids(out)) if (out / JOURNAL_FILE).exists() else 0
        asked = len(server.requests)
        resize(disk, 16 * 1024 * 1024)
        again = _cli_run(upstream, server, out, "--write")
        assert again.exit_code == 0, again.output
        ids = _journal_ids(out)
        assert sorted(ids) == [f"{i:05d}" for i in range(6)] and len(ids) == len(set(ids))
        assert len(server.requests) - asked == 6 - journaled  # only what the journal lacked is asked
        info = json.loads((out / "dataset" / "meta" / "info.json").read_text())
    assert (
        info["fingerprint"]
        == json.loads((reference / "dataset" / "meta" / "info.json").read_text())["fingerprint"]
    )


def test_a_journal_line_the_disk_refuses_is_not_kept_and_its_clip_is_captioned_on_rerun(
    upstream, server, tmp_path, monkeypatch
):
    """Without root: the errno is injected where the journal line is made durable (on NFS and
    delayed-allocation file systems a full disk shows at fsync): the third line is cut back off."""
    import os

    out = tmp_path / "run"
    real_fsync = os.fsync
    synced: list[int] = []

    def full_on_the_third_line(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(JOURNAL_FILE):
            synced.append(fd)
            if len(synced) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", full_on_the_third_line)
        full = _cli_run(upstream, server, out)
    assert full.exit_code == 1, full.output
    said = full.output.strip().splitlines()[-1]
    assert said.startswith(f"Error: {out / JOURNAL_FILE}: no space left on the device ("), said
    assert len(_journal_ids(out)) == 2 and (out / JOURNAL_FILE).read_bytes().endswith(b"}\n")
    again = _cli_run(upstream, server, out)
    assert again.exit_code == 0, again.output
    ids = _journal_ids(out)
    assert sorted(ids) == [f"{i:05d}" for i in range(6)] and len(ids) == len(set(ids))
