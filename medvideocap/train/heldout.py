"""Held-out loss: a fixed set of cached clips that never trains, scored at every checkpoint.

The training loss of a diffusion model says little about progress (it is dominated by which timesteps a
step happened to draw), and no published split of MedVideoCap-55K exists. So the trainer keeps its own:

* **Which clips**: ``heldout_ids``, or the ``heldout_fraction`` of the cache (clamped to
  ``[heldout_min, heldout_max]``, and to half the cache) whose ids hash lowest. The hash is of the clip id alone, so every run
  over a cache, on any number of ranks, holds out the same clips, and a clip never moves between sides.
* **What is scored**: the flow-matching loss of the objective (``velocity_loss`` in :mod:`~medvideocap.train.loop`)
  at fixed points: the clips, in hash order, take turns over ``heldout_buckets`` equal timestep buckets
  and are scored at their bucket's middle (t = 125, 375, 625, 875 for 4), with posterior and flow noise
  drawn from a generator seeded by the clip id. Two checkpoints, or two runs, are then scored on exactly
  the same inputs: a difference is the model's, not the dice's. No caption dropout; the weights scored
  are the ones the export would hold (EMA when ``export_ema``).
* **Where it goes**: ``heldout.jsonl`` in the run folder (one line per scoring: overall and per-bucket
  means), the trackers (``heldout/loss``, ``heldout/t125``, ...), and ``best.json`` naming the checkpoint
  with the lowest held-out loss so far, which checkpoint rotation never deletes.

Scoring draws from its own generators only, so a run that scores is the same run, step for step, as one
that does not, and a resumed run equals an uninterrupted one (``heldout.jsonl`` is trimmed on resume like
``metrics.jsonl``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medvideocap.atomic import atomic_write_json
from medvideocap.journal import JournalAppender
from medvideocap.loading.sampler import BucketBatchSampler, stable_seed
from medvideocap.train.batches import make_collate
from medvideocap.train.checkpoint import BEST_FILE, rotate_checkpoints
from medvideocap.train.config import TrainConfig
from medvideocap.train.metrics import trim_metrics
from medvideocap.train.model import trainable_params

HELDOUT_FILE = "heldout.jsonl"


def heldout_indices(ids: list[str], cfg: TrainConfig) -> list[int]:
    """Positions of the held-out clips in ``ids``, in hash order (the order buckets are dealt in)."""
    if cfg.heldout_ids:
        where = {cid: i for i, cid in enumerate(ids)}
        unknown = [cid for cid in cfg.heldout_ids if cid not in where]
        if unknown:
            raise ValueError(
                f"heldout_ids: {len(unknown)} id(s) not in {cfg.latents} (first: {unknown[:3]}); "
                "list ids of this cache or use heldout_fraction"
            )
        chosen = [where[cid] for cid in dict.fromkeys(cfg.heldout_ids)]
    elif cfg.heldout_fraction > 0:
        count = round(cfg.heldout_fraction * len(ids))
        # never more than half a (small, trial) cache: the shipped configs must run on one
        count = min(max(count, cfg.heldout_min), cfg.heldout_max, len(ids) // 2)
        chosen = sorted(range(len(ids)), key=lambda i: stable_seed("heldout", ids[i]))[:count]
    else:
        return []
    if len(chosen) >= len(ids):
        raise ValueError(
            f"{cfg.latents}: holding out {len(chosen)} of {len(ids)} clips leaves none to train on; "
            "list fewer heldout_ids"
        )
    return sorted(chosen, key=lambda i: stable_seed("heldout", ids[i]))


class TrainingSubset(torch.utils.data.Dataset):
    """The training side of the split: a latent dataset without the held-out rows, with the same
    bucket sampler, manifest and per-epoch posterior draws as the whole."""

    def __init__(self, dataset: Any, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self.dataset.manifest)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(self.dataset[self.indices[i]])

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def bucket_sampler(self, batch_size: int, **opts: Any) -> BucketBatchSampler:
        shapes = self.dataset.cache.latent_shapes
        return BucketBatchSampler([shapes[i] for i in self.indices], batch_size, **opts)


def split_heldout(cfg: TrainConfig, dataset: Any, loss: Callable[..., torch.Tensor]) -> tuple[Any, HeldOut]:
    """(what trains, the scorer) for ``dataset``; with held-out off, the dataset itself and a scorer
    that does nothing. ``loss`` is the objective at given noise levels and noise (the loop's
    ``velocity_loss``, passed in so this module does not import the loop)."""
    if not (cfg.heldout_ids or cfg.heldout_fraction > 0):
        return dataset, HeldOut(cfg, dataset, [], loss)
    cache = getattr(dataset, "cache", None)
    if cache is None:
        raise ValueError(
            "held-out loss scores cached latents: train from latents=CACHE_DIR (an encode-latents folder), "
            "or set heldout_fraction=0 heldout_ids=[] to train without it"
        )
    held = heldout_indices(cache.ids, cfg)
    kept = sorted(set(range(len(cache.ids))) - set(held))
    return TrainingSubset(dataset, kept), HeldOut(cfg, dataset, held, loss)


class HeldOut:
    """Scores the held-out clips (see the module docstring); every rank scores its share."""

    def __init__(self, cfg: TrainConfig, dataset: Any, indices: list[int], loss: Callable[..., torch.Tensor]):
        self.cfg, self.dataset, self.indices, self.loss = cfg, dataset, indices, loss
        self.ids = [dataset.cache.ids[i] for i in indices]
        b = cfg.heldout_buckets
        # the clips take turns over the buckets; each is scored at its bucket's middle
        self.bucket = [k % b for k in range(len(indices))]
        self.sigmas = [(k + 0.5) / b for k in self.bucket]
        self.names = [f"t{round(1000 * (k + 0.5) / b)}" for k in range(b)]
        self.path = Path(cfg.output_dir) / HELDOUT_FILE
        self.best: dict[str, Any] | None = None

    def start(self, accelerator: Any, resumed_step: int) -> None:
        """Keep the lines of steps up to the resumed checkpoint's (none for a fresh run) and rebuild
        ``best.json`` from them, so a resumed run's files equal an uninterrupted run's."""
        if not self.indices or not accelerator.is_main_process:
            return
        root = Path(self.cfg.output_dir)
        kept = trim_metrics(self.path, resumed_step)
        alive = [e for e in kept if (root / e["checkpoint"]).is_dir()]
        self.best = min(alive, key=lambda e: e["loss"], default=None)
        if self.best is not None:
            atomic_write_json(root / BEST_FILE, self._best_entry(), fsync=False)
        else:
            (root / BEST_FILE).unlink(missing_ok=True)

    def _best_entry(self) -> dict[str, Any]:
        assert self.best is not None
        return {k: self.best[k] for k in ("step", "checkpoint", "loss")}

    @torch.no_grad()
    def losses(self, accelerator: Any, transformer: Any, positions: list[int]) -> list[float]:
        """The loss of each held-out clip at ``positions`` (indices into this scorer's clips)."""
        from medvideocap.latents import sample_moments

        collate, device, out = make_collate(self.cfg.text_seq_len), accelerator.device, []
        for k in positions:
            batch = collate([self.dataset[self.indices[k]]])
            batch = {key: v.to(device) if torch.is_tensor(v) else v for key, v in batch.items()}
            gen = torch.Generator(device=device).manual_seed(stable_seed("heldout-noise", self.ids[k]))
            x0 = sample_moments(batch, gen)["latents"]
            noise = torch.randn(x0.shape, generator=gen, device=device, dtype=x0.dtype)
            sigmas = torch.full((1,), self.sigmas[k], device=device)
            with accelerator.autocast():
                loss = self.loss(transformer, x0, noise, sigmas, batch["prompt_embeds"])
            out.append(float(loss))
        return out

    def __call__(
        self, accelerator: Any, transformer: Any, ema: Any, step: int, checkpoint: Path
    ) -> dict[str, Any] | None:
        """Score the model as checkpointed at ``step``; log and record it (main process). None when
        held-out is off."""
        if not self.indices:
            return None
        rank, world = accelerator.process_index, accelerator.num_processes
        share = list(range(rank, len(self.indices), world))
        # equal work on every rank (a sharded model needs every rank in each forward); pads are dropped
        padded = share + share[-1:] * (math.ceil(len(self.indices) / world) - len(share))
        unwrapped = accelerator.unwrap_model(transformer)
        params = [p for _, p in trainable_params(unwrapped)]
        use_ema = ema is not None and self.cfg.export_ema
        if use_ema:
            ema.store(params)
            ema.copy_to(params)
        was_training = unwrapped.training
        unwrapped.eval()
        try:
            scored = list(zip(share, self.losses(accelerator, unwrapped, padded), strict=False))
        finally:
            unwrapped.train(was_training)
            if use_ema:
                ema.restore(params)
        if world > 1:
            from accelerate.utils import gather_object

            scored = gather_object(scored)
        by_clip = dict(scored)
        buckets: dict[str, list[float]] = {name: [] for name in self.names}
        for k, loss in by_clip.items():
            buckets[self.names[self.bucket[k]]].append(loss)
        root = Path(self.cfg.output_dir)
        means = {name: sum(v) / len(v) for name, v in buckets.items() if v}
        entry: dict[str, Any] = {
            "step": step,
            "checkpoint": str(checkpoint.relative_to(root)),
            "loss": sum(by_clip.values()) / len(by_clip),
            "buckets": means,
            "clips": len(by_clip),
            "ema_weights": use_ema,
        }
        accelerator.log(
            {"heldout/loss": entry["loss"]} | {f"heldout/{n}": v for n, v in means.items()},
            step=step,
        )
        if accelerator.is_main_process:
            with JournalAppender(self.path, durable=False) as journal:
                journal.append(entry)
            if self.best is None or entry["loss"] < self.best["loss"]:
                self.best = entry
                atomic_write_json(root / BEST_FILE, self._best_entry(), fsync=False)
                rotate_checkpoints(self.cfg)  # the previous best may be past checkpoints_keep now
        return entry
