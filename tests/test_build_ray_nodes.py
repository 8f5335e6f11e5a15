"""``build --engine ray`` on a cluster of two nodes that share no work folder.

A head and a worker are started with ``ray start`` (subprocesses, 127.0.0.1, free ports). The head
offers no CPU, so every build task runs on the worker; the worker runs in a mount namespace of its own
(``unshare -m``) where a private tmpfs covers the folder that holds the head's temp dir and the driver's
``--out`` and ``--work`` (the worker sees neither) and gives it its own temp folder. What the driver
could read of a worker's files, it cannot: if a clip travelled as a path instead of bytes the build
would fail, and if the worker wrote into the driver's work path it would write into its tmpfs, unseen.
The source folder stays visible to both (a read-only share of raw footage, or object storage).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fixtures_build import SCENES, SIZE, tree_bytes, without_seconds
from videos import make_video

from medvideocap.build import build
from medvideocap.build.workdir import journal_dir

RAY = Path(sys.executable).with_name("ray")
MARKER = "MEDVIDEOCAP_TEST_RAY_CLUSTER"
# In a private mount namespace: a tmpfs over $1 (hiding what the host has there), a temp folder in it,
# then `ray start` ("$2" and the rest) joins the cluster in the foreground. Names travel as arguments.
WORKER_SCRIPT = 'mount -t tmpfs tmpfs "$1" && mkdir "$1/tmp" && export TMPDIR="$1/tmp" && shift && exec "$@"'
# Run by the driver's Python: wait for both nodes, then ask a task on the worker whether it sees $1.
PROBE_SCRIPT = """
import os, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 90
while sum(n["Alive"] for n in ray.nodes()) < 2:
    assert time.monotonic() < deadline, "the worker node did not join"
    time.sleep(0.5)
seen = ray.get(ray.remote(num_cpus=1)(lambda p: os.path.exists(p)).remote(sys.argv[2]))
print(int(seen))
"""


@dataclass
class Cluster:
    address: str
    private: Path  # the driver's folder the worker cannot see
    env: dict[str, str]  # what a driver of this cluster runs with


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mount_namespaces_refused(scratch: Path) -> str | None:
    """Why this machine cannot give a process a private tmpfs (None when it can)."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    scratch.mkdir()
    probe = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount -t tmpfs tmpfs "$1"',
            "sh",
            str(scratch),
        ],
        capture_output=True,
        text=True,
    )
    return None if probe.returncode == 0 else f"unshare -m / mount tmpfs refused: {probe.stderr.strip()}"


