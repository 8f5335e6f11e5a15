"""Bytes an upstream release read where it lies costs each verb, against the bytes of its archives.

Workload: ``tests/fixtures_upstream.make_large_release`` (six ``videos_*.zip``, one over 200 MB, 24 real
tiny clips, the JSON beside them), served by ``tests/fixtures_http.HttpStandIn`` (a web server on
127.0.0.1 that answers ranged requests and counts the body bytes it sends). For each verb the server's
count is printed beside the archives' total (what the old path, a snapshot of every zip, downloads
before reading anything) as a ratio, with the reader's own count (``REMOTE_READS``) and requests.

    .venv/bin/python benchmarks/upstream_remote.py          # ~1 min on 2 cores
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures_http import HttpStandIn  # noqa: E402
from fixtures_upstream import make_large_release  # noqa: E402

from medvideocap.dataset.upstream import REMOTE_READS  # noqa: E402


def main() -> None:
    import medvideocap
    from medvideocap.dataset.convert import convert
    from medvideocap.dataset.upstream import UpstreamRelease
    from medvideocap.dataset.validate import validate
    from medvideocap.media.frames import FrameSpec

    with tempfile.TemporaryDirectory(prefix="upstream-remote-") as tmp:
        top = Path(tmp)
        release = make_large_release(top / "release")
        archives = sum(p.stat().st_size for p in release.glob("videos_*.zip"))
        server = HttpStandIn(top).start()
        url = server.url("release")
        frames = FrameSpec(num_frames=5, fps=None, height=16, width=16, position="start")
        verbs: list[tuple[str, Callable[[], Any]]] = [
            (
                "list + join (UpstreamRelease.open(url).clips())",
                lambda: list(UpstreamRelease.open(url).clips()),
            ),
            ("load(url, split=None)[0]", lambda: medvideocap.load(url, split=None, frames=frames)[0]),
            ("validate(url, sample=3)", lambda: validate(url, sample=3)),
            ("convert(url, limit=5)", lambda: convert(url, top / "limit5", limit=5, progress=False)),
            ("convert(url) (all 24 clips)", lambda: convert(url, top / "full", progress=False)),
        ]
        print(f"archives: {archives:,} bytes in 6 zips (a snapshot download reads all of them: ratio 1.0)")
        print(f"{'verb':52} {'server sent':>14} {'ratio':>9} {'reader count':>14} {'requests':>9}")
        try:
            for name, run in verbs:
                server.reset()
                mark = REMOTE_READS.mark()
                run()
                read = REMOTE_READS.since(mark)
                sent = server.sent()
                print(f"{name:52} {sent:>14,} {sent / archives:>9.5f} {read.bytes:>14,} {read.requests:>9}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
