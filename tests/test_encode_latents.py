"""``medvideocap encode-latents`` end to end: real mp4s in a hub-native dataset, read by
``medvideocap.load``, encoded by the tiny Wan VAE + UMT5 into a cache that resumes after SIGKILL and
splits across ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from fixtures_latents import SPEC, make_tiny_model_dir, tiny_config, write_hub_native, write_videos
from videos import make_video, real_clip

from medvideocap.encode_latents import BatchEncoder, encode_latents, rank_of
from medvideocap.latents import FingerprintMismatchError, LatentCache, collate_latents, load_latents


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("hubnative") / "ds"
    ids = write_hub_native(root, 6)
    return root, ids


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, dataset, tiny_model_dir: Path) -> Path:
    """An uninterrupted single-rank run, the yardstick for resume and ranks."""
    out = tmp_path_factory.mktemp("reference")
    encode_latents(dataset[0], out, config=tiny_config(tiny_model_dir))
    return out


def _rows(cache: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for path in sorted((cache / "train").glob("rank-*-shard-*.parquet")):
        for row in pq.read_table(path).to_pylist():
            assert row["id"] not in rows, f"{row['id']} written twice ({path})"
            rows[row["id"]] = row
    return rows


def _same_rows(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert sorted(a) == sorted(b)
    for cid in a:
        for col in (
            "vae_latent_bytes",
            "vae_logvar_bytes",
            "text_embedding_bytes",
            "vae_latent_shape",
            "caption",
        ):
            assert a[cid][col] == b[cid][col], f"{cid}: {col} differs"


def test_cached_latents_match_encoding_on_the_fly_and_decode_alike(
    dataset, reference: Path, tiny_model_dir: Path
) -> None:
    from medvideocap.loader import load

    root, ids = dataset
    cache = load_latents(reference, normalize=True, posterior="mode")
    assert sorted(cache.cache.ids) == sorted(ids)
    encoder = BatchEncoder(tiny_config(tiny_model_dir))
    pixels = load(root, "train", frames=SPEC, shuffle=False)
    by_id = {cid: i for i, cid in enumerate(cache.cache.ids)}
    mean = torch.tensor(cache.manifest["latents_mean"]).view(-1, 1, 1, 1)
    std = torch.tensor(cache.manifest["latents_std"]).view(-1, 1, 1, 1)
    for i in range(len(pixels)):
        item = pixels[i]
        cached = cache[by_id[item["id"]]]
        fresh, _ = encoder.encode_videos(item["video"][None])
        (text,) = encoder.encode_texts([item["caption"]])
        # what the trainer gets, un-normalised, is bit for bit what the VAE gives on the fly
        restored = cached["latents"] * std + mean
        assert torch.allclose(restored, fresh[0], atol=1e-5, rtol=0)
        raw = load_latents(reference, normalize=False, posterior="mode")[by_id[item["id"]]]["latents"]
        assert torch.equal(raw, fresh[0])
        assert torch.equal(cached["prompt_embeds"], text)
        assert cached["caption"] == item["caption"]
        with torch.inference_mode():
            from_cache = encoder.vae.decode(raw[None]).sample
            on_the_fly = encoder.vae.decode(encoder.vae.encode(item["video"][None]).latent_dist.mode()).sample
        assert from_cache.shape == (1, 3, SPEC.num_frames, SPEC.height, SPEC.width)
        assert torch.equal(from_cache, on_the_fly)


def test_rows_record_the_frames_and_the_manifest_records_the_models(
    reference: Path, tiny_model_dir: Path
) -> None:
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["vae_id"] == str(tiny_model_dir) and manifest["vae_class"] == "AutoencoderKLWan"
    assert manifest["vae_revision"].startswith("sha256:")
    assert manifest["text_encoder_subfolder"] == "text_encoder" and manifest["max_length"] == 64
    assert manifest["store"] == "moments"
    assert manifest["frame_spec"]["num_frames"] == 9 and manifest["frame_spec"]["height"] == 32
    row = next(iter(_rows(reference).values()))
    assert row["num_frames"] == 9 and len(row["frame_timestamps"]) == 9
    assert row["fps"] == pytest.approx(8.0)
    assert row["source_duration_sec"] == pytest.approx(2.0, abs=0.2)
    assert row["fingerprint"] == manifest["fingerprint"]
    assert row["vae_latent_shape"] == [4, 3, 4, 6]  # z_dim 4; (9-1)/4+1 frames; 32/8 x 48/8


def test_sigkill_then_resume_equals_an_uninterrupted_run(
    dataset, reference: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    root, ids = dataset
    out = tmp_path / "cache"
    args = [
        sys.executable,
        "-m",
        "medvideocap",
        "encode-latents",
        str(root),
        "--out",
        str(out),
        "--vae",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--num-frames",
        "9",
        "--fps",
        "8",
        "--height",
        "32",
        "--width",
        "48",
        "--max-length",
        "64",
        "--rows-per-shard",
        "2",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if list((out / "train").glob("rank-0-shard-*.parquet")):
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    partial = _rows(out)
    assert 0 < len(partial) < len(ids), "the kill must land mid-run for this test to mean anything"
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["already_done"] == len(partial)
    assert report["encoded"] == len(ids) - len(partial)
    _same_rows(_rows(out), _rows(reference))
    assert not [p for p in (out / "train").iterdir() if p.name.startswith(".")]  # no tmp files left
    # a third run has nothing to do
    again = json.loads(
        subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
    )
    assert again["encoded"] == 0 and again["already_done"] == len(ids)


def test_two_ranks_write_disjoint_complete_outputs_read_without_merging(
    dataset, reference: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, ids = dataset
    config = tiny_config(tiny_model_dir)
    per_rank = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        (report,) = encode_latents(root, tmp_path, config=config)
        files = sorted((tmp_path / "train").glob(f"rank-{rank}-shard-*.parquet"))
        per_rank[rank] = {
            cid for f in files for cid in pq.read_table(f, columns=["id"]).column("id").to_pylist()
        }
        assert report.encoded == len(per_rank[rank]) == sum(rank_of(c, 2) == rank for c in ids)
    assert per_rank[0] and per_rank[1], "the hash split should give both ranks work with 6 clips"
    assert not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == set(ids)
    _same_rows(_rows(tmp_path), _rows(reference))
    assert sorted(LatentCache(tmp_path).ids) == sorted(ids)


def test_a_short_clip_is_dropped_with_its_reason_and_not_retried(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ds"
    ids = write_hub_native(root, 3, short_ids=(1,))
    out = tmp_path / "cache"
    (report,) = encode_latents(root, out, config=tiny_config(tiny_model_dir))
    assert report.encoded == 2 and report.dropped == 1
    dropped = pq.read_table(out / "train" / "rank-0-dropped.parquet").to_pylist()
    assert [d["id"] for d in dropped] == [ids[1]]
    assert "frames" in dropped[0]["reason"]
    (again,) = encode_latents(root, out, config=tiny_config(tiny_model_dir))
    assert again.encoded == 0 and again.dropped == 0 and again.skipped_done == 3


def test_resuming_with_other_settings_is_refused(dataset, reference: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(FingerprintMismatchError, match="store"):
        encode_latents(dataset[0], reference, config=tiny_config(tiny_model_dir, store="sample"))


def test_real_clips_land_in_aspect_buckets_and_batch_by_latent_shape(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from medvideocap.frames import FrameSpec
    from medvideocap.loader import load

    paths = {
        "bunny": real_clip("bigbuckbunny.mp4", tmp_path / "real"),  # 1280x720
        "bikes": real_clip("bikes.mp4", tmp_path / "real"),  # 640x272
        "pattern": make_video(tmp_path / "real" / "pattern.mp4", seconds=2, fps=8, size=(64, 48)),
    }
    ids = write_videos(tmp_path / "ds", paths)
    spec = FrameSpec(num_frames=9, fps=8.0, position="center", buckets=((9, 32, 48), (9, 32, 80)))
    (report,) = encode_latents(
        tmp_path / "ds", tmp_path / "cache", config=tiny_config(tiny_model_dir, frames=spec)
    )
    assert report.encoded == 3
    pixels = load(tmp_path / "ds", "train", frames=spec)
    expected = {cid: pixels.target_shape(i) for i, cid in enumerate(pixels.ids)}
    assert expected["bunny"] == expected["pattern"] != expected["bikes"]
    ds = load_latents(tmp_path / "cache")
    for i, cid in enumerate(ds.cache.ids):
        frames, height, width = expected[cid]
        assert ds[i]["latents"].shape == (4, (frames - 1) // 4 + 1, height // 8, width // 8)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["frame_spec"]["buckets"] == [[9, 32, 48], [9, 32, 80]]
    batches = list(ds.bucket_sampler(2, shuffle=False))
    assert sorted(len(b) for b in batches) == [1, 2]
    for b in batches:
        batch = collate_latents([ds[i] for i in b])
        assert batch["latents"].shape[0] == len(b)
    assert sorted(cid for b in batches for cid in (ds.cache.ids[i] for i in b)) == sorted(ids)


@pytest.mark.slow
def test_ray_engine_writes_the_same_cache(
    dataset, reference: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray", reason="ray is an optional extra (medvideocap[ray])")
    root, _ = dataset
    (report,) = encode_latents(root, tmp_path, config=tiny_config(tiny_model_dir), engine="ray")
    assert report.encoded == 6
    _same_rows(_rows(tmp_path), _rows(reference))
