"""Hostile inputs through the real CLI (``build``, ``validate``) and ``medvideocap.load``, each run in a
subprocess: every case ends in a named error or a handled result, never a Python traceback, with the
child's peak memory measured (``getrusage(RUSAGE_CHILDREN)`` in a wrapper process, so one run's peak is
not mixed with another's), and the good inputs next to the bad ones end up in the output.

The corpus is one raw/ folder (built once, ~1 min on two cores): odd codecs (MPEG-4 part 2 and VP9 in
mp4, HEVC), odd sizes (161x121, 1x1, 4000x16), a 4 GiB sparse file, an empty file, a truncated mp4,
random bytes and text named .mp4, names with quotes, newlines, shell syntax, a leading dash and bytes
that are not UTF-8, symlinks out of the folder (to a clip and to /etc/passwd), a dangling link, a FIFO,
and directories named like videos.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from videos import ffmpeg, make_video

from medvideocap.dataset.schema import ClipRecord

# The wrapper runs one command and reports its exit status and the peak RSS of its process tree.
_MEASURE = (
    "import json, resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[2:], capture_output=True, text=True, errors='replace')\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "json.dump({'rc': done.returncode, 'out': done.stdout, 'err': done.stderr, 'peak_kib': peak},"
    " open(sys.argv[1], 'w'))\n"
)
PEAK_LIMIT_MIB = (
    1500  # generous: a build of the corpus peaks near 400 MiB here; 1 GiB inputs must not be read
)
SIZE = dict(fps=8, size=(160, 120))


def run_measured(tmp: Path, *args: str, timeout: float = 240) -> dict:
    report = tmp / f"run-{len(list(tmp.glob('run-*.json')))}.json"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", _MEASURE, str(report), *args], timeout=timeout, check=False)
    result = json.loads(report.read_text())
    result["peak_mib"] = result["peak_kib"] / 1024
    result["wall_s"] = round(time.monotonic() - t0, 1)
    if os.environ.get("HOSTILE_TIMINGS"):
        print(f"{result['wall_s']:6.1f} s {result['peak_mib']:6.0f} MiB  {' '.join(args[1:4])[:100]}")
    return result


def cli(tmp: Path, *args: str) -> dict:
    return run_measured(tmp, sys.executable, "-m", "medvideocap", *args)


def assert_handled(result: dict, *, rc: int | None = None) -> None:
    """No traceback anywhere in the output, memory bounded, and (if given) the exit status."""
    text = result["out"] + result["err"]
    assert "Traceback (most recent call last)" not in text, text[-4000:]
    assert result["peak_mib"] < PEAK_LIMIT_MIB, f"peak {result['peak_mib']:.0f} MiB"
    if rc is not None:
        assert result["rc"] == rc, text[-4000:]


# input -> expected (stage, reason code); every other input is good and must be kept
BAD = {
    "empty.mp4": ("probe", "empty"),
    "huge_sparse.mp4": ("probe", "unreadable"),
    "truncated.mp4": ("probe", "unreadable"),
    "random_bytes.mp4": ("probe", "unreadable"),
    "text_named.mp4": ("probe", "unreadable"),
    "tiny_1x1.mp4": ("probe", "too_small"),
    "strip_4000x16.mp4": ("probe", "too_small"),
    "link_out.mp4": ("source", "symlink"),
    "link_passwd.mp4": ("source", "symlink"),
    "dangling.mp4": ("source", "symlink"),
    "fifo.mp4": ("source", "not_regular_file"),
}
GOOD_NAMES = [
    "good.mp4",
    "mpeg4_in.mp4",
    "vp9_in.mp4",
    "hevc.mp4",
    "odd_161x121.mp4",
    'it\'s "quoted".mp4',
    "new\nline.mp4",
    "$(touch PWNED); `touch PWNED2` & echo.mp4",
    "-i.mp4",
    "folder.mp4/inner.mp4",
]
ODD_SIZES = {"odd_161x121.mp4": (161, 121), "tiny_1x1.mp4": (1, 1), "strip_4000x16.mp4": (4000, 16)}
NOT_UTF8 = os.fsdecode(b"bad\xff\xfe.mp4")


def _encoders() -> str:
    return subprocess.run([ffmpeg(), "-hide_banner", "-encoders"], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    raw = root / "raw"
    good = make_video(raw / "good.mp4", seconds=2.5, **SIZE)
    encoders = _encoders()
    good_names = list(GOOD_NAMES)
    for name, codec in (("mpeg4_in.mp4", "mpeg4"), ("vp9_in.mp4", "libvpx-vp9"), ("hevc.mp4", "libx265")):
        if codec in encoders:
            make_video(raw / name, seconds=2.5, codec=codec, **SIZE)
        else:
            good_names.remove(name)
    for name, (w, h) in ODD_SIZES.items():  # yuv444p lets H.264 hold odd dimensions
        args = [ffmpeg(), "-y", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=8:duration=3"]
        args += [
            "-vf",
            f"scale={w}:{h},format=yuv444p",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            str(raw / name),
        ]
        subprocess.run(args, check=True, capture_output=True)
    data = good.read_bytes()
    for name in good_names:
        if not (raw / name).exists():
            (raw / name).parent.mkdir(parents=True, exist_ok=True)
            (raw / name).write_bytes(data)
    (raw / NOT_UTF8).write_bytes(data)
    (raw / "empty.mp4").write_bytes(b"")
    with open(raw / "huge_sparse.mp4", "wb") as fh:  # 4 GiB that take no disk: zeros, not a video
        fh.truncate(4 << 30)
    (raw / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (raw / "random_bytes.mp4").write_bytes(os.urandom(200_000))
    (raw / "text_named.mp4").write_text("this is a README, not a video\n" * 100)
    outside = make_video(root / "outside" / "elsewhere.mp4", seconds=3, **SIZE)
    (raw / "link_out.mp4").symlink_to(outside)
    (raw / "link_passwd.mp4").symlink_to("/etc/passwd")
    (raw / "dangling.mp4").symlink_to(root / "nowhere.mp4")
    os.mkfifo(raw / "fifo.mp4")
    (raw / "empty_dir.mp4").mkdir()
    out = root / "out"
    result = cli(root, "build", "--src", str(raw), "--out", str(out), "--recipe", "demo", "--workers", "2")
    return {"root": root, "raw": raw, "out": out, "build": result, "good": good_names + ["bad\\xff\\xfe.mp4"]}


def _records(out: Path) -> dict[str, ClipRecord]:
    """Kept clips by the input they came from."""
    records = {}
    for shard in sorted((out / "data").rglob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    data = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    record = ClipRecord.from_json_dict(data, where=member.name)
                    records[record.extra["input"]] = record
    return records


def test_build_of_the_corpus_keeps_every_good_input_and_names_every_bad_one(corpus: dict) -> None:
    result = corpus["build"]
    assert_handled(result, rc=0)
    records = _records(corpus["out"])
    for name in corpus["good"]:
        assert name in records, f"good input {name!r} lost; kept: {sorted(records)}"
    rejects = {r["input"]: r for r in pq.read_table(corpus["out"] / "meta" / "rejects.parquet").to_pylist()}
    for name, (stage, code) in BAD.items():
        assert name in rejects, f"{name} neither kept nor rejected: {sorted(rejects)}"
        assert rejects[name]["stage"] == stage and rejects[name]["reason"].startswith(f"{code}: "), rejects[
            name
        ]
    assert set(records) | set(rejects) == set(corpus["good"]) | set(BAD)  # nothing vanished silently
    assert not list(Path.cwd().glob("PWNED*")) and not list(corpus["raw"].glob("PWNED*"))  # no shell ran
    assert result["peak_mib"] < PEAK_LIMIT_MIB


def test_the_corpus_output_validates_and_loads_every_clip(corpus: dict, broken: dict) -> None:
    out = corpus["out"]
    checked = cli(corpus["root"], "validate", str(out), "--json")
    assert_handled(checked, rc=0)
    assert json.loads(checked["out"])["ok"] is True
    assert_handled(broken["load"], rc=0)
    verdict = broken["verdicts"][str(out)]
    assert "ids" in verdict, verdict
    assert sorted(verdict["ids"]) == sorted(r.id for r in _records(out).values())


# --------------------------------------------------------------------------------------------------
# broken datasets and paths that are not datasets: validate reports them, load refuses them, by name

BROKEN = [
    "truncated_shard",
    "garbage_metadata",
    "info_not_json",
    "missing_shard",
    "shard_is_a_directory",
    "path_missing",
    "path_is_a_file",
    "path_is_an_empty_dir",
    "path_is_a_fifo",
]
# One process loads every case (interpreter and torch start-up paid once): argv is PATH::SPLIT,SPLIT...;
# every item of every split is read (upright, resized frames), one JSON verdict line per path.
LOAD_SCRIPT = (
    "import json, sys, medvideocap\n"
    "from medvideocap.media.frames import FrameSpec\n"
    "spec = FrameSpec(num_frames=4, fps=4.0, height=32, width=32)\n"
    "for arg in sys.argv[1:]:\n"
    "    path, splits = arg.split('::')\n"
    "    try:\n"
    "        ids = []\n"
    "        for split in splits.split(','):\n"
    "            ds = medvideocap.load(path, split=split, frames=spec, on_error='raise')\n"
    "            for i in range(len(ds)):\n"
    "                item = ds[i]\n"
    "                if tuple(item['video'].shape) != (3, 4, 32, 32):\n"
    "                    raise RuntimeError(f'{path} item {i}: video shape {tuple(item[\"video\"].shape)}')\n"
    "                ids.append(item['record'].id)\n"
    "        verdict = {'ids': ids}\n"
    "    except Exception as exc:\n"
    "        verdict = {'error': type(exc).__name__, 'message': str(exc)}\n"
    "    print(json.dumps({'path': path, **verdict}), flush=True)\n"
)
PROGRAMMING_ERRORS = {"AttributeError", "TypeError", "KeyError", "IndexError", "NameError", "AssertionError"}


def _make_broken(corpus: dict, root: Path, how: str) -> Path:
    import shutil

    ds = root / how
    if how.startswith("path_"):
        if how == "path_is_a_file":
            ds.write_bytes(b"\x00" * 100)
        elif how == "path_is_an_empty_dir":
            ds.mkdir()
        elif how == "path_is_a_fifo":
            os.mkfifo(ds)
        return ds
    shutil.copytree(corpus["out"], ds, symlinks=True)
    shard = sorted((ds / "data").rglob("*.tar"))[0]
    if how == "truncated_shard":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    elif how == "garbage_metadata":
        for path in (ds / "metadata").glob("*.parquet"):
            path.write_bytes(b"PAR1 not really")
    elif how == "info_not_json":
        (ds / "meta" / "info.json").write_text("{ not json")
    elif how == "missing_shard":
        shard.unlink()
    elif how == "shard_is_a_directory":
        shard.unlink()
        shard.mkdir()
    return ds


@pytest.fixture(scope="module")
def broken(corpus: dict) -> dict:
    root = corpus["root"] / "broken"
    root.mkdir()
    paths = {how: _make_broken(corpus, root, how) for how in BROKEN}
    splits = ",".join(json.loads((corpus["out"] / "meta" / "info.json").read_text())["counts"])
    args = [f"{corpus['out']}::{splits}", *(f"{p}::train" for p in paths.values())]
    loaded = run_measured(root, sys.executable, "-c", LOAD_SCRIPT, *args)
    verdicts = {json.loads(line)["path"]: json.loads(line) for line in loaded["out"].splitlines() if line}
    return {"root": root, "paths": paths, "load": loaded, "verdicts": verdicts}


@pytest.mark.parametrize("how", BROKEN)
def test_a_broken_dataset_is_reported_by_validate_and_refused_by_load(broken: dict, how: str) -> None:
    path = broken["paths"][how]
    checked = cli(broken["root"], "validate", str(path))
    assert_handled(checked)
    assert checked["rc"] != 0, f"{how}: validate passed a broken dataset: {checked['out'][-2000:]}"
    assert how in checked["out"] + checked["err"], checked["out"][-2000:] + checked["err"][-2000:]

    assert_handled(broken["load"], rc=0)
    verdict = broken["verdicts"][str(path)]
    assert "error" in verdict, f"{how}: load read {verdict} from a broken dataset"
    assert verdict["error"] != "RuntimeError", verdict  # the script's own shape check
    assert verdict["error"] not in PROGRAMMING_ERRORS, verdict
    assert how in verdict["message"], verdict  # the message names the dataset (or its file)


def test_numbers_out_of_range_are_refused_naming_the_option_or_the_recipe_key(tmp_path: Path) -> None:
    """``--max-retries -1``, ``--timeout 0`` and a ``.nan`` threshold in a recipe were accepted."""
    from click.testing import CliRunner

    from medvideocap.cli import main

    src = tmp_path / "raw"
    src.mkdir()
    recaption = ["recaption", str(src), "--out", str(tmp_path / "run"), "--backend", "openai"]
    for option, value in [("--max-retries", "-1"), ("--timeout", "0"), ("--timeout", "nan")]:
        done = CliRunner().invoke(main, [*recaption, option, value])
        assert done.exit_code == 2 and f"Invalid value for '{option}'" in done.output, done.output
    recipe = tmp_path / "nan.yaml"
    recipe.write_text(
        "name: nan\nstages:\n  - stage: probe\n  - stage: split\n    detector: difference\n    threshold: .nan\n"
    )
    args = ["build", "--src", str(src), "--out", str(tmp_path / "out"), "--recipe", str(recipe)]
    done = CliRunner().invoke(main, args)
    said = done.output
    assert done.exit_code == 1 and said.startswith(f"Error: recipe {recipe}: stages.1.split.threshold: "), (
        said
    )
    assert "finite number" in said
