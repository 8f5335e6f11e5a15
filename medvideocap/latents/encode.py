"""Pre-encode clips into a latent cache: Wan2.1 VAE latents + UMT5 prompt embeddings per clip.

Training on pixels re-runs the VAE and the 5B-parameter text encoder every step; a cache pays that
once. What makes this cache trustworthy (see ``medvideocap/latents/__init__.py`` for the format):

* resume is keyed by clip id: finished shards are read back for their ids, so a rerun after a kill
  encodes only what is missing and never writes an id twice; the last, partial shard is written at the end;
* ranks (``RANK``/``WORLD_SIZE`` from torchrun or accelerate) take disjoint subsets of ids by a stable
  hash and write their own ``rank-R-*`` files, so no merge step is needed and a different number of ranks
  on a rerun still never encodes an id twice (finished ids are skipped whoever wrote them);
* ``encode_batch`` is one plain per-batch function: the in-process engine and Ray Data call the same one.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medvideocap import models
from medvideocap.defaults import WAN_T2V_1_3B, WAN_TEXT_TOKENS
from medvideocap.devices import resolve_device
from medvideocap.disk import writing_to
from medvideocap.dist import env_rank_world, ray_session
from medvideocap.errors import DataError
from medvideocap.hashing import hash64
from medvideocap.latents.dropped import DroppedLog, finished_ids
from medvideocap.latents.format import (
    FLUSH_SECONDS,
    FORMAT,
    FORMAT_VERSION,
    CacheRoot,
    ShardWriter,
    array_bytes,
    cache_location,
    check_reachable,
    nonfinite_summary,
    read_empty_prompt,
    write_empty_prompt,
    write_manifest,
)
from medvideocap.locations import Location
from medvideocap.lock import lock_name, output_lock
from medvideocap.progress import Progress, Task

if TYPE_CHECKING:
    import torch

    from medvideocap.loading.loader import ClipDataset
    from medvideocap.media.frames import FrameSpec

log = logging.getLogger(__name__)

DEFAULT_MODEL = WAN_T2V_1_3B
#: Why float32 is the default storage dtype; the CLI help says it and a float16 run warns with it.
STORAGE_DTYPE_NOTE = (
    "FastVideo's parquet datasets decode latent and text bytes as float32 whatever the *_dtype column says, "
    "so they cannot read a float16 cache (medvideocap.load_latents reads both); keep float32 for a cache "
    "other tools read"
)


class StorageDtypeWarning(UserWarning):
    """A cache is being written in a dtype some of the field's readers misread (see STORAGE_DTYPE_NOTE)."""