def _env(marker: str) -> dict[str, str]:
    """The environment of every process of this cluster: ``MARKER`` names them for :func:`_stop` (Ray
    workers start sessions of their own, so no process group holds them all); token authentication
    off, as on a private test network."""
    return {**os.environ, MARKER: marker, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _start(args: list[str], log: Path, marker: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=_env(marker)
        )


def _marked(marker: str) -> list[int]:
    """The processes whose environment holds ``MARKER=marker``: this cluster's, no other Ray's."""
    wanted = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return found


def _stop(procs: list[subprocess.Popen[bytes]], marker: str) -> None:
    """Kill every process of the cluster (``ray start --block`` takes half a minute to stop politely,
    and ``ray stop`` would stop every Ray on the machine)."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    deadline = time.monotonic() + 30
    while (left := _marked(marker)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    assert not _marked(marker), "processes of the test cluster outlived it"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp_path = tmp_path_factory.mktemp("cluster")
    pytest.importorskip("ray")
    if not RAY.exists():
        pytest.skip(f"no `ray` command next to {sys.executable}: cannot start Ray nodes")
    refused = _mount_namespaces_refused(tmp_path / "probe")
    if refused:
        pytest.skip(f"{refused}; the object-store and portable-outcome tests cover the engine instead")
    base = Path(tempfile.mkdtemp(prefix="mvc-rn-"))  # short: Ray's socket paths must fit in 107 bytes
    private = base / "driver"
    private.mkdir()
    port = _free_port()
    marker = base.name
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = _start(
        [
            str(RAY),
            "start",
            "--head",
            f"--port={port}",
            f"--ray-client-server-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            "--num-cpus=0",
            "--num-gpus=0",
            f"--temp-dir={base / 'head'}",
            "--include-dashboard=false",
            *common,
        ],
        tmp_path / "head.log",
        marker,
    )
    worker = _start(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            WORKER_SCRIPT,
            "sh",
            str(base),
            str(RAY),
            "start",
            f"--address=127.0.0.1:{port}",
            f"--dashboard-agent-listen-port={_free_port()}",
            "--num-cpus=2",
            "--num-gpus=0",
            f"--temp-dir={base / 'worker'}",
            *common,
        ],
        tmp_path / "worker.log",
        marker,
    )
    try:
        (private / "marker").write_text("only the driver's machine has this")
        try:
            seen = subprocess.run(
                [sys.executable, "-c", PROBE_SCRIPT, f"127.0.0.1:{port}", str(private / "marker")],
                capture_output=True,
                text=True,
                timeout=150,
                env=_env(marker),
            )
        except subprocess.TimeoutExpired:
            seen = None
        if seen is None or seen.returncode != 0:
            logs = "\n".join(f"{p.name}: {p.read_text()[-2000:]}" for p in sorted(tmp_path.glob("*.log")))
            pytest.skip(
                f"`ray start` could not bring up two nodes here: {seen and seen.stderr[-2000:]}\n{logs}"
            )
        assert seen.stdout.strip().splitlines()[-1] == "0", "the worker node sees the driver's folder"
        yield Cluster(address=f"127.0.0.1:{port}", private=private, env=_env(marker))
    finally:
        _stop([worker, head], marker)
        shutil.rmtree(base, ignore_errors=True)


def _journal(work: Path) -> dict[str, dict]:
    """The journal files of ``work``, its path written ``WORK``, without their stage timings (they
    differ between two runs)."""
    found = {}
    for path in sorted(journal_dir(work).glob("*.json")):
        entry = json.loads(path.read_text(encoding="utf-8").replace(str(work), "WORK"))
        found[path.name] = {**entry, "outcomes": [{**o, "timings": None} for o in entry["outcomes"]]}
    return found


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("inputs") / "raw"
    make_video(raw / "good.mp4", seconds=3, **SIZE)
    make_video(raw / "scenes.mkv", seconds=7.5, source=SCENES, **SIZE)  # cut into three clips
    (raw / "corrupt.mp4").write_bytes((raw / "good.mp4").read_bytes()[:2000])  # its reason names a file
    return raw


@pytest.fixture(scope="module")
def local(raw: Path) -> Path:
    """The local engine's build (its work dir beside it, cut clips kept)."""
    out = raw.parent / "local"
    assert build(raw, out, recipe="demo", workers=1, keep_work=True).kept == 4
    return out


def _build_on(cluster: Cluster, *args: str) -> None:
    cmd = [sys.executable, "-m", "medvideocap", "build", "--recipe", "demo", "--engine", "ray"]
    cmd += ["--ray-address", cluster.address, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=cluster.env)
    assert done.returncode == 0, done.stderr[-4000:]


def test_a_ray_worker_without_the_drivers_disk_builds_the_local_engines_bytes(
    cluster: Cluster, raw: Path, local: Path
) -> None:
    out, work = cluster.private / "out", cluster.private / "work"
    _build_on(cluster, "--src", str(raw), "--out", str(out), "--work", str(work), "--keep-work")

    assert tree_bytes(out) == tree_bytes(local)
    journal = _journal(work)
    assert journal == _journal(local.with_name("local.build"))  # either engine's journal resumes the other's
    assert sum(o["clip"] is not None for e in journal.values() for o in e["outcomes"]) >= 4


def test_a_ray_worker_fetches_object_store_inputs_itself_and_the_output_is_published(
    cluster: Cluster, raw: Path, local: Path, s3: Any
) -> None:
    """``--src`` and ``--out`` in object storage: the worker node fetches each input from the store (the
    source folder the test uploaded from plays no part), the driver publishes the dataset."""
    src = s3.upload(raw, "raw")
    bucket = src.removeprefix("s3://").split("/")[0]
    out = f"s3://{bucket}/ds"
    _build_on(
        cluster, "--src", src, "--out", out, "--work", str(cluster.private / "s3work"), *s3.cli_options()
    )

    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3.storage_options)
    published = {key.removeprefix(f"{bucket}/ds/"): fs.cat_file(key) for key in fs.find(f"{bucket}/ds")}
    assert without_seconds(published) == tree_bytes(local)
