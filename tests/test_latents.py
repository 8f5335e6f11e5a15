"""The latent cache format and its readers (``medvideocap/latents/``: format, reader, datasets), fed by
the tiny Wan VAE + UMT5 encoding plain pixel tensors (the end-to-end path from mp4s is in test_encode_latents.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fixtures_latents import make_tiny_model_dir, tiny_config, write_random_cache

from medvideocap.errors import DataError
from medvideocap.latents import (
    BucketBatchSampler,
    FingerprintMismatchError,
    LatentCache,
    LatentCacheError,
    LatentRowError,
    collate_latents,
    load_latents,
    sample_moments,
)
from medvideocap.latents.encode import BatchEncoder, encode_items

FASTVIDEO_T2V_COLUMNS = [
    "id",
    "vae_latent_bytes",
    "vae_latent_shape",
    "vae_latent_dtype",
    "text_embedding_bytes",
    "text_embedding_shape",
    "text_embedding_dtype",
    "file_name",
    "caption",
    "media_type",
    "width",
    "height",
    "num_frames",
    "duration_sec",
    "fps",
]


def _items(n: int, shapes: list[tuple[int, int, int]] | None = None, seed: int = 0) -> list[dict]:
    """Pixel items as medvideocap.load yields them: (C, T, H, W) in [-1, 1], caption, id, timestamps."""
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or [(9, 32, 48)]
    items = []
    for i in range(n):
        t, h, w = shapes[i % len(shapes)]
        items.append(
            {
                "id": f"c{i:03d}",
                "video": torch.rand(3, t, h, w, generator=g) * 2 - 1,
                "caption": "an endoscopic view of the stomach" + " with bleeding" * (i % 3),
                "timestamps": torch.arange(t, dtype=torch.float32) / 8,
            }
        )
    return items


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> BatchEncoder:
    # batch_size 1: the test recomputes clip by clip, and CPU convs are not batch-invariant bit for bit
    return BatchEncoder(tiny_config(tiny_model_dir, batch_size=1))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory, encoder: BatchEncoder) -> Path:
    out = tmp_path_factory.mktemp("cache")
    encode_items(_items(7), out, "train", encoder)
    return out


@pytest.fixture(scope="module")
def bucket_cache(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("buckets")
    enc = BatchEncoder(tiny_config(tiny_model_dir, batch_size=2, rows_per_shard=3))
    encode_items(_items(10, shapes=[(9, 32, 48), (5, 48, 32)]), out, "train", enc)
    return out


def test_latents_and_embeddings_round_trip_bit_exactly(cache_dir: Path, encoder: BatchEncoder) -> None:
    items = {it["id"]: it for it in _items(7)}
    ds = load_latents(cache_dir, normalize=False, posterior="mode")
    assert len(ds) == 7
    cache = ds.cache
    for i in range(len(ds)):
        item = ds[i]
        src = items[item["id"]]
        mean, logvar = encoder.encode_videos(src["video"][None])
        (text,) = encoder.encode_texts([src["caption"]])
        assert item["latents"].dtype == torch.float32
        assert item["latents"].shape == mean[0].shape
        assert torch.equal(item["latents"], mean[0])
        raw = cache.raw(i)
        assert raw["logvar"].dtype == np.float32
        assert torch.equal(torch.from_numpy(raw["logvar"].copy()), logvar[0].clamp(-30, 20))
        assert torch.equal(item["prompt_embeds"], text)
        assert item["prompt_len"] == text.shape[0] < 64  # unpadded: token count, not max_length
        assert item["caption"] == src["caption"]


def test_a_fastvideo_style_reader_reads_our_rows(cache_dir: Path) -> None:
    ours = load_latents(cache_dir, normalize=False, posterior="mode")
    by_id = {ours[i]["id"]: ours[i] for i in range(len(ours))}
    files = sorted((cache_dir / "train").glob("rank-*-shard-*.parquet"))
    seen = 0
    for path in files:
        table = pq.read_table(path)
        assert set(FASTVIDEO_T2V_COLUMNS) <= set(table.column_names)
        for row in table.to_pylist():
            latent = np.frombuffer(row["vae_latent_bytes"], dtype=row["vae_latent_dtype"]).reshape(
                row["vae_latent_shape"]
            )
            text = np.frombuffer(row["text_embedding_bytes"], dtype=row["text_embedding_dtype"]).reshape(
                row["text_embedding_shape"]
            )
            mask = np.frombuffer(row["text_attention_mask_bytes"], dtype=row["text_attention_mask_dtype"])
            assert np.array_equal(latent, by_id[row["id"]]["latents"].numpy())
            assert np.array_equal(text, by_id[row["id"]]["prompt_embeds"].numpy())
            assert mask.all() and mask.shape[0] == row["text_len"]
            assert row["media_type"] == "video" and row["num_frames"] == 9
            assert (row["height"], row["width"]) == (32, 48)
            assert row["fps"] == pytest.approx(8.0)
            assert row["latent_kind"] == "moments"
            seen += 1
    assert seen == 7


def test_normalize_applies_the_manifest_mean_and_std(cache_dir: Path) -> None:
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    raw = load_latents(cache_dir, normalize=False, posterior="mode")[0]["latents"]
    norm = load_latents(cache_dir, normalize=True, posterior="mode")[0]["latents"]
    mean = torch.tensor(manifest["latents_mean"]).view(-1, 1, 1, 1)
    std = torch.tensor(manifest["latents_std"]).view(-1, 1, 1, 1)
    assert len(manifest["latents_mean"]) == raw.shape[0]
    assert torch.allclose(norm, (raw - mean) / std, atol=0, rtol=1e-6)
    assert not torch.allclose(norm, raw)
    assert manifest["normalization"].startswith("none")


def test_moments_are_sampled_deterministically_per_id_seed_and_epoch(cache_dir: Path) -> None:
    a = load_latents(cache_dir, normalize=False, sample_seed=3)
    b = load_latents(cache_dir, normalize=False, sample_seed=3)
    c = load_latents(cache_dir, normalize=False, sample_seed=4)
    mode = load_latents(cache_dir, normalize=False, posterior="mode")
    assert torch.equal(a[2]["latents"], b[2]["latents"])
    assert not torch.equal(a[2]["latents"], c[2]["latents"])
    assert not torch.equal(a[2]["latents"], mode[2]["latents"])
    first = a[2]["latents"].clone()
    a.set_epoch(1)
    assert not torch.equal(a[2]["latents"], first)
    # the draw is a posterior sample: standardised residuals look like N(0, 1)
    residuals = []
    for i in range(len(a)):
        std = torch.exp(0.5 * torch.from_numpy(a.cache.raw(i)["logvar"].copy()))
        residuals.append(((a[i]["latents"] - mode[i]["latents"]) / std).flatten())
    z = torch.cat(residuals)
    assert z.numel() > 500
    assert abs(z.mean().item()) < 0.15 and 0.85 < z.std().item() < 1.15


def test_store_sample_keeps_one_fixed_draw(tmp_path: Path, tiny_model_dir: Path, cache_dir: Path) -> None:
    enc = BatchEncoder(tiny_config(tiny_model_dir, store="sample"))
    encode_items(_items(7), tmp_path, "train", enc)
    ds = load_latents(tmp_path, normalize=False)
    assert json.loads((tmp_path / "manifest.json").read_text())["store"] == "sample"
    row = pq.read_table(sorted((tmp_path / "train").glob("*.parquet"))[0]).to_pylist()[0]
    assert row["latent_kind"] == "sample" and row["vae_logvar_bytes"] is None
    moments = load_latents(cache_dir, normalize=False, posterior="mode")
    by_id = {moments[i]["id"]: i for i in range(len(moments))}
    residuals = []
    for i in range(len(ds)):
        item = ds[i]
        assert torch.equal(item["latents"], ds[i]["latents"])  # nothing re-sampled at load time
        j = by_id[item["id"]]
        mean = moments[j]["latents"]
        std = torch.exp(0.5 * torch.from_numpy(moments.cache.raw(j)["logvar"].copy()))
        assert not torch.equal(item["latents"], mean)
        residuals.append(((item["latents"] - mean) / std).flatten())
    z = torch.cat(residuals)
    assert abs(z.mean().item()) < 0.15 and 0.85 < z.std().item() < 1.15
    assert ds.fingerprint != moments.fingerprint
    # nothing to draw later either: "moments" gives the stored sample, and sample_moments leaves it be
    stored = load_latents(tmp_path, normalize=False, posterior="moments")[0]
    assert "latents_logvar" not in stored and torch.equal(stored["latents"], ds[0]["latents"])
    assert sample_moments(stored) is stored


def test_fingerprint_mismatch_is_a_clear_error(cache_dir: Path) -> None:
    fp = json.loads((cache_dir / "manifest.json").read_text())["fingerprint"]
    assert load_latents(cache_dir, expect_fingerprint=fp).fingerprint == fp
    with pytest.raises(FingerprintMismatchError) as err:
        load_latents(cache_dir, expect_fingerprint="0" * 64)
    assert fp in str(err.value) and "0" * 64 in str(err.value)


def test_an_edited_manifest_is_refused(cache_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cache_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["latents_std"] = [1.0] * len(manifest["latents_std"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LatentCacheError, match="fingerprint does not match"):
        load_latents(copy)


def test_collate_pads_prompts_with_a_mask(cache_dir: Path) -> None:
    ds = load_latents(cache_dir)
    items = [ds[i] for i in range(3)]
    batch = collate_latents(items)
    lens = [it["prompt_len"] for it in items]
    assert len(set(lens)) > 1
    assert batch["latents"].shape == (3, *items[0]["latents"].shape)
    assert batch["prompt_embeds"].shape[:2] == (3, max(lens))
    for b, n in enumerate(lens):
        assert batch["prompt_mask"][b].sum() == n and batch["prompt_mask"][b, :n].all()
        assert torch.equal(batch["prompt_embeds"][b, :n], items[b]["prompt_embeds"])
        assert not batch["prompt_embeds"][b, n:].any()


def test_map_style_trains_through_a_dataloader_with_workers(cache_dir: Path) -> None:
    ds = load_latents(cache_dir)
    sampler = ds.bucket_sampler(3, shuffle=True, seed=1)
    loader: torch.utils.data.DataLoader[dict] = torch.utils.data.DataLoader(
        ds, batch_sampler=sampler, collate_fn=collate_latents, num_workers=2
    )
    ids = [cid for batch in loader for cid in batch["id"]]
    assert sorted(ids) == sorted(ds.cache.ids)


def test_streaming_shards_over_ranks_and_workers_disjoint_and_complete(cache_dir: Path) -> None:
    everything = set(LatentCache(cache_dir).ids)
    got: list[str] = []
    for rank in range(2):
        ds = load_latents(cache_dir, streaming=True, shuffle=True, seed=5, rank=rank, world_size=2)
        loader: torch.utils.data.DataLoader[dict] = torch.utils.data.DataLoader(
            ds, batch_size=None, num_workers=2
        )
        got += [item["id"] for item in loader]
    # 7 clips over 2 ranks: 3 each (ranks stay in step), split over each rank's workers; nothing twice
    assert len(got) == len(set(got)) == 6
    assert set(got) <= everything
    single = [it["id"] for it in load_latents(cache_dir, streaming=True, shuffle=True, seed=5)]
    assert sorted(single) == sorted(everything)


def test_streaming_shuffle_is_seeded(cache_dir: Path) -> None:
    def order(seed: int) -> list[str]:
        return [it["id"] for it in load_latents(cache_dir, streaming=True, shuffle=True, seed=seed)]

    assert order(1) == order(1)
    assert order(1) != order(2)
    ds = load_latents(cache_dir, streaming=True, shuffle=True, seed=1)
    first, second = [it["id"] for it in ds], [it["id"] for it in ds]
    assert first != second and sorted(first) == sorted(second)  # a new epoch reshuffles


def test_streaming_resumes_from_state_dict_exactly(cache_dir: Path) -> None:
    full = [it["id"] for it in load_latents(cache_dir, streaming=True, shuffle=True, seed=9)]
    ds = load_latents(cache_dir, streaming=True, shuffle=True, seed=9)
    it = iter(ds)
    head = [next(it)["id"] for _ in range(3)]
    state = json.loads(json.dumps(ds.state_dict()))  # must survive a JSON checkpoint
    resumed = load_latents(cache_dir, streaming=True, shuffle=True, seed=9)
    resumed.load_state_dict(state)
    tail = [item["id"] for item in resumed]
    assert head + tail == full


def test_streaming_buckets_by_latent_shape_and_resumes(bucket_cache: Path) -> None:
    def run(ds: object) -> list[list[str]]:
        return [batch["id"] for batch in ds]  # type: ignore[attr-defined]

    full_ds = load_latents(bucket_cache, streaming=True, shuffle=True, seed=2, batch_size=2)
    shapes = set()
    batches = []
    for batch in full_ds:
        assert batch["latents"].dim() == 5
        shapes.add(tuple(batch["latents"].shape[1:]))
        batches.append(batch["id"])
    assert len(shapes) == 2
    assert sorted(i for b in batches for i in b) == sorted(LatentCache(bucket_cache).ids)
    ds = load_latents(bucket_cache, streaming=True, shuffle=True, seed=2, batch_size=2)
    it = iter(ds)
    head = [next(it)["id"] for _ in range(2)]
    resumed = load_latents(bucket_cache, streaming=True, shuffle=True, seed=2, batch_size=2)
    resumed.load_state_dict(json.loads(json.dumps(ds.state_dict())))
    assert head + run(resumed) == batches


def test_bucket_sampler_groups_shapes_splits_ranks_and_resumes(bucket_cache: Path) -> None:
    cache = LatentCache(bucket_cache)
    shapes = cache.latent_shapes
    assert len(set(shapes)) == 2
    per_rank = [list(BucketBatchSampler(shapes, 2, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    flat = [i for batches in per_rank for b in batches for i in b]
    assert len(flat) == len(set(flat))
    for batches in per_rank:
        for b in batches:
            assert len({shapes[i] for i in b}) == 1
    whole = list(BucketBatchSampler(shapes, 2, seed=3))
    assert sorted(i for b in whole for i in b) == list(range(len(shapes)))
    s = BucketBatchSampler(shapes, 2, seed=3)
    it = iter(s)
    head = [next(it) for _ in range(2)]
    s2 = BucketBatchSampler(shapes, 2, seed=3)
    s2.load_state_dict(s.state_dict())
    assert head + list(s2) == whole


def test_mixed_shapes_in_one_batch_are_refused(bucket_cache: Path) -> None:
    ds = load_latents(bucket_cache)
    shapes = ds.cache.latent_shapes
    a = 0
    b = next(i for i, s in enumerate(shapes) if s != shapes[0])
    with pytest.raises(ValueError, match="bucket sampler"):
        collate_latents([ds[a], ds[b]])


def test_missing_cache_and_split_errors_say_what_to_do(cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(LatentCacheError, match="encode-latents"):
        load_latents(tmp_path)
    with pytest.raises(LatentCacheError, match="no shards for split 'test'"):
        load_latents(cache_dir, split="test")


def test_one_row_groups_are_read_directly_and_items_never_alias(
    tmp_path: Path, encoder: BatchEncoder, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medvideocap.latents.format as latents_format

    # real Wan rows (~20 MB) get a row group each; force that with the tiny rows
    monkeypatch.setattr(latents_format, "ROW_GROUP_BYTES", 1)
    encode_items(_items(7), tmp_path, "train", encoder)
    assert pq.ParquetFile(sorted((tmp_path / "train").glob("*.parquet"))[0]).metadata.num_row_groups == 2
    big = load_latents(tmp_path, normalize=False, posterior="mode")
    small = load_latents(cache_dir, normalize=False, posterior="mode")
    assert big.cache.ids == small.cache.ids
    raw = big.cache.raw(0, with_logvar=False)
    assert raw["owned"] and raw["latent"].flags.writeable  # read by preadv into memory of its own
    assert not small.cache.raw(0, with_logvar=False)["owned"]  # several rows per group: via pyarrow
    for i in range(len(big)):
        a, b = big[i], small[i]
        assert torch.equal(a["latents"], b["latents"]) and torch.equal(a["prompt_embeds"], b["prompt_embeds"])
        # a caller editing its tensor in place must not change what the next reader gets
        expected = a["latents"].clone()
        a["latents"].add_(1.0)
        a["prompt_embeds"].zero_()
        again = big[i]
        assert torch.equal(again["latents"], expected)
        assert torch.equal(again["prompt_embeds"], b["prompt_embeds"])
    streamed = {
        it["id"]: it for it in load_latents(tmp_path, streaming=True, normalize=False, posterior="mode")
    }
    for i in range(len(small)):
        assert torch.equal(streamed[small[i]["id"]]["latents"], small[i]["latents"])
    # sampling and normalising in place on directly read rows give what the pyarrow path gives
    for kw in ({"normalize": True, "posterior": "mode"}, {"normalize": True, "sample_seed": 7}):
        direct, viewed = load_latents(tmp_path, **kw), load_latents(cache_dir, **kw)
        for i in range(len(direct)):
            assert torch.equal(direct[i]["latents"], viewed[i]["latents"])


def test_streaming_with_workers_resumes_through_a_stateful_dataloader(cache_dir: Path) -> None:
    sdl = pytest.importorskip("torchdata.stateful_dataloader", reason="torchdata is in medvideocap[decode]")

    def make() -> object:
        return load_latents(cache_dir, streaming=True, shuffle=True, seed=3)

    full = [it["id"] for it in sdl.StatefulDataLoader(make(), batch_size=None, num_workers=2)]
    assert sorted(full) == sorted(LatentCache(cache_dir).ids)  # workers split a rank's share, dropping none
    loader = sdl.StatefulDataLoader(make(), batch_size=None, num_workers=2)
    it = iter(loader)
    head = [next(it)["id"] for _ in range(3)]
    state = loader.state_dict()
    resumed = sdl.StatefulDataLoader(make(), batch_size=None, num_workers=2)
    resumed.load_state_dict(state)
    assert head + [item["id"] for item in resumed] == full


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_moments_items_carry_the_posterior_for_the_trainer(
    cache_dir: Path, streaming: bool, normalize: bool
) -> None:
    mode = load_latents(cache_dir, normalize=normalize, posterior="mode")
    by_id = {mode[i]["id"]: i for i in range(len(mode))}
    ds = load_latents(cache_dir, streaming=streaming, normalize=normalize, posterior="moments")
    items = list(ds) if streaming else [ds[i] for i in range(len(ds))]
    assert len(items) == 7
    std = torch.tensor(mode.manifest["latents_std"])
    for item in items:
        i = by_id[item["id"]]
        assert torch.equal(item["latents"], mode[i]["latents"])  # the mean, normalised as asked
        raw = mode.cache.raw(i)["logvar"]
        assert item["latents_logvar"].dtype == torch.float32
        assert torch.equal(item["latents_logvar"], torch.from_numpy(raw.copy()))
        assert torch.equal(item["latents_scale"], std if normalize else torch.ones_like(std))
    batch = collate_latents(items[:3])
    assert batch["latents_logvar"].shape == batch["latents"].shape
    assert batch["latents_scale"].shape == (3, len(std))


def test_sample_moments_draws_what_the_cpu_path_draws(tmp_path: Path) -> None:
    # z = (mean + exp(logvar/2) * eps - m) / s, exactly, for the eps the generator gives
    write_random_cache(tmp_path, [(3, 2, 4, 5)] * 4)
    ds = load_latents(tmp_path, posterior="moments")
    batch = collate_latents([ds[i] for i in range(4)])
    drawn = sample_moments(batch, torch.Generator().manual_seed(11))
    assert "latents_logvar" not in drawn and "latents_scale" not in drawn
    assert drawn["id"] == batch["id"] and drawn["prompt_embeds"] is batch["prompt_embeds"]
    eps = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(11))
    raw = load_latents(tmp_path, normalize=False, posterior="moments")
    mean = torch.stack([raw[i]["latents"] for i in range(4)])
    m = torch.tensor(ds.manifest["latents_mean"]).view(1, -1, 1, 1, 1)
    s = torch.tensor(ds.manifest["latents_std"]).view(1, -1, 1, 1, 1)
    expected = (mean + torch.exp(0.5 * batch["latents_logvar"]) * eps - m) / s
    assert torch.allclose(drawn["latents"], expected, rtol=1e-5, atol=1e-5)
    # and in distribution it is the CPU "sample" path: residuals in stored units are N(0, 1) for both
    cpu = load_latents(tmp_path, posterior="sample")
    std = torch.exp(0.5 * batch["latents_logvar"])
    for z in (drawn["latents"], torch.stack([cpu[i]["latents"] for i in range(4)])):
        r = ((z * s + m) - mean) / std
        assert abs(r.mean().item()) < 0.15 and 0.85 < r.std().item() < 1.15
    # one item works too, and a batch with nothing to draw comes back unchanged
    assert sample_moments(ds[0], torch.Generator().manual_seed(1))["latents"].shape == (3, 2, 4, 5)
    plain = collate_latents([cpu[0]])
    assert sample_moments(plain) is plain


def test_both_paths_clip_the_log_variance_like_diffusers(tmp_path: Path) -> None:
    write_random_cache(tmp_path, [(2, 3, 8, 8)] * 3, logvar=40.0)  # clipped to 20: std e^10, not e^20
    mean = load_latents(tmp_path, normalize=False, posterior="mode")
    cpu = load_latents(tmp_path, normalize=False, posterior="sample")
    moments = load_latents(tmp_path, normalize=False, posterior="moments")
    batch = collate_latents([moments[i] for i in range(3)])
    on_loader = torch.stack([cpu[i]["latents"] for i in range(3)])
    on_device = sample_moments(batch, torch.Generator().manual_seed(0))["latents"]
    expected_mean = torch.stack([mean[i]["latents"] for i in range(3)])
    for z in (on_loader, on_device):
        r = (z - expected_mean) / math.exp(10.0)
        assert 0.8 < r.std().item() < 1.2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the draw must stay on it")
def test_sample_moments_draws_on_the_batch_device(tmp_path: Path) -> None:
    write_random_cache(tmp_path, [(3, 2, 4, 5)] * 2)
    ds = load_latents(tmp_path, posterior="moments")
    batch = collate_latents([ds[0], ds[1]])
    on_gpu = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    drawn = sample_moments(on_gpu, torch.Generator(device="cuda").manual_seed(5))
    assert drawn["latents"].device.type == "cuda"
    eps = torch.randn(
        batch["latents"].shape, generator=torch.Generator(device="cuda").manual_seed(5), device="cuda"
    )
    s = batch["latents_scale"].view(2, -1, 1, 1, 1)
    expected = (batch["latents"] * s + torch.exp(0.5 * batch["latents_logvar"]) * eps.cpu()) / s
    assert torch.allclose(drawn["latents"].cpu(), expected, rtol=1e-5, atol=1e-5)


def test_an_unknown_posterior_is_refused(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="'moments'"):
        load_latents(cache_dir, posterior="mean")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- corrupt caches and rows
def _plant(row_id: str, change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """A ``write_random_cache`` edit that changes the row ``row_id`` only."""

    def edit(row: dict[str, Any]) -> None:
        if row["id"] == row_id:
            change(row)

    return edit


def _poke(column: str, value: float) -> Callable[[dict[str, Any]], None]:
    """Set one stored value of ``column`` (its ``*_bytes``) to ``value``."""

    def change(row: dict[str, Any]) -> None:
        values = np.frombuffer(row[f"{column}_bytes"], dtype=row[f"{column}_dtype"]).copy()
        values[len(values) // 2] = value
        row[f"{column}_bytes"] = values.tobytes()

    return change


@pytest.mark.parametrize("direct", [False, True], ids=["via-row-group", "direct-read"])
@pytest.mark.parametrize(
    ("column", "value"), [("vae_latent", np.nan), ("vae_logvar", np.nan), ("text_embedding", np.inf)]
)
def test_a_non_finite_value_in_a_row_is_a_data_error_naming_the_file_and_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, column: str, value: float, direct: bool
) -> None:
    import medvideocap.latents.format as latents_format

    if direct:  # one-row groups: the preadv path of real Wan rows
        monkeypatch.setattr(latents_format, "ROW_GROUP_BYTES", 1)
    write_random_cache(tmp_path, [(3, 2, 4, 5)] * 4, edit=_plant("r002", _poke(column, value)))
    ds = load_latents(tmp_path, posterior="moments")  # opening reads only the small columns
    assert ds.cache.raw(0)["owned"] is direct
    bad = ds.cache.ids.index("r002")
    for i in range(len(ds)):
        if i != bad:
            assert torch.isfinite(ds[i]["latents"]).all() and torch.isfinite(ds[i]["latents_logvar"]).all()
    with pytest.raises(LatentRowError) as err:
        ds[bad]
    assert isinstance(err.value, DataError) and isinstance(err.value, LatentCacheError)
    shard = ds.cache.files[ds.cache.refs[bad].file]
    message = str(err.value)
    assert str(shard) in message and "'r002'" in message and column in message, message
    assert "non-finite" in message and "encode-latents" in message, message


def _set(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda row: row.update(values)


def _reshape_text(row: dict[str, Any]) -> None:
    length, dim = row["text_embedding_shape"]
    row["text_embedding_shape"] = [length * 2, dim // 2]  # same byte count, text_len no longer fits


@pytest.mark.parametrize(
    ("change", "says"),
    [
        pytest.param(_set(vae_latent_dtype="object"), "dtype 'object'", id="object-dtype"),
        pytest.param(_set(vae_latent_shape=[2, 3, 4, 5]), "channels", id="permuted-latent-shape"),
        pytest.param(_set(vae_latent_shape=[3, 2, 4, 6]), "values stored", id="shape-past-its-bytes"),
        pytest.param(_reshape_text, "text_len", id="reshaped-text-embedding"),
    ],
)
def test_a_corrupt_row_is_a_data_error_naming_the_file_the_row_and_the_fix(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], says: str
) -> None:
    write_random_cache(tmp_path, [(3, 2, 4, 5)] * 4, edit=_plant("r001", change))
    ds = load_latents(tmp_path, posterior="moments")
    bad = ds.cache.ids.index("r001")
    with pytest.raises(LatentRowError) as err:
        ds[bad]
    assert isinstance(err.value, DataError)
    message = str(err.value)
    assert str(ds.cache.files[ds.cache.refs[bad].file]) in message and "'r001'" in message, message
    assert says in message and "encode-latents" in message, message
    assert ds[(bad + 1) % len(ds)]["latents"].shape == (3, 2, 4, 5)  # the other rows still read


def test_a_truncated_shard_is_named_by_the_reader_and_by_a_resumed_encode(tmp_path: Path) -> None:
    from medvideocap.latents import finished_ids

    write_random_cache(tmp_path, [(3, 2, 4, 5)] * 4)
    shard = sorted((tmp_path / "train").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a copy that stopped half-way
    for read in (lambda: load_latents(tmp_path), lambda: finished_ids(tmp_path, "train")):
        with pytest.raises(LatentCacheError) as err:
            read()
        message = str(err.value)
        assert str(shard) in message and f"delete {shard.name}" in message, message
        assert "rerun `medvideocap encode-latents` for split 'train'" in message, message


def _not_json(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest)[:40]  # cut off mid-write


def _nan_std(manifest: dict[str, Any]) -> str:
    return json.dumps({**manifest, "latents_std": [float("nan")] + manifest["latents_std"][1:]})


@pytest.mark.parametrize(
    ("corrupt", "says"),
    [pytest.param(_not_json, "not valid JSON", id="not-json"), pytest.param(_nan_std, "NaN", id="nan")],
)
def test_a_corrupt_manifest_is_named_by_the_reader_and_by_a_resumed_encode(
    tmp_path: Path, corrupt: Callable[[dict[str, Any]], str], says: str
) -> None:
    from medvideocap.latents import write_manifest

    write_random_cache(tmp_path, [(3, 2, 4, 5)] * 2)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(corrupt(manifest))
    for read in (lambda: load_latents(tmp_path), lambda: write_manifest(tmp_path, manifest)):
        with pytest.raises(LatentCacheError) as err:
            read()
        message = str(err.value)
        assert str(path) in message and says in message and "encode-latents" in message, message