@dataclass
class EncodeConfig:
    """Everything that decides what the cached bytes mean (it becomes the manifest) plus how to run.

    ``storage_dtype`` stays float32 unless only medvideocap reads the cache: FastVideo's parquet
    datasets decode the bytes as float32 whatever ``*_dtype`` says (``STORAGE_DTYPE_NOTE``)."""

    vae: str = DEFAULT_MODEL
    vae_subfolder: str | None = "vae"
    vae_revision: str | None = None
    text_encoder: str | None = None  # None: the same repo/folder as the VAE (Wan layout)
    text_encoder_subfolder: str | None = "text_encoder"
    tokenizer_subfolder: str | None = "tokenizer"
    text_encoder_revision: str | None = None
    max_length: int = WAN_TEXT_TOKENS
    store: Literal["moments", "sample"] = "moments"
    caption: str = "detailed"
    # float16 halves the cache but FastVideo's parquet readers decode every *_bytes column as float32
    # whatever *_dtype says, so they misread it (medvideocap.load_latents reads both): see STORAGE_DTYPE_NOTE
    storage_dtype: Literal["float32", "float16"] = "float32"
    sample_seed: int = 0
    # how to run (not part of the fingerprint)
    device: str | None = None
    # --dtype sets both; None: the VAE in bfloat16 on CUDA, float32 on CPU, the text encoder in bfloat16
    compute_dtype: str | None = None
    vae_dtype: str | None = None  # None: compute_dtype's rule
    text_encoder_dtype: str | None = None  # None: compute_dtype's rule (models.TEXT_ENCODER_DTYPE)
    batch_size: int = 1
    tiling: bool = False
    slicing: bool = False
    rows_per_shard: int = 64
    # a shard is also written once its oldest row has waited this long (durable progress at real sizes)
    flush_seconds: float = FLUSH_SECONDS
    backend: str = "torchcodec"  # video decoder used by medvideocap.load
    num_workers: int = 2  # DataLoader processes decoding clips ahead of the encoder (0: decode inline)
    ray_concurrency: int = 1  # engine="ray": encoder actors (one GPU each)
    frames: Any = None  # FrameSpec; None: the default spec with a deterministic (centre) window
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_device(self) -> str:
        return resolve_device(self.device)

    def resolved_vae_dtype(self) -> str:
        return self.vae_dtype or self.compute_dtype or models.default_compute_dtype(self.resolved_device())

    def resolved_text_encoder_dtype(self) -> str:
        """bfloat16 unless asked otherwise, on the CPU too: UMT5-XXL in fp32 is 22.7 GB."""
        return self.text_encoder_dtype or self.compute_dtype or models.TEXT_ENCODER_DTYPE

    def frame_spec(self) -> FrameSpec:
        from medvideocap.media.frames import FrameSpec

        return self.frames if self.frames is not None else FrameSpec(position="center")


# ----------------------------------------------------------------------------------------------------
# models (loaded by medvideocap.models; these read the arguments from an EncodeConfig)


def load_vae(config: EncodeConfig) -> Any:
    """:func:`medvideocap.models.load_vae` with the VAE, device and dtype ``config`` names."""
    return models.load_vae(
        config.vae,
        subfolder=config.vae_subfolder,
        revision=config.vae_revision,
        dtype=config.resolved_vae_dtype(),
        device=config.resolved_device(),
        tiling=config.tiling,
        slicing=config.slicing,
    )


def load_text_encoder(config: EncodeConfig) -> tuple[Any, Any]:
    """:func:`medvideocap.models.load_text_encoder` from ``config``'s text-encoder repo (default: the VAE's)."""
    return models.load_text_encoder(
        config.text_encoder or config.vae,
        subfolder=config.text_encoder_subfolder,
        tokenizer_subfolder=config.tokenizer_subfolder,
        revision=config.text_encoder_revision,
        dtype=config.resolved_text_encoder_dtype(),
        device=config.resolved_device(),
    )


def build_manifest(config: EncodeConfig, vae: Any) -> dict[str, Any]:
    """What the cache bytes mean. Every writer builds one, so this is where a float16 cache is warned of."""
    if config.storage_dtype != "float32":
        warnings.warn(
            f"storage dtype {config.storage_dtype}: {STORAGE_DTYPE_NOTE}", StorageDtypeWarning, stacklevel=2
        )
    mean, std = models.vae_normalization(vae)
    spec = config.frame_spec()
    frame_spec = dataclasses.asdict(spec)
    if frame_spec.get("buckets") is not None:
        frame_spec["buckets"] = [list(b) for b in frame_spec["buckets"]]
    text_name = config.text_encoder or config.vae
    vae_dtype, text_dtype = config.resolved_vae_dtype(), config.resolved_text_encoder_dtype()
    # Recorded apart only when it differs, so caches made when one dtype ran both keep their fingerprint.
    text_dtype_key = {"text_encoder_dtype": text_dtype} if text_dtype != vae_dtype else {}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vae_id": config.vae,
        "vae_subfolder": config.vae_subfolder,
        "vae_revision": models.revision_of(config.vae, config.vae_subfolder, config.vae_revision),
        "vae_class": type(vae).__name__,
        "latents_mean": mean,
        "latents_std": std,
        "normalization": "none: stored latents are raw VAE output; train on (z - latents_mean) / latents_std",
        "store": config.store,
        "frame_spec": frame_spec,
        "text_encoder_id": text_name,
        "text_encoder_subfolder": config.text_encoder_subfolder,
        "text_encoder_revision": models.revision_of(
            text_name, config.text_encoder_subfolder, config.text_encoder_revision
        ),
        "tokenizer_subfolder": config.tokenizer_subfolder,
        "max_length": config.max_length,
        "caption": config.caption,
        "compute_dtype": vae_dtype,  # the VAE's; the text encoder's too unless text_encoder_dtype says
        **text_dtype_key,
        "storage_dtype": config.storage_dtype,
        "sample_seed": config.sample_seed,
        "text_padding": "unpadded: text_embedding holds the first text_len rows of the max_length encoding",
        "created_with": "medvideocap encode-latents",
    }


