"""``medvideocap encode-latents`` end to end: real mp4s in a hub-native dataset, read by
``medvideocap.load``, encoded by the tiny Wan VAE + UMT5 into a cache that resumes after SIGKILL and
splits across ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fixtures_latents import (
    SPEC,
    encode_cli,
    make_tiny_model_dir,
    tiny_config,
    write_hub_native,
    write_videos,
)
from videos import make_video, real_clip

from medvideocap.latents import (
    FingerprintMismatchError,
    LatentCache,
    collate_latents,
    load_latents,
    read_dropped,
)
from medvideocap.latents.encode import BatchEncoder, encode_latents, rank_of


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
    from medvideocap.loading.loader import load

    root, ids = dataset
    cache = load_latents(reference, normalize=True, posterior="mode")
    assert sorted(cache.cache.ids) == sorted(ids)
    encoder = BatchEncoder(tiny_config(tiny_model_dir))
    pixels: Any = load(root, "train", frames=SPEC, shuffle=False)  # the map-style hub-native dataset
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
    args = encode_cli(root, out, tiny_model_dir)
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
    dropped = read_dropped(out / "meta" / "dropped-train-rank-0.jsonl")
    assert [d["id"] for d in dropped] == [ids[1]]
    assert "frames" in dropped[0]["reason"]
    (again,) = encode_latents(root, out, config=tiny_config(tiny_model_dir))
    assert again.encoded == 0 and again.dropped == 0 and again.skipped_done == 3


@pytest.mark.parametrize("where", ["decoder", "encoder"])
def test_a_bug_stops_the_run_with_its_traceback_while_a_truncated_clip_is_dropped(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Error policy: only a DataError drops a clip. A TypeError planted in the decoder or in the VAE call
    for clip c003 stops the run as itself (not "dropped"), after the truncated mp4 met earlier in the
    same run was recorded as dropped; without the bug the same dataset encodes with that one drop."""
    from fixtures_loader import make_hub_native

    import medvideocap.latents.encode as encode
    from medvideocap.media.decode import TorchCodecDecoder

    root = make_hub_native(tmp_path / "ds", 4, corrupt=("truncated",))  # c000 c001 c002 bad_truncated c003
    config = tiny_config(tiny_model_dir, num_workers=0, batch_size=1, caption="detailed")
    if where == "decoder":
        real = TorchCodecDecoder._decode

        def planted(self: TorchCodecDecoder, indices: list[int]) -> Any:
            if "c003" in self.name:
                raise TypeError("get_frames_at() got an unexpected keyword argument 'planted'")
            return real(self, indices)

        monkeypatch.setattr(TorchCodecDecoder, "_decode", planted)
    else:
        real_encode = encode.BatchEncoder.encode_videos

        def planted(self: BatchEncoder, videos: torch.Tensor) -> Any:  # type: ignore[misc]
            if self._batch_ids == ["c003"]:
                raise TypeError("encode() got an unexpected keyword argument 'planted'")
            return real_encode(self, videos)

        real_batch = encode.BatchEncoder.encode_batch

        def remember(self: BatchEncoder, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            self._batch_ids = [it["id"] for it in items]
            return real_batch(self, items)

        monkeypatch.setattr(encode.BatchEncoder, "encode_videos", planted)
        monkeypatch.setattr(encode.BatchEncoder, "encode_batch", remember)
    out = tmp_path / "cache"
    with pytest.raises(TypeError, match="planted") as caught:
        encode_latents(root, out, config=config)
    assert caught.traceback[-1].name == "planted"
    dropped = read_dropped(out / "meta" / "dropped-train-rank-0.jsonl")
    assert [d["id"] for d in dropped] == ["bad_truncated"]
    assert dropped[0]["reason"].startswith("DecodeError: ") and "bad_truncated.mp4" in dropped[0]["reason"]
    monkeypatch.undo()
    (report,) = encode_latents(root, out, config=config)  # resumes: only the clips after the bug are left
    assert sorted(LatentCache(out).ids) == ["c000", "c001", "c002", "c003"]
    assert report.dropped == 0 and len(read_dropped(out / "meta" / "dropped-train-rank-0.jsonl")) == 1


class _NanPixels:
    """The pixel dataset with one clip's frames all NaN, as a broken decode would hand them to the VAE."""

    def __init__(self, dataset: Any, bad_id: str):
        self.dataset, self.bad_id = dataset, bad_id

    def __getattr__(self, name: str) -> Any:  # ids, stats, ... as the real dataset has them
        return getattr(self.__dict__["dataset"], name)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if item["id"] == self.bad_id:
            item["video"] = torch.full_like(item["video"], float("nan"))
        return item


@pytest.mark.parametrize("bad", ["vae_latent", "text_embedding"])
def test_a_clip_that_encodes_to_nan_is_dropped_with_the_reason_and_never_written(
    dataset, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    import medvideocap.latents.encode as encode

    root, ids = dataset
    if bad == "vae_latent":
        source = encode._source_dataset
        monkeypatch.setattr(encode, "_source_dataset", lambda *a: _NanPixels(source(*a), ids[1]))
    else:
        embed = BatchEncoder.encode_texts

        def nan_for_clip_1(self: BatchEncoder, texts: list[str]) -> list[torch.Tensor]:
            embeds = embed(self, texts)  # captions end "number {i}" (+ " slowly"s): write_hub_native
            return [
                e * float("nan") if "number 1 " in f"{t} " else e for e, t in zip(embeds, texts, strict=True)
            ]

        monkeypatch.setattr(BatchEncoder, "encode_texts", nan_for_clip_1)
    config = tiny_config(tiny_model_dir, num_workers=0, batch_size=2)  # the bad clip shares its batch
    (report,) = encode_latents(root, tmp_path, config=config)
    assert (report.encoded, report.dropped) == (len(ids) - 1, 1)
    (drop,) = read_dropped(tmp_path / "meta" / "dropped-train-rank-0.jsonl")
    assert drop["id"] == ids[1] and drop["stage"] == "encode", drop
    assert "non-finite" in drop["reason"] and bad in drop["reason"], drop
    cache = load_latents(tmp_path, posterior="moments")
    assert sorted(cache.cache.ids) == sorted(c for c in ids if c != ids[1])
    for i in range(len(cache)):  # every written row reads, and the reader checks each for NaN/inf
        assert torch.isfinite(cache[i]["latents"]).all() and torch.isfinite(cache[i]["prompt_embeds"]).all()
    (again,) = encode_latents(root, tmp_path, config=config)
    assert (again.encoded, again.dropped, again.skipped_done) == (0, 0, len(ids))  # not retried


def test_resuming_with_other_settings_is_refused(dataset, reference: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(FingerprintMismatchError, match="store"):
        encode_latents(dataset[0], reference, config=tiny_config(tiny_model_dir, store="sample"))


def test_real_clips_land_in_aspect_buckets_and_batch_by_latent_shape(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from medvideocap.loading.loader import load
    from medvideocap.media.frames import FrameSpec

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
    pixels: Any = load(tmp_path / "ds", "train", frames=spec)
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


# FastVideo 0.2.1's T2V latent schema (fastvideo/dataset/dataloader/schema.py, pyarrow_schema_t2v): the
# columns and Arrow types its parquet datasets read from every *.parquet under the folder they are given.
FASTVIDEO_T2V_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("vae_latent_bytes", pa.binary()),
        ("vae_latent_shape", pa.list_(pa.int64())),
        ("vae_latent_dtype", pa.string()),
        ("text_embedding_bytes", pa.binary()),
        ("text_embedding_shape", pa.list_(pa.int64())),
        ("text_embedding_dtype", pa.string()),
        ("file_name", pa.string()),
        ("caption", pa.string()),
        ("media_type", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("num_frames", pa.int64()),
        ("duration_sec", pa.float64()),
        ("fps", pa.float64()),
    ]
)


def _fastvideo_rows(folder: Path) -> list[dict]:
    """What FastVideo's map-style parquet dataset sees: ``os.walk`` over the folder, every file ending
    in ``.parquet`` (hidden or not), each row a sample whose tensors are ``np.frombuffer(bytes,
    float32).reshape(shape)``, the way ``collate_rows_from_parquet_schema`` decodes them."""
    import numpy as np

    rows = []
    for top, _, files in os.walk(folder):
        for name in sorted(files):
            if not name.endswith(".parquet"):
                continue
            table = pq.ParquetFile(os.path.join(top, name)).read()
            for field in FASTVIDEO_T2V_SCHEMA:
                assert field.name in table.schema.names, f"{name}: no {field.name} column: not a latent shard"
                assert table.schema.field(field.name).type == field.type, (name, field)
            for row in table.to_pylist():
                for key in ("vae_latent", "text_embedding"):
                    row[key] = np.frombuffer(row[f"{key}_bytes"], dtype=np.float32).reshape(
                        row[f"{key}_shape"]
                    )
                rows.append(row)
    return rows


@pytest.fixture(scope="module")
def dropped_cache(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, list[str]]:
    """4 clips, the third too short: a cache with 3 rows and one dropped clip (copy it to change it)."""
    root = tmp_path_factory.mktemp("dropped")
    ids = write_hub_native(root / "ds", 4, short_ids=(2,))
    (report,) = encode_latents(root / "ds", root / "cache", config=tiny_config(tiny_model_dir))
    assert (report.encoded, report.dropped) == (3, 1)
    return root, ids


def _assert_only_latent_shards(out: Path, kept: list[str]) -> None:
    import numpy as np
    import pyarrow.dataset as pads

    ours = load_latents(out, normalize=False, posterior="mode")
    by_id = {ours.cache.ids[i]: ours.cache.raw(i) for i in range(len(ours))}
    for folder in (out / "train", out):  # the split folder, and the whole cache as a data root
        rows = _fastvideo_rows(folder)
        assert sorted(r["id"] for r in rows) == sorted(kept), folder
        for r in rows:
            np.testing.assert_array_equal(r["vae_latent"], by_id[r["id"]]["latent"])
            np.testing.assert_array_equal(r["text_embedding"], by_id[r["id"]]["text"])
    table = pads.dataset(out / "train", format="parquet").to_table()  # pyarrow.dataset over the split
    assert table.num_rows == len(kept) and table.column("vae_latent_bytes").null_count == 0
    table = pads.dataset(sorted(map(str, out.rglob("*.parquet"))), format="parquet").to_table()  # a glob
    assert sorted(table.column("id").to_pylist()) == sorted(kept)


def test_every_parquet_file_of_a_cache_with_dropped_clips_is_a_fastvideo_latent_shard(
    dropped_cache: tuple[Path, list[str]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    root, ids = dropped_cache
    out = shutil.copytree(root / "cache", tmp_path / "cache")
    _assert_only_latent_shards(out, [c for c in ids if c != ids[2]])
    assert [d["id"] for d in read_dropped(out / "meta" / "dropped-train-rank-0.jsonl")] == [ids[2]]
    (again,) = encode_latents(root / "ds", out, config=tiny_config(tiny_model_dir))
    assert (again.encoded, again.dropped, again.skipped_done) == (0, 0, 4)  # the drop is not retried


def test_resuming_a_cache_with_the_old_parquet_drop_log_moves_it_out_of_the_split_folder(
    dropped_cache: tuple[Path, list[str]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    root, ids = dropped_cache
    out = shutil.copytree(root / "cache", tmp_path / "cache")
    new_log = out / "meta" / "dropped-train-rank-0.jsonl"
    legacy = out / "train" / "rank-0-dropped.parquet"  # where medvideocap 0.1 wrote it
    pq.write_table(pa.Table.from_pylist(read_dropped(new_log)), legacy)
    new_log.unlink()
    (again,) = encode_latents(root / "ds", out, config=tiny_config(tiny_model_dir))
    assert (again.encoded, again.dropped, again.skipped_done) == (0, 0, 4)
    assert not legacy.exists() and [d["id"] for d in read_dropped(new_log)] == [ids[2]]
    _assert_only_latent_shards(out, [c for c in ids if c != ids[2]])


@pytest.mark.slow
def test_ray_data_reads_only_latent_rows_from_a_cache_with_dropped_clips(
    dropped_cache: tuple[Path, list[str]],
) -> None:
    ray = pytest.importorskip("ray", reason="ray is an optional extra (medvideocap[ray])")
    root, ids = dropped_cache
    out = root / "cache"
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        for folder in (out / "train", out):
            rows = ray.data.read_parquet(str(folder)).take_all()
            assert sorted(r["id"] for r in rows) == sorted(c for c in ids if c != ids[2]), folder
            assert all(r["vae_latent_bytes"] and r["text_embedding_bytes"] for r in rows)
    finally:
        ray.shutdown()


def test_cli_logs_per_rank_progress_lines_on_stderr_and_keeps_one_json_summary_on_stdout(
    dropped_cache: tuple[Path, list[str]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    import re

    from click.testing import CliRunner

    from medvideocap.cli import main

    root, _ = dropped_cache
    args = [
        "encode-latents",
        str(root / "ds"),
        "--out",
        str(tmp_path / "cache"),
        "--vae",
        str(tiny_model_dir),
    ]
    args += ["--num-frames", "9", "--fps", "8", "--height", "32", "--width", "48", "--max-length", "64"]
    args += ["--device", "cpu", "--num-workers", "0"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    (line,) = res.stdout.splitlines()
    summary = json.loads(line)
    assert (summary["encoded"], summary["dropped"], summary["rank"]) == (3, 1, 0)
    # stderr is no terminal here: plain lines (a start line, then the last one), no redrawn bar
    lines = [line for line in res.stderr.splitlines() if line.startswith("encode-latents train rank 0/1: ")]
    assert lines[0].startswith("encode-latents train rank 0/1: 0/4 clips, - s/clip, 0 dropped"), lines
    last = lines[-1]
    assert "4/4 clips" in last and "1 dropped" in last and "ETA 0s" in last, last
    assert re.search(r", [\d.]+ (s/clip|clips/s), ", last) and "0.00" not in last, last  # rate, never 0.00
    quiet = CliRunner().invoke(main, [*args[:3], str(tmp_path / "quiet"), *args[4:], "--no-progress"])
    assert quiet.exit_code == 0 and "clips" not in quiet.stderr, quiet.output


def test_a_float16_cache_warns_that_fastvideo_misreads_it_and_the_help_says_so(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import numpy as np
    from click.testing import CliRunner

    from medvideocap.cli import main
    from medvideocap.latents.encode import StorageDtypeWarning

    help_text = " ".join(CliRunner().invoke(main, ["encode-latents", "--help"]).output.split())
    assert "float16" in help_text and "FastVideo" in help_text and "as float32" in help_text
    root = tmp_path / "ds"
    write_hub_native(root, 1)
    with pytest.warns(StorageDtypeWarning, match="FastVideo.*float32"):
        encode_latents(root, tmp_path / "f16", config=tiny_config(tiny_model_dir, storage_dtype="float16"))
    (row,) = _rows(tmp_path / "f16").values()
    assert row["vae_latent_dtype"] == "float16"
    with pytest.raises(ValueError):  # what FastVideo's float32 decode does with these bytes
        np.frombuffer(row["vae_latent_bytes"], dtype=np.float32).reshape(row["vae_latent_shape"])
    ours = load_latents(tmp_path / "f16", normalize=False, posterior="mode")[0]["latents"]
    assert ours.shape == tuple(row["vae_latent_shape"])


def test_every_cli_default_is_the_default_of_the_python_api() -> None:
    import dataclasses
    import inspect

    import click

    from medvideocap.cli.encode_latents import command
    from medvideocap.latents.encode import EncodeConfig
    from medvideocap.media.frames import FrameSpec

    config = EncodeConfig()
    frames = config.frame_spec()
    run = inspect.signature(encode_latents).parameters
    config_fields = {f.name for f in dataclasses.fields(EncodeConfig)}
    frame_fields = {f.name for f in dataclasses.fields(FrameSpec)}
    # the cache folder is required; the bar is on unless --no-progress; --plan prints and exits;
    # --storage-option KEY=VALUE pairs become encode_latents' storage_options
    cli_only = {"out", "no_progress", "show_plan", "storage_option"}
    parsed = command.make_context("encode-latents", ["SOURCE", "--out", "cache"]).params
    seen = set()
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in cli_only:
            continue
        name = param.name
        assert name is not None
        if name in config_fields:
            expected = getattr(config, name)
        elif name in frame_fields:  # --num-frames ... --bucket build the FrameSpec
            expected = getattr(frames, name)
        else:
            assert name in run, f"--{name}: no EncodeConfig field, FrameSpec field or encode_latents keyword"
            expected = run[name].default
        value = parsed[name] or None if name == "buckets" else parsed[name]  # no --bucket: no buckets
        assert value == expected, f"--{name}: CLI default {value!r} != API {expected!r}"
        seen.add(name)
    assert {"num_workers", "vae", "num_frames", "engine", "ray_address", "ray_concurrency"} <= seen


def test_the_cli_with_no_options_builds_the_default_encode_config(monkeypatch, tmp_path: Path) -> None:
    import dataclasses

    from click.testing import CliRunner

    import medvideocap.cli.encode_latents as cli
    from medvideocap.cli import main
    from medvideocap.latents.encode import EncodeConfig

    calls: list[dict] = []

    def record(*_: Any, **kw: Any) -> list[Any]:
        calls.append(kw)
        return []

    monkeypatch.setattr(cli, "encode_latents", record)
    res = CliRunner().invoke(main, ["encode-latents", str(tmp_path / "src"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    (kw,) = calls
    default = EncodeConfig()
    assert kw["config"].frames == default.frame_spec()
    assert dataclasses.replace(kw["config"], frames=None) == default
    assert (kw["engine"], kw["splits"], kw["limit"], kw["ray_address"]) == ("local", ("train",), None, None)


# the drop log is a resume journal (medvideocap.journal): torn tail repaired, a bad middle line named


def test_a_drop_log_line_torn_by_a_kill_is_cut_off_and_the_next_append_starts_clean(tmp_path: Path) -> None:
    from medvideocap.latents.dropped import DroppedLog, dropped_path, finished_ids

    log = DroppedLog(tmp_path, "train", 0)
    log.add("a", "load", "EOFError: truncated")
    log.add("b", "load", "too short")
    path = dropped_path(tmp_path, "train", 0)
    whole = path.read_bytes()
    assert whole == (
        b'{"id": "a", "reason": "EOFError: truncated", "stage": "load"}\n'
        b'{"id": "b", "reason": "too short", "stage": "load"}\n'
    )  # the on-disk format read by every earlier version
    path.write_bytes(whole + b'{"id": "c", "reas')  # killed in the middle of the third append
    assert read_dropped(path) == log.rows and path.read_bytes().endswith(b'"reas')  # readers leave it
    assert finished_ids(tmp_path, "train") == {"a", "b"}  # so "c" is encoded again on resume
    reopened = DroppedLog(tmp_path, "train", 0)
    assert [r["id"] for r in reopened.rows] == ["a", "b"] and path.read_bytes() == whole
    reopened.add("c", "load", "again")
    assert [r["id"] for r in read_dropped(path)] == ["a", "b", "c"]


def test_a_drop_log_whose_last_line_only_lost_its_newline_keeps_it(tmp_path: Path) -> None:
    from medvideocap.latents.dropped import DroppedLog, dropped_path

    path = dropped_path(tmp_path, "train", 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"id": "a", "reason": "r", "stage": "load"}')
    assert [r["id"] for r in DroppedLog(tmp_path, "train", 0).rows] == ["a"]
    assert path.read_bytes().endswith(b"}\n")


@pytest.mark.parametrize(
    "bad", [b"not json at all", b'{"stage": "load"}', b'["a"]'], ids=["not-json", "no-id", "not-object"]
)
def test_a_bad_line_in_the_middle_of_a_drop_log_is_an_error_naming_file_and_line(
    tmp_path: Path, bad: bytes
) -> None:
    from medvideocap.latents import LatentCacheError
    from medvideocap.latents.dropped import DroppedLog, dropped_path, finished_ids

    path = dropped_path(tmp_path, "train", 0)
    path.parent.mkdir(parents=True)
    good = b'{"id": "a", "reason": "r", "stage": "load"}\n'
    path.write_bytes(good + bad + b"\n" + good.replace(b'"a"', b'"b"'))
    before = path.read_bytes()
    for call in (lambda: read_dropped(path), lambda: finished_ids(tmp_path, "train")):
        with pytest.raises(LatentCacheError, match=f"{path}:2: "):
            call()
    with pytest.raises(LatentCacheError, match=f"{path}:2: "):
        DroppedLog(tmp_path, "train", 0)
    assert path.read_bytes() == before  # nothing guessed, nothing rewritten


def test_ray_address_reaches_the_one_ray_bootstrap(
    dataset, tiny_model_dir: Path, monkeypatch, tmp_path, ray_session_spy
) -> None:
    """``--engine ray`` once ignored ``--ray-address`` (it had none) and always read RAY_ADDRESS."""
    from click.testing import CliRunner

    import medvideocap.cli.encode_latents as cli
    import medvideocap.latents.encode as module
    from medvideocap.cli import main

    spy = ray_session_spy(module)
    with pytest.raises(spy.error):
        encode_latents(
            dataset[0], tmp_path / "c", config=tiny_config(tiny_model_dir), engine="ray", ray_address="head:1"
        )
    assert spy.asked == ["head:1"]
    calls: list[dict] = []

    def record(*_: Any, **kw: Any) -> list[Any]:
        calls.append(kw)
        return []

    monkeypatch.setattr(cli, "encode_latents", record)
    args = ["encode-latents", "src", "--out", str(tmp_path / "c"), "--engine", "ray", "--ray-address", "h:2"]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert (calls[0]["engine"], calls[0]["ray_address"]) == ("ray", "h:2")


def test_an_out_in_or_around_the_source_is_refused_before_any_work(monkeypatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    import medvideocap.cli.encode_latents as cli
    from medvideocap.cli import main

    calls: list[Any] = []
    monkeypatch.setattr(cli, "encode_latents", lambda *a, **kw: calls.append(a) or [])
    src = tmp_path / "ds"
    src.mkdir()
    for out, says in [
        (src / "latents", f"--out {src / 'latents'} lies inside the source {src}"),
        (tmp_path, f"the source {src} lies inside --out {tmp_path}"),
    ]:
        done = CliRunner().invoke(main, ["encode-latents", str(src), "--out", str(out)])
        assert done.exit_code == 1 and done.output.startswith(f"Error: {says}: "), done.output
    assert calls == [] and list(src.iterdir()) == []  # refused before any work


# ------------------------------------------------- model dtypes, when the text encoder loads, "" stored


def test_the_vae_and_the_text_encoder_take_their_own_dtypes_and_the_text_encoder_defaults_to_bf16(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    import medvideocap.cli.encode_latents as cli
    from medvideocap import models
    from medvideocap.cli import main
    from medvideocap.latents.encode import EncodeConfig

    def dtypes(config: EncodeConfig) -> tuple[str, str]:
        return config.resolved_vae_dtype(), config.resolved_text_encoder_dtype()

    assert dtypes(EncodeConfig(device="cpu")) == ("float32", "bfloat16")  # never an fp32 UMT5-XXL by default
    assert dtypes(EncodeConfig(device="cuda")) == ("bfloat16", "bfloat16")
    assert dtypes(EncodeConfig(device="cpu", compute_dtype="float16")) == ("float16", "float16")
    apart = EncodeConfig(
        device="cpu", compute_dtype="float16", vae_dtype="bfloat16", text_encoder_dtype="float32"
    )
    assert dtypes(apart) == ("bfloat16", "float32")

    loaded: list[Any] = []
    real = models.load_text_encoder

    def load_text_encoder(*args: Any, **kwargs: Any) -> Any:
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(models, "load_text_encoder", load_text_encoder)
    encoder = BatchEncoder(tiny_config(tiny_model_dir))
    assert not loaded  # loaded on the first caption, not with the VAE
    encoder.encode_texts(["a suture"])
    assert {p.dtype for p in encoder.vae.parameters()} == {torch.float32}
    assert {p.dtype for p in loaded[0][0].parameters()} == {torch.bfloat16}

    calls: list[dict] = []

    def record(*_: Any, **kw: Any) -> list[Any]:
        calls.append(kw)
        return []

    monkeypatch.setattr(cli, "encode_latents", record)
    base = ["encode-latents", str(tmp_path / "src"), "--out", str(tmp_path / "c")]
    for extra in (["--dtype", "float16"], ["--vae-dtype", "bfloat16", "--text-encoder-dtype", "float32"]):
        res = CliRunner().invoke(main, [*base, *extra])
        assert res.exit_code == 0, res.output
    assert dtypes(calls[0]["config"]) == ("float16", "float16")
    assert dtypes(calls[1]["config"]) == ("bfloat16", "float32")
    res = CliRunner().invoke(main, [*base, "--text-encoder-dtype", "fp32"])
    assert res.exit_code != 0 and "'fp32' is not one of" in res.output


def test_the_manifest_records_the_text_encoder_dtype_apart_only_when_it_differs(
    dataset, reference: Path, tiny_model_dir: Path
) -> None:
    """Caches made when one dtype ran both models keep their fingerprint; a text encoder dtype that differs
    is part of what the bytes mean, so resuming with another one is refused by name."""
    import hashlib

    from medvideocap.latents.encode import build_manifest
    from medvideocap.latents.format import FINGERPRINT_KEYS, canonical_json, fingerprint, read_manifest
    from medvideocap.tiny import tiny_vae

    vae = tiny_vae()
    one = build_manifest(tiny_config(tiny_model_dir, compute_dtype="bfloat16"), vae)
    assert "text_encoder_dtype" not in one
    before = hashlib.sha256(canonical_json({k: one[k] for k in FINGERPRINT_KEYS}).encode()).hexdigest()
    assert fingerprint(one) == before
    manifest = read_manifest(reference)  # the CPU defaults: VAE in float32, UMT5 in bfloat16
    assert (manifest["compute_dtype"], manifest["text_encoder_dtype"]) == ("float32", "bfloat16")
    both_fp32 = build_manifest(tiny_config(tiny_model_dir, compute_dtype="float32"), vae)
    assert fingerprint(both_fp32) != manifest["fingerprint"]
    with pytest.raises(FingerprintMismatchError, match="text_encoder_dtype"):
        encode_latents(
            dataset[0], reference, config=tiny_config(tiny_model_dir, text_encoder_dtype="float32")
        )


def test_the_cache_stores_the_empty_prompts_embedding_for_caption_dropout(
    reference: Path, tiny_model_dir: Path
) -> None:
    import numpy as np

    from medvideocap import models
    from medvideocap.latents.format import LatentCacheError, read_empty_prompt, read_manifest

    manifest = read_manifest(reference)
    stored = read_empty_prompt(reference, manifest["fingerprint"])
    encoder, tokenizer = models.load_text_encoder(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    (expected,) = models.encode_prompts(
        encoder, tokenizer, [""], max_length=manifest["max_length"], device="cpu"
    )
    assert stored is not None and stored.shape == (1, encoder.config.d_model)  # "" is one token: </s>
    np.testing.assert_array_equal(stored, expected.numpy())
    with pytest.raises(LatentCacheError, match="fingerprint"):
        read_empty_prompt(reference, "0" * 64)


def test_a_rerun_with_nothing_left_loads_no_text_encoder_and_an_older_cache_gains_the_empty_prompt(
    dataset, reference: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    import medvideocap.latents.encode as enc
    from medvideocap.latents.format import EMPTY_PROMPT_NAME, META_DIR, read_empty_prompt, read_manifest

    out = tmp_path / "cache"
    shutil.copytree(reference, out)
    loads: list[int] = []
    real = enc.load_text_encoder

    def counted(config: Any) -> Any:
        loads.append(1)
        return real(config)

    monkeypatch.setattr(enc, "load_text_encoder", counted)
    (report,) = encode_latents(dataset[0], out, config=tiny_config(tiny_model_dir))
    assert (report.encoded, report.skipped_done, loads) == (0, len(dataset[1]), [])
    (out / META_DIR / EMPTY_PROMPT_NAME).unlink()  # as a cache made before "" was stored
    (report,) = encode_latents(dataset[0], out, config=tiny_config(tiny_model_dir))
    assert (report.encoded, loads) == (0, [1])
    fp = read_manifest(out)["fingerprint"]
    np.testing.assert_array_equal(read_empty_prompt(out, fp), read_empty_prompt(reference, fp))


def test_a_second_encode_of_one_split_and_rank_is_refused_and_the_other_ranks_are_not(
    dataset, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock is per split and rank (medvideocap.lock): while this process holds train/rank 0 of a
    cache, rank 1 of the same job encodes its share, and a second rank 0 stops before any model loads,
    naming the holder."""
    from click.testing import CliRunner

    from medvideocap.cli import main
    from medvideocap.lock import lock_name, output_lock

    root, ids = dataset
    out = tmp_path / "cache"
    with output_lock(out, verb="encode-latents", name=lock_name("train", "rank0")) as lock:
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("WORLD_SIZE", "2")
        (report,) = encode_latents(root, out, config=tiny_config(tiny_model_dir))
        assert report.encoded == sum(rank_of(c, 2) == 1 for c in ids) > 0
        monkeypatch.setenv("RANK", "0")
        args = [
            "encode-latents",
            str(root),
            "--out",
            str(out),
            "--vae",
            str(tiny_model_dir),
            "--device",
            "cpu",
        ]
        done = CliRunner().invoke(main, args)
        assert done.exit_code == 1, done.output
        said = done.output
        assert said.startswith(
            f"Error: {out} is in use by `medvideocap encode-latents` (pid {os.getpid()} on "
        )
        assert f"which holds {lock}; wait for it to finish" in said and said.count("\n") == 1, said
    assert not list((out / "train").glob("rank-0-*")) and not list(out.glob(".medvideocap*"))


def test_shards_are_also_written_by_time_so_a_slow_run_keeps_its_work(
    dataset, reference: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """flush_seconds=0: every clip is written as soon as it is encoded, although a shard holds 64."""
    out = tmp_path / "cache"
    (report,) = encode_latents(
        dataset[0], out, config=tiny_config(tiny_model_dir, rows_per_shard=64, flush_seconds=0)
    )
    assert report.encoded == 6 and len(report.shards) == 6
    _same_rows(_rows(out), _rows(reference))


def test_a_shard_waits_at_most_flush_seconds_by_the_writers_clock(tmp_path: Path) -> None:
    from fixtures_latents import write_random_cache

    from medvideocap.latents import ShardWriter, shard_files

    source = write_random_cache(tmp_path / "rows", [(4, 2, 4, 6)] * 5, rows_per_shard=5)
    rows = pq.read_table(shard_files(source, "train")[0]).to_pylist()
    now = [0.0]
    writer = ShardWriter(
        tmp_path / "out", "train", 0, rows_per_shard=64, flush_seconds=300, clock=lambda: now[0]
    )
    writer.add(rows[0])  # the oldest row: t=0
    now[0] = 299.0
    writer.add(rows[1])
    assert writer.written == []  # 299 s: not yet
    now[0] = 300.0
    writer.add(rows[2])  # the oldest has waited 300 s: all three go now
    assert [len(pq.read_table(p)) for p in writer.written] == [3]
    now[0] = 301.0
    writer.add(rows[3])  # the clock restarts with the next row
    now[0] = 600.0
    writer.add(rows[4])
    assert len(writer.written) == 1 and writer.due() is False
    writer.flush()
    assert [len(pq.read_table(p)) for p in writer.written] == [3, 2]


def test_progress_lines_keep_coming_while_a_slow_clip_has_not_arrived(
    dataset, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A clip that takes minutes (here: one that arrives only once the log has shown the job alive)
    must not leave the log silent: the heartbeat prints from its own thread."""
    import io
    import threading

    from medvideocap.latents.encode import encode_items
    from medvideocap.loading.loader import load
    from medvideocap.progress import Progress

    root, ids = dataset
    pixels: Any = load(root, "train", frames=SPEC, shuffle=False)
    log = io.StringIO()
    alive = threading.Event()

    class Log(io.StringIO):
        def write(self, text: str) -> int:
            n = log.write(text)
            if log.getvalue().count("encode-latents train rank 0/1: 1/2 clips") >= 2:
                alive.set()  # a second line about the first clip: printed while the second was pending
            return n

    def slow_items() -> Any:
        yield pixels[0]
        assert alive.wait(timeout=120), log.getvalue()  # generous: a line is due every 0.05 s
        yield pixels[1]

    with Progress(stream=Log(), interval=0.05) as progress:
        task = progress.task("encode-latents train rank 0/1", 2, unit="clip", failed="dropped")
        report = encode_items(
            slow_items(),
            tmp_path / "cache",
            "train",
            BatchEncoder(tiny_config(tiny_model_dir)),
            on_rows=lambda n: progress.advance(task, done=n),
        )
    assert report.encoded == 2
    assert log.getvalue().splitlines()[-1].startswith("encode-latents train rank 0/1: 2/2 clips, ")
