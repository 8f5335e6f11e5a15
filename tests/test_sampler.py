"""medvideocap.loading.sampler: equal-shape batches, the same number of steps on every rank, exact resume;
and the one streaming bucketer, ``bucket_by_shape``, for pixel and latent streams.

Shapes stand in for clips here (the sampler only ever sees shapes); tests/test_load.py runs the same
sampler over a real decoded dataset through a DataLoader."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures_latents import write_random_cache

from medvideocap.loading.sampler import BucketBatchSampler, bucket_batches, bucket_by_shape

SMALL, WIDE, TALL = (9, 32, 48), (9, 32, 64), (9, 48, 32)
SHAPES = [SMALL] * 7 + [WIDE] * 5 + [TALL] * 2  # 14 items in three buckets of uneven size


def _epoch(sampler: BucketBatchSampler) -> list[list[int]]:
    return list(sampler)


def test_every_batch_holds_one_shape_and_every_item_comes_once() -> None:
    sampler = BucketBatchSampler(SHAPES, 3, seed=1)
    batches = _epoch(sampler)
    assert all(len({SHAPES[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(SHAPES)))
    assert len(batches) == len(sampler) == 3 + 2 + 1  # ceil(7/3) + ceil(5/3) + ceil(2/3)


def test_drop_last_drops_only_the_partial_batches() -> None:
    batches = _epoch(BucketBatchSampler(SHAPES, 3, drop_last=True))
    assert all(len(b) == 3 for b in batches) and len(batches) == 2 + 1
    assert Counter(SHAPES[b[0]] for b in batches) == {SMALL: 2, WIDE: 1}


def test_without_shuffle_batches_follow_bucket_and_index_order() -> None:
    batches = _epoch(BucketBatchSampler(SHAPES, 4, shuffle=False))
    assert batches == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10], [11], [12, 13]]  # buckets sorted by shape


def test_order_depends_only_on_seed_and_epoch() -> None:
    first, again = BucketBatchSampler(SHAPES, 2, seed=7), BucketBatchSampler(SHAPES, 2, seed=7)
    epoch0, epoch1 = _epoch(first), _epoch(first)  # a full pass moves to the next epoch by itself
    assert epoch0 == _epoch(again) and epoch0 != epoch1
    again.set_epoch(1)
    assert _epoch(again) == epoch1
    assert _epoch(BucketBatchSampler(SHAPES, 2, seed=8)) != epoch0


@pytest.mark.parametrize(
    ("world", "drop_last", "steps"),
    [
        (4, False, 2),  # 6 batches padded to 8 by wrapping around
        (4, True, 0),  # 3 full batches cannot be shared by 4 ranks: all trimmed
        (2, True, 1),  # 3 full batches trimmed to 2
    ],
)
def test_every_rank_runs_the_same_number_of_steps(world: int, drop_last: bool, steps: int) -> None:
    per_rank = [
        _epoch(BucketBatchSampler(SHAPES, 3, seed=3, rank=r, world_size=world, drop_last=drop_last))
        for r in range(world)
    ]
    assert [len(b) for b in per_rank] == [steps] * world
    batches = [tuple(b) for rank in per_rank for b in rank]
    if drop_last:
        assert len(set(batches)) == len(batches)  # trimming never hands one batch to two ranks
    else:
        assert {i for b in batches for i in b} == set(range(len(SHAPES)))  # padding never loses one


def test_ranks_from_the_environment_and_inconsistent_ones_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    sampler = BucketBatchSampler(SHAPES, 3, seed=0)
    assert (sampler.rank, sampler.world_size) == (1, 2)
    assert _epoch(sampler) == _epoch(BucketBatchSampler(SHAPES, 3, seed=0, rank=1, world_size=2))
    with pytest.raises(ValueError, match="rank 2 / world size 2"):
        BucketBatchSampler(SHAPES, 3, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BucketBatchSampler(SHAPES, 0)


def test_state_dict_resumes_after_the_batches_already_consumed() -> None:
    reference = BucketBatchSampler(SHAPES, 2, seed=5)
    reference.set_epoch(2)
    whole = _epoch(reference)
    interrupted = BucketBatchSampler(SHAPES, 2, seed=5)
    interrupted.set_epoch(2)
    it = iter(interrupted)
    done = [next(it) for _ in range(3)]
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "consumed": 3, "seed": 5}
    resumed = BucketBatchSampler(SHAPES, 2, seed=5)
    resumed.load_state_dict(state)
    assert done + _epoch(resumed) == whole
    assert resumed.state_dict() == {"epoch": 3, "consumed": 0, "seed": 5}
    with pytest.raises(ValueError, match="saved with seed 5, this sampler has 6"):
        BucketBatchSampler(SHAPES, 2, seed=6).load_state_dict(state)


def _item(i: int, shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "video": torch.full((3, *shape), float(i)),
        "timestamps": torch.zeros(shape[0]),
        "record": None,
        "caption": f"clip {i}",
        "id": f"c{i}",
    }


def test_bucket_batches_groups_a_stream_by_shape_and_skips_dropped_items() -> None:
    stream = [_item(0, SMALL), None, _item(1, WIDE), _item(2, SMALL), _item(3, WIDE), _item(4, SMALL)]
    batches = list(bucket_batches(stream, 2))
    assert [b["id"] for b in batches] == [["c0", "c2"], ["c1", "c3"], ["c4"]]  # leftovers come last
    assert batches[0]["video"].shape == (2, 3, *SMALL) and batches[1]["video"].shape == (2, 3, *WIDE)
    assert torch.equal(batches[0]["video"][1], torch.full((3, *SMALL), 2.0))
    assert [b["id"] for b in bucket_batches(stream, 2, drop_last=True)] == [["c0", "c2"], ["c1", "c3"]]


def test_bucket_by_shape_groups_mixed_shapes_and_yields_full_buckets_at_once() -> None:
    stream = ["a1", "b1", "a2", "c1", "b2", "a3", "a4", "c2"]
    batches = list(bucket_by_shape(stream, 2, shape=lambda s: s[0]))
    # a full bucket comes out when its last item arrives; every item comes exactly once
    assert batches == [["a1", "a2"], ["b1", "b2"], ["a3", "a4"], ["c1", "c2"]]
    assert list(bucket_by_shape(stream, 3, shape=lambda s: s[0])) == [
        ["a1", "a2", "a3"],
        ["b1", "b2"],  # leftovers last ...
        ["c1", "c2"],
        ["a4"],  # ... in the order of their first item: a's bucket restarted after c1 and b1
    ]


def test_bucket_by_shape_drop_last_drops_only_partial_buckets() -> None:
    stream = [(i, SHAPES[i]) for i in range(len(SHAPES))]
    batches = list(bucket_by_shape(stream, 3, shape=lambda x: x[1], drop_last=True))
    assert [len(b) for b in batches] == [3, 3, 3]  # SMALL 7 -> 2 full, WIDE 5 -> 1, TALL 2 -> 0
    assert Counter(b[0][1] for b in batches) == {SMALL: 2, WIDE: 1}
    with pytest.raises(ValueError, match="batch_size"):
        list(bucket_by_shape(stream, 0, shape=lambda x: x[1]))


@pytest.mark.parametrize("batch_size", [2, 3])
def test_bucket_by_shape_resumes_by_feeding_the_items_not_yet_yielded(batch_size: int) -> None:
    # the property StreamingLatentDataset's state relies on, at every break point
    stream = list(range(len(SHAPES)))
    shuffled = [stream[(5 * k) % len(stream)] for k in range(len(stream))]  # a permutation

    def batches(items: list[int]) -> list[list[int]]:
        return list(bucket_by_shape(items, batch_size, shape=lambda i: SHAPES[i]))

    full = batches(shuffled)
    assert sorted(i for b in full for i in b) == stream
    for cut in range(len(full) + 1):
        done = {i for b in full[:cut] for i in b}
        assert full[:cut] + batches([i for i in shuffled if i not in done]) == full


@pytest.mark.parametrize("drop_last", [False, True])
def test_streaming_latents_resume_to_the_same_batches_at_every_break(tmp_path: Path, drop_last: bool) -> None:
    from medvideocap.latents import load_latents

    shapes = [(2, 2, 4, 4), (2, 3, 4, 4), (2, 2, 4, 6)]
    write_random_cache(tmp_path, [shapes[(i * i) % 3] for i in range(13)], rows_per_shard=4)

    def dataset() -> Any:
        return load_latents(
            tmp_path,
            posterior="mode",
            streaming=True,
            shuffle=True,
            seed=4,
            batch_size=3,
            drop_last=drop_last,
        )

    full = [b["id"] for b in dataset()]
    assert (
        all(len(b) == 3 for b in full)
        if drop_last
        else sorted(sum(full, [])) == [f"r{i:03d}" for i in range(13)]
    )
    assert any(len(b) < 3 for b in full) != drop_last
    for cut in range(len(full)):
        ds = dataset()
        it = iter(ds)
        head = [next(it)["id"] for _ in range(cut)]
        resumed = dataset()
        resumed.load_state_dict(json.loads(json.dumps(ds.state_dict())))
        assert head + [b["id"] for b in resumed] == full, f"break after {cut} batches"
