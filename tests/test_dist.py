"""medvideocap.dist: the rank of this process and the one Ray bootstrap every engine uses."""

from __future__ import annotations

import builtins
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from medvideocap import dist


def test_rank_and_world_come_from_torchrun_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert dist.env_rank_world(None, None) == (2, 4)
    assert dist.env_rank_world(0, 1) == (0, 1)
    with pytest.raises(ValueError, match="rank 4 / world size 4 are inconsistent"):
        dist.env_rank_world(4, None)


def test_the_address_argument_wins_over_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert dist.ray_address("ray://head:10001") == "ray://head:10001"
    assert dist.ray_address(None) == "10.0.0.1:6379"
    assert dist.ray_address("  ") == "10.0.0.1:6379"  # a blank option is no address


def test_no_address_anywhere_means_a_local_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert dist.ray_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert dist.ray_address(None) is None


class _FakeRay:
    """Records what ray_session asks of Ray, so the bootstrap is tested without starting a cluster."""

    def __init__(self, initialized: bool = False) -> None:
        self.initialized = initialized
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.data = SimpleNamespace()

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs: Any) -> None:
        self.calls.append(("init", kwargs))
        self.initialized = True

    def shutdown(self) -> None:
        self.calls.append(("shutdown", {}))
        self.initialized = False


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> _FakeRay:
    fake = _FakeRay()
    monkeypatch.setattr(dist, "import_ray", lambda what="--engine ray": fake)
    return fake


def test_ray_session_joins_the_given_address_and_shuts_down_what_it_started(
    fake_ray: _FakeRay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "from-env:6379")
    with dist.ray_session("head:6379") as ray:
        assert ray is fake_ray and fake_ray.initialized
    assert fake_ray.calls == [
        ("init", {"address": "head:6379", "include_dashboard": False, "log_to_driver": False}),
        ("shutdown", {}),
    ]


def test_ray_session_without_an_argument_joins_ray_address(
    fake_ray: _FakeRay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "from-env:6379")
    with pytest.raises(KeyError), dist.ray_session():  # the job fails: Ray is still shut down
        raise KeyError("boom")
    assert fake_ray.calls[0][1]["address"] == "from-env:6379"
    assert fake_ray.calls[-1] == ("shutdown", {}) and not fake_ray.initialized


def test_ray_session_leaves_a_ray_the_caller_started_alone(fake_ray: _FakeRay) -> None:
    fake_ray.initialized = True
    with dist.ray_session("ignored:1") as ray:
        assert ray is fake_ray
    assert fake_ray.calls == [] and fake_ray.initialized


def test_a_missing_ray_is_one_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    expected = r"--engine ray needs Ray Data: pip install 'medvideocap\[ray\]'"
    with pytest.raises(RuntimeError, match=expected), dist.ray_session():
        pass


def test_every_ray_engine_starts_ray_through_ray_session() -> None:
    """The three engines that once each called ray.init (one ignoring --ray-address) now share one."""
    import inspect

    from medvideocap.build import engine
    from medvideocap.caption import recaption
    from medvideocap.latents import encode

    for module in (engine, recaption, encode):
        source = inspect.getsource(module)
        assert "ray_session(" in source and "ray.init(" not in source, module.__name__


def test_every_ray_cli_has_a_ray_address_option() -> None:
    import click

    from medvideocap.cli.build import command as build
    from medvideocap.cli.encode_latents import command as encode
    from medvideocap.cli.recaption import command as recaption

    for command in (build, encode, recaption):
        names = {o for p in command.params if isinstance(p, click.Option) for o in p.opts}
        assert "--ray-address" in names, command.name
