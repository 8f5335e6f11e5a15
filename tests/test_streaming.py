"""Streaming over tar shards: exactly-once coverage across workers and ranks, shuffling by seed and
epoch, mid-epoch resume (also through torchdata's StatefulDataLoader), and bad data that never ends
an epoch early."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from fixtures_loader import make_hub_native
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

import medvideocap
from medvideocap.loading.loader import SkippedSampleWarning, collate
from medvideocap.loading.streaming import StreamingClipDataset
from medvideocap.media.decode import DecodeError
from medvideocap.media.frames import FrameSpec

SPEC = FrameSpec(num_frames=5, fps=8, height=16, width=16, seed=1)


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 clips over 6+ shards (shard size ~2 clips)."""
    return make_hub_native(tmp_path_factory.mktemp("s") / "ds", 12, shard_bytes=25_000, seconds=(1.0, 2.0))


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hub_native(tmp_path_factory.mktemp("s1") / "ds", 7, shard_bytes=10**9, seconds=(1.0,))


def _stream(root: str | Path, **kwargs: object) -> StreamingClipDataset:
    options = {"streaming": True, "frames": SPEC, "output": "uint8", "shuffle_buffer": 4, **kwargs}
    ds = medvideocap.load(root, "train", **options)
    assert isinstance(ds, StreamingClipDataset)
    return ds


def _ids_through_workers(ds: StreamingClipDataset, workers: int) -> list[str]:
    loader = DataLoader(
        ds, batch_size=None, num_workers=workers, multiprocessing_context="fork" if workers else None
    )
    return [item["id"] for item in loader]