# ----------------------------------------------------------------------------------------------------
# the per-batch function


class BatchEncoder:
    """Holds the models; ``encode_batch`` turns items of one frame shape into cache rows.

    The text encoder loads on the first caption it embeds, so a rerun with nothing left to encode never
    loads its 11 GB. It then stays beside the VAE: both run on every batch, and freeing it before the VAE
    would need captions embedded in a pass of their own (their embeddings spilled to disk)."""

    def __init__(
        self, config: EncodeConfig, *, vae: Any = None, text_encoder: Any = None, tokenizer: Any = None
    ):
        self.config = config
        self.device = config.resolved_device()
        self.dtype = models.torch_dtype(config.resolved_vae_dtype())
        self.vae = vae if vae is not None else load_vae(config)
        self._text: tuple[Any, Any] | None = None
        if text_encoder is not None and tokenizer is not None:
            self._text = (text_encoder, tokenizer)
        self.manifest = build_manifest(config, self.vae)
        self.fingerprint = ""  # set by the caller once the manifest is written

    def encode_videos(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, T, H, W) in [-1, 1] -> posterior (mean, logvar), float32 on the CPU."""
        import torch

        with torch.inference_mode():
            dist = self.vae.encode(videos.to(self.device, self.dtype)).latent_dist
            return dist.mean.float().cpu(), dist.logvar.float().cpu()

    def encode_texts(self, texts: list[str]) -> list[torch.Tensor]:
        """Unpadded (L_i, D) float32 embeddings on the CPU (:func:`medvideocap.models.encode_prompts`)."""
        if self._text is None:
            self._text = load_text_encoder(self.config)
        text_encoder, tokenizer = self._text
        embeds = models.encode_prompts(
            text_encoder, tokenizer, texts, max_length=self.config.max_length, device=self.device
        )
        return [e.cpu() for e in embeds]

    def encode_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Items as ``medvideocap.load`` yields them (same frame shape) -> rows of the cache schema."""
        import torch

        from medvideocap.loading.sampler import stable_seed  # imports torch: not needed to read a config

        videos = torch.stack([it["video"] for it in items])
        mean, logvar = self.encode_videos(videos)
        logvar = logvar.clamp(*models.LOGVAR_RANGE)
        texts = self.encode_texts([it["caption"] for it in items])
        sdt = np.dtype(self.config.storage_dtype)
        rows = []
        for b, it in enumerate(items):
            if self.config.store == "sample":
                g = torch.Generator().manual_seed(stable_seed(self.config.sample_seed, it["id"]))
                lat, lv = models.sample_posterior(mean[b], logvar[b], generator=g), None
            else:
                lat, lv = mean[b], logvar[b]
            stored = {"vae_latent": lat.numpy().astype(sdt), "text_embedding": texts[b].numpy().astype(sdt)}
            if lv is not None:
                stored["vae_logvar"] = lv.numpy().astype(sdt)
            # Checked as stored (float16 turns values past 65504 into inf): a NaN row would train every
            # later step on `loss nan`, so the clip is dropped with the reason instead (see encode_items).
            if (bad := nonfinite_summary(stored)) is not None:
                rows.append({"id": it["id"], "__error__": _nonfinite_reason(bad, sdt), "__stage__": "encode"})
                continue
            latent_bytes, latent_shape, latent_dtype = array_bytes(stored["vae_latent"])
            text_bytes, text_shape, text_dtype = array_bytes(stored["text_embedding"])
            mask_bytes, mask_shape, mask_dtype = array_bytes(np.ones(text_shape[0], dtype=np.bool_))
            rec = it.get("record")
            ts = it.get("timestamps")
            ts_list = [float(t) for t in ts.tolist()] if ts is not None else None
            _, _, t, h, w = videos.shape
            row = {
                "id": it["id"],
                "vae_latent_bytes": latent_bytes,
                "vae_latent_shape": latent_shape,
                "vae_latent_dtype": latent_dtype,
                "text_embedding_bytes": text_bytes,
                "text_embedding_shape": text_shape,
                "text_embedding_dtype": text_dtype,
                "text_attention_mask_bytes": mask_bytes,
                "text_attention_mask_shape": mask_shape,
                "text_attention_mask_dtype": mask_dtype,
                "file_name": getattr(rec, "file_name", None) or f"{it['id']}.mp4",
                "caption": it["caption"],
                "media_type": "video",
                "width": int(w),
                "height": int(h),
                "num_frames": int(t),
                "duration_sec": (t / fps) if (fps := _sampled_fps(ts_list)) else None,
                "fps": fps,
                "split": getattr(rec, "split", None),  # the encode loop sets the split it read
                "latent_kind": self.config.store,
                "vae_logvar_bytes": None,
                "vae_logvar_shape": None,
                "vae_logvar_dtype": None,
                "text_len": int(text_shape[0]),
                "frame_timestamps": ts_list,
                "source_duration_sec": float(rec.duration) if rec is not None else None,
                "fingerprint": self.fingerprint,
            }
            if lv is not None:
                lv_bytes, lv_shape, lv_dtype = array_bytes(stored["vae_logvar"])
                row.update(vae_logvar_bytes=lv_bytes, vae_logvar_shape=lv_shape, vae_logvar_dtype=lv_dtype)
            rows.append(row)
        return rows


