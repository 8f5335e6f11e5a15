from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from videos import make_video  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-second 64x48 8-fps H.264 clip, made once per session."""
    return make_video(tmp_path_factory.mktemp("clips") / "tiny.mp4")


class RayAsked(Exception):
    """Raised by the ``ray_session_spy`` stand-in where the real bootstrap would start or join Ray."""


@dataclass
class RaySpy:
    asked: list[str | None]  # the address of every ray_session() call, in order
    error: type[Exception] = RayAsked


@pytest.fixture
def ray_session_spy(monkeypatch: pytest.MonkeyPatch) -> Callable[[ModuleType], RaySpy]:
    """Replace ``module.ray_session`` (medvideocap.dist's one Ray bootstrap) by a spy that records the
    address it was asked for and raises ``RaySpy.error``: no cluster starts, the address is what counts."""

    def patch(module: ModuleType) -> RaySpy:
        spy = RaySpy(asked=[])

        @contextmanager
        def ray_session(address: str | None = None, **_: Any) -> Iterator[Any]:
            spy.asked.append(address)
            raise spy.error
            yield

        monkeypatch.setattr(module, "ray_session", ray_session)
        return spy

    return patch


@pytest.fixture(scope="session")
def s3() -> Iterator[Any]:
    """A real S3 API (moto's server) on a free localhost port for the session, stopped at its end; see
    ``fixtures_s3.S3StandIn`` (upload a folder, read the request log)."""
    from fixtures_s3 import S3StandIn

    server = S3StandIn().start()
    yield server
    server.stop()