@pytest.mark.parametrize("fixture", ["many_shards", "one_shard"])
def test_two_ranks_by_two_workers_read_every_sample_exactly_once(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    root = request.getfixturevalue(fixture)
    expected = set(medvideocap.load(root, "train", frames=SPEC).ids)
    shards = len(list((root / "data" / "train").glob("*.tar")))
    assert (shards >= 4) == (fixture == "many_shards")
    for epoch in (0, 1):
        seen: list[str] = []
        for rank in range(2):
            ds = _stream(root, rank=rank, world_size=2, seed=7)
            ds.set_epoch(epoch)
            seen += _ids_through_workers(ds, workers=2)
        assert Counter(seen) == Counter(expected), f"epoch {epoch}"


def test_rank_and_world_size_come_from_the_environment(
    many_shards: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        ds = _stream(many_shards)
        assert (ds.rank, ds.world_size) == (rank, 3)
        seen += [item["id"] for item in ds]
    assert sorted(seen) == [f"c{i:03d}" for i in range(12)]


def test_order_is_shuffled_by_seed_and_epoch_and_reproducible(many_shards: Path) -> None:
    def order(seed: int, epoch: int) -> list[str]:
        ds = _stream(many_shards, seed=seed)
        ds.set_epoch(epoch)
        return [item["id"] for item in ds]

    base = order(0, 0)
    assert sorted(base) == [f"c{i:03d}" for i in range(12)]
    assert order(0, 0) == base
    assert order(0, 1) != base and order(1, 0) != base
    unshuffled = [item["id"] for item in _stream(many_shards, shuffle=False)]
    assert unshuffled == sorted(unshuffled)


def test_streaming_and_map_style_give_the_same_item_for_a_clip(many_shards: Path) -> None:
    mapped = medvideocap.load(many_shards, "train", frames=SPEC, output="uint8")
    by_id = {mapped[i]["id"]: mapped[i] for i in range(len(mapped))}
    for item in _stream(many_shards):
        assert torch.equal(item["video"], by_id[item["id"]]["video"])
        assert item["caption"] == by_id[item["id"]]["caption"]


def test_state_dict_resume_in_process_equals_an_uninterrupted_epoch(many_shards: Path) -> None:
    full = [(it["id"], it["video"]) for it in _stream(many_shards, seed=3)]
    first = _stream(many_shards, seed=3)
    it = iter(first)
    head = [next(it) for _ in range(5)]
    state = first.state_dict()
    assert state["emitted"] == 5
    resumed = _stream(many_shards, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # the usual loop calls this every epoch; it must keep the position
    tail = list(resumed)
    got = [(x["id"], x["video"]) for x in head + tail]
    assert [g[0] for g in got] == [f[0] for f in full]
    assert all(torch.equal(g[1], f[1]) for g, f in zip(got, full, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_resume_mid_epoch_equals_an_uninterrupted_epoch(
    many_shards: Path, workers: int
) -> None:
    def loader(ds: StreamingClipDataset) -> StatefulDataLoader:
        return StatefulDataLoader(
            ds,
            batch_size=2,
            num_workers=workers,
            collate_fn=collate,
            multiprocessing_context="fork" if workers else None,
        )

    full = [list(b["id"]) for b in loader(_stream(many_shards, seed=5))]
    assert sorted(i for b in full for i in b) == [f"c{i:03d}" for i in range(12)]
    first = loader(_stream(many_shards, seed=5))
    head = []
    for n, batch in enumerate(first):
        head.append(list(batch["id"]))
        if n == 2:
            state = first.state_dict()
            break
    second = loader(_stream(many_shards, seed=5))
    second.load_state_dict(state)
    tail = [list(b["id"]) for b in second]
    assert head + tail == full


def test_resume_with_another_worker_layout_is_refused(many_shards: Path) -> None:
    ds = _stream(many_shards, rank=0, world_size=2)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    other = _stream(many_shards, rank=1, world_size=2)
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="same world size and num_workers"):
        next(iter(other))


def test_corrupt_clips_in_a_shard_are_skipped_counted_and_the_epoch_goes_on(tmp_path: Path) -> None:
    root = make_hub_native(tmp_path / "ds", 6, corrupt=("garbage", "truncated"))
    ds = _stream(root, shuffle=False, on_error="skip")
    with pytest.warns(SkippedSampleWarning) as caught:
        ids = [item["id"] for item in ds]
    assert ids == [f"c{i:03d}" for i in range(6)]  # clips after the bad ones still come
    assert ds.stats.skipped == 2
    named = " ".join(str(w.message) for w in caught)
    assert "bad_garbage.mp4" in named and "bad_truncated.mp4" in named
    for raising in (_stream(root, shuffle=False), _stream(root, shuffle=False, on_error="raise")):
        with pytest.raises(DecodeError, match="bad_garbage"):  # strict by default
            list(raising)


def test_a_truncated_shard_loses_only_its_own_tail(tmp_path: Path) -> None:
    root = make_hub_native(tmp_path / "ds", 8, shard_bytes=25_000, seconds=(1.0,))
    shards = sorted((root / "data" / "train").glob("*.tar"))
    assert len(shards) >= 3
    victim = shards[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    ds = _stream(root, shuffle=False, on_error="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [item["id"] for item in ds]
    mapped = medvideocap.load(root, "train", frames=SPEC)
    in_victim = {
        mapped.ids[i]
        for i in range(len(mapped))
        if mapped.source.reader(i)[2][0] == f"data/train/{victim.name}"
    }
    assert set(ids) >= set(mapped.ids) - in_victim  # every other shard was read completely
    assert len(set(ids) & in_victim) < len(in_victim)
    assert any(f"shard {victim} is damaged" in str(w.message) for w in caught)
    assert [s for s, _ in ds.skipped_shards] == [str(victim)]


def _local_hub(root: Path, tmp: Path) -> DirFileSystem:
    """Stands in for ``huggingface_hub.HfFileSystem`` (no network in tests): a real fsspec filesystem
    serving ``root`` at ``datasets/org/med@main``, the paths HfFileSystem takes, so the off-machine
    code path (listing, version check, ``tar r|`` read front to back) is the one exercised."""
    (tmp / "datasets" / "org").mkdir(parents=True)
    (tmp / "datasets" / "org" / "med@main").symlink_to(root)
    return DirFileSystem(path=str(tmp), fs=LocalFileSystem())


def test_hub_repo_streams_through_hf_paths_with_full_coverage(
    many_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    hub = _local_hub(many_shards, tmp_path)
    monkeypatch.setattr(huggingface_hub, "HfFileSystem", lambda **options: hub)
    seen: list[str] = []
    for rank in range(2):
        ds = _stream("org/med", revision="main", rank=rank, world_size=2)
        assert all(s.startswith("hf://datasets/org/med@main/data/train/shard-") for s in ds.shards)
        seen += [item["id"] for item in ds]
    assert sorted(seen) == [f"c{i:03d}" for i in range(12)]
    local = {it["id"]: it["video"] for it in _stream(many_shards)}
    remote = {it["id"]: it["video"] for it in _stream("org/med", revision="main")}
    assert all(torch.equal(local[k], remote[k]) for k in local)