def _nonfinite_reason(summary: str, storage: np.dtype) -> str:
    """The drop reason of a clip that encoded to NaN/inf, with the likely cause when it is the storage."""
    hint = f" (stored as {storage.name}: values past its range become inf; store float32)"
    return f"non-finite values after encoding: {summary}" + (hint if storage.itemsize < 4 else "")


def _sampled_fps(ts: list[float] | None) -> float | None:
    if not ts or len(ts) < 2 or ts[-1] <= ts[0]:
        return None
    return round((len(ts) - 1) / (ts[-1] - ts[0]), 6)


# ----------------------------------------------------------------------------------------------------
# work split, resume, engines


def rank_of(clip_id: str, world_size: int) -> int:
    """The rank that owns a clip: a stable hash, the same in every process, run and Python version."""
    return hash64(clip_id) % world_size


def _by_shape(items: Iterable[dict[str, Any]], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Batches of items whose videos share a shape (a VAE forward takes one shape), the last partial
    ones included: :func:`medvideocap.loading.sampler.bucket_by_shape` on the video tensor's shape."""
    from medvideocap.loading.sampler import bucket_by_shape  # imports torch: not needed to read a config

    return bucket_by_shape(items, batch_size, lambda it: tuple(it["video"].shape))


def _progress_bar(console: Any = None) -> Progress:
    """The run's progress (:class:`~medvideocap.progress.Progress`) on stderr, so stdout keeps only the
    JSON summary: rich's bar on a terminal, a line per split and rank at least every 30 s in a log."""
    return Progress(console=console)


class _RankProgress:
    """One split's task for this rank: clips finished (encoded or dropped) of this run's share, their
    rate, the drops so far and the ETA. Without a bar it only counts."""

    def __init__(self, bar: Progress | None, split: str, rank: int, world_size: int, total: int):
        self.bar, self.done, self.dropped = bar, 0, 0
        label = f"encode-latents {split} rank {rank}/{world_size}"
        self.task: Task | None = (
            bar.task(label, total, unit="clip", failed="dropped") if bar is not None else None
        )

    def rows(self, n: int) -> None:
        self.advance(encoded=n)

    def drops(self, n: int) -> None:
        self.advance(dropped=n)

    def advance(self, *, encoded: int = 0, dropped: int = 0) -> None:
        self.done += encoded + dropped
        self.dropped += dropped
        if self.bar is not None and self.task is not None:
            self.bar.advance(self.task, done=encoded + dropped, failed=dropped)

    def finish(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.finish(self.task)


@dataclass
class EncodeReport:
    """What a run did, for the CLI and for tests."""

    split: str
    rank: int
    world_size: int
    assigned: int = 0
    skipped_done: int = 0
    encoded: int = 0
    dropped: int = 0
    shards: list[str] = field(default_factory=list)
    fingerprint: str = ""


def encode_items(
    items: Iterable[dict[str, Any]],
    out: CacheRoot,
    split: str,
    encoder: BatchEncoder,
    *,
    rank: int = 0,
    world_size: int = 1,
    done: set[str] | None = None,
    on_rows: Callable[[int], None] | None = None,
    dropped: DroppedLog | None = None,
    on_dropped: Callable[[int], None] | None = None,
) -> EncodeReport:
    """The core loop over already-loaded items (the in-process engine): skip finished ids, keep this
    rank's ids, batch by shape, encode, write shards. Items are dicts with ``video`` (C, T, H, W) in
    [-1, 1], ``caption``, ``id`` and optionally ``timestamps`` and ``record``. ``on_rows(n)`` is called
    after each encoded batch (progress), ``on_dropped(n)`` after clips of it were dropped. A clip that
    encodes to NaN/inf is recorded in ``dropped`` (this rank's drop log unless given) and never written.
    ``out`` is a local folder or an object-store location (:func:`~medvideocap.latents.format.cache_location`)."""
    out = cache_location(out, write=True)
    manifest = write_manifest(out, encoder.manifest)
    encoder.fingerprint = manifest["fingerprint"]
    if read_empty_prompt(out, encoder.fingerprint) is None:  # what a trainer's caption dropout feeds
        write_empty_prompt(out, encoder.encode_texts([""])[0].numpy(), encoder.fingerprint)
    report = EncodeReport(split=split, rank=rank, world_size=world_size, fingerprint=encoder.fingerprint)
    done = finished_ids(out, split) if done is None else done
    writer = ShardWriter(
        out,
        split,
        rank,
        rows_per_shard=encoder.config.rows_per_shard,
        flush_seconds=encoder.config.flush_seconds,
    )

    def todo() -> Iterator[dict[str, Any]]:
        for it in items:
            if rank_of(it["id"], world_size) != rank:
                continue
            report.assigned += 1
            if it["id"] in done:
                report.skipped_done += 1
                continue
            done.add(it["id"])
            yield it

    for batch in _by_shape(todo(), encoder.config.batch_size):
        rows = encoder.encode_batch(batch)
        rejected = [row for row in rows if "__error__" in row]
        for row in rejected:
            dropped = dropped if dropped is not None else DroppedLog(out, split, rank)
            dropped.add(row["id"], row["__stage__"], row["__error__"])
            report.dropped += 1
        rows = [row for row in rows if "__error__" not in row]
        for row in rows:
            row["split"] = split
            writer.add(row)
            report.encoded += 1
        if on_rows is not None:
            on_rows(len(rows))
        if rejected and on_dropped is not None:
            on_dropped(len(rejected))
    writer.flush()
    report.shards += [str(p) for p in writer.written]
    return report


def _source_dataset(source: str | Path, split: str, config: EncodeConfig) -> ClipDataset:
    """The pixel dataset of ``split`` over the source's :class:`~medvideocap.dataset.source.ClipSource`,
    strict: a clip with bad data raises its :class:`~medvideocap.errors.DataError`, which
    :class:`_Guarded` records as dropped; any other exception is a bug and stops the run."""
    from medvideocap.dataset.source import open_source
    from medvideocap.loading.loader import ClipDataset, load

    dataset = load(
        open_source(source, split),
        split,
        frames=config.frame_spec(),
        caption=config.caption,
        output="float",
        backend=config.backend,
        shuffle=False,
        on_error="raise",
    )
    assert isinstance(dataset, ClipDataset)  # map-style: load() without streaming
    return dataset


class _Guarded:
    """Map-style view of the wanted clips that never raises for bad data: a
    :class:`~medvideocap.errors.DataError` becomes ``{"id", "error"}`` (computed in the worker that saw
    it), so DataLoader workers can decode ahead of the GPU and one bad clip is recorded instead of
    killing the run. Any other exception is a bug: it propagates (from a worker, with its traceback)
    and stops the run instead of dropping every clip."""

    def __init__(self, dataset: ClipDataset, indices: list[int], ids: list[str]):
        self.dataset, self.indices, self.ids = dataset, indices, ids

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        clip_id = self.ids[self.indices[k]]
        try:
            item = self.dataset[self.indices[k]]
        except DataError as exc:  # one bad clip must not stop a day-long job; a bug must
            return {"id": clip_id, "error": f"{type(exc).__name__}: {exc}"}
        if item is None:  # too short for the frame spec (FrameSpec.short="skip"), counted by the loader
            skipped = self.dataset.stats.skipped_ids
            return {"id": clip_id, "error": skipped[-1][1] if skipped else "the loader skipped the clip"}
        return item


def _iter_source(
    dataset: Any,
    ids: list[str],
    wanted: set[str],
    dropped: DroppedLog,
    num_workers: int,
    progress: _RankProgress,
) -> Iterator[dict[str, Any]]:
    """Decode only the clips this rank still needs, in id order, ``num_workers`` processes ahead."""
    from torch.utils.data import DataLoader

    guarded = _Guarded(dataset, [i for i, cid in enumerate(ids) if cid in wanted], ids)
    loader: DataLoader[dict[str, Any]] = DataLoader(
        guarded,  # type: ignore[arg-type]
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        prefetch_factor=2 if num_workers else None,
    )
    for item in loader:
        if "error" in item:
            dropped.add(item["id"], "load", item["error"])
            progress.advance(dropped=1)
            continue
        yield item


def encode_latents(
    source: str | Path,
    out: CacheRoot,
    *,
    splits: Iterable[str] = ("train",),
    config: EncodeConfig | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    engine: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    limit: int | None = None,
    progress: bool | Progress = False,
    console: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> list[EncodeReport]:
    """Encode every clip of ``splits`` of any source ``medvideocap.load`` reads into a cache at ``out``.

    Safe to rerun: finished ids are skipped. Run it under torchrun/accelerate for several GPUs (each
    rank takes its hash share of the ids), or with ``engine="ray"`` to spread batches over a Ray cluster
    (``ray_address``, else ``$RAY_ADDRESS``, else a local one).
    ``progress`` shows a task per split and rank (clips, rate, dropped so far, ETA) on ``console``
    (default: stderr): rich's bar on a terminal, else a line at least every 30 s, also while one clip is
    still encoding (a 55K-clip encode runs for days); a :class:`~medvideocap.progress.Progress` given
    here is used as it is.

    ``out`` is a local folder or an object-store URL (``s3://bucket/latents``; ``storage_options`` reach
    its filesystem, else the backend's environment does): shards are published whole through temporary
    keys, resume works the same, and a missing bucket or refused credentials stop the run before any
    model loads with one :class:`~medvideocap.latents.format.CacheStorageError` naming the URL. Rows
    are written at least every ``config.flush_seconds`` as well as every ``config.rows_per_shard``.

    Each (split, rank) this run encodes is locked in ``out`` first (:func:`medvideocap.lock.output_lock`,
    one lock file per split and rank, so the ranks of one job never block each other): a second run
    on the same split and rank stops before loading a model with
    :class:`~medvideocap.lock.LockedError` naming the first. A full disk, a used-up quota or a
    read-only ``out`` stops the run with a :class:`~medvideocap.disk.ResourceError`; the rerun
    resumes.
    """
    config = config or EncodeConfig()
    rank, world_size = env_rank_world(rank, world_size)
    location = cache_location(out, storage_options=storage_options, write=True)
    splits = list(splits)
    with ExitStack() as held:
        for split in splits:
            lock = lock_name(split, f"rank{rank}")
            held.enter_context(output_lock(location, verb="encode-latents", name=lock))
        check_reachable(location)
        if location.local is not None:  # names the cache for a full disk no writer below named
            held.enter_context(writing_to(location.local))
        encoder = BatchEncoder(config) if engine == "local" else None
        bar = progress if isinstance(progress, Progress) else _progress_bar(console) if progress else None
        if bar is not None:
            bar.start()
        try:
            return _encode_splits(
                source, location, splits, config, rank, world_size, engine, limit, encoder, bar, ray_address
            )
        finally:
            if bar is not None:
                bar.stop()


def _encode_splits(
    source: str | Path,
    out: Location,
    splits: Iterable[str],
    config: EncodeConfig,
    rank: int,
    world_size: int,
    engine: str,
    limit: int | None,
    encoder: BatchEncoder | None,
    bar: Any,
    ray_address: str | None,
) -> list[EncodeReport]:
    reports = []
    for split in splits:
        dataset = _source_dataset(source, split, config)
        ids = dataset.ids
        if limit is not None:
            ids = ids[:limit]
        if engine == "ray":
            reports.append(
                _encode_with_ray(source, ids, out, split, config, rank, world_size, bar, ray_address)
            )
            continue
        assert encoder is not None
        manifest = write_manifest(out, encoder.manifest)
        encoder.fingerprint = manifest["fingerprint"]
        done = finished_ids(out, split)
        dropped = DroppedLog(out, split, rank)
        report = EncodeReport(split=split, rank=rank, world_size=world_size)
        mine = [cid for cid in ids if rank_of(cid, world_size) == rank]
        report.assigned = len(mine)
        report.skipped_done = sum(cid in done for cid in mine)
        before = len(dropped.rows)
        wanted = {cid for cid in mine if cid not in done}
        ticker = _RankProgress(bar, split, rank, world_size, len(wanted))
        items = _iter_source(dataset, ids, wanted, dropped, config.num_workers, ticker)
        inner = encode_items(
            items,
            out,
            split,
            encoder,
            rank=rank,
            world_size=world_size,
            done=done,
            on_rows=ticker.rows,
            dropped=dropped,
            on_dropped=ticker.drops,
        )
        report.encoded = inner.encoded
        report.shards = inner.shards
        report.fingerprint = inner.fingerprint
        report.dropped = len(dropped.rows) - before
        ticker.finish()
        log.info(
            "%s rank %d/%d: %d assigned, %d already done, %d encoded, %d dropped",
            split,
            rank,
            world_size,
            report.assigned,
            report.skipped_done,
            report.encoded,
            report.dropped,
        )
        reports.append(report)
    return reports


class _RayEncodeFn:
    """A Ray Data actor: loads models and the pixel dataset once, then runs ``encode_batch``."""

    def __init__(self, source: str, split: str, config: EncodeConfig, fingerprint: str):
        self.dataset = _source_dataset(source, split, config)
        self.ids = self.dataset.ids
        self.encoder = BatchEncoder(config)
        self.encoder.fingerprint = fingerprint

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        items = []
        guarded = _Guarded(self.dataset, [int(i) for i in batch["index"]], self.ids)
        for k in range(len(guarded)):
            item = guarded[k]  # a DataError is recorded as dropped by the driver; a bug stops the run
            if "error" in item:
                failed.append(item)
            else:
                items.append(item)
        for group in _by_shape(items, max(1, len(items))):
            rows.extend(self.encoder.encode_batch(group))
        for f in failed:
            rows.append({"id": f["id"], "__error__": f["error"]})
        names = {k for r in rows for k in r}
        return {k: [r.get(k) for r in rows] for k in sorted(names)}


def _encode_with_ray(
    source: str | Path,
    ids: list[str],
    out: Location,
    split: str,
    config: EncodeConfig,
    rank: int,
    world_size: int,
    bar: Progress | None = None,
    ray_address: str | None = None,
) -> EncodeReport:
    """Same ids, resume and shard files as the local engine; Ray actors do the encoding, this driver
    (one rank) writes the shards, so the cache looks the same whichever engine made it. Ray is joined at
    ``ray_address`` (else ``$RAY_ADDRESS``) or started locally by :func:`medvideocap.dist.ray_session`."""
    # The manifest needs the VAE config (normalisation) before any actor starts: read it on the CPU.
    vae = load_vae(dataclasses.replace(config, device="cpu", vae_dtype="float32"))
    actor_config = dataclasses.replace(
        config,
        device=config.resolved_device(),
        vae_dtype=config.resolved_vae_dtype(),
        text_encoder_dtype=config.resolved_text_encoder_dtype(),
    )
    manifest = write_manifest(out, build_manifest(actor_config, vae))
    del vae
    done = finished_ids(out, split)
    dropped = DroppedLog(out, split, rank)
    report = EncodeReport(split=split, rank=rank, world_size=world_size, fingerprint=manifest["fingerprint"])
    todo = []
    for i, cid in enumerate(ids):
        if rank_of(cid, world_size) != rank:
            continue
        report.assigned += 1
        if cid in done:
            report.skipped_done += 1
        else:
            todo.append({"index": i, "id": cid})
    if not todo:
        return report
    ticker = _RankProgress(bar, split, rank, world_size, len(todo))
    with ray_session(ray_address) as ray:
        ds = ray.data.from_items(todo).map_batches(
            _RayEncodeFn,
            fn_constructor_kwargs={
                "source": str(source),
                "split": split,
                "config": actor_config,
                "fingerprint": manifest["fingerprint"],
            },
            batch_size=config.batch_size,
            batch_format="default",
            num_gpus=1 if actor_config.resolved_device().startswith("cuda") else 0,
            concurrency=int(config.extra.get("ray_concurrency", config.ray_concurrency)),
        )
        writer = ShardWriter(
            out, split, rank, rows_per_shard=config.rows_per_shard, flush_seconds=config.flush_seconds
        )
        for row in ds.iter_rows():
            row = dict(row)
            error, stage = row.pop("__error__", None), row.pop("__stage__", None)
            if error:
                dropped.add(row["id"], stage or "load", error)
                report.dropped += 1
                ticker.advance(dropped=1)
                continue
            row["split"] = split
            for k, v in list(row.items()):
                if isinstance(v, np.ndarray):
                    row[k] = v.tolist()
            writer.add(row)
            report.encoded += 1
            ticker.advance(encoded=1)
        writer.flush()
        report.shards = [str(p) for p in writer.written]
    ticker.finish()
    return report
