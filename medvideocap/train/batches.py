"""The batches a run consumes: the resumable per-rank batch plan over a latent cache (or any map-style
dataset), the DataLoader over it, and the collate that pads prompts as WanPipeline does.

Split from :mod:`~medvideocap.train.loop` so that file holds the objective and the step; everything here
decides *which* items a step sees and in what shape, and is shared by the held-out scorer
(:mod:`~medvideocap.train.heldout`), which must pad prompts exactly as training does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from medvideocap.train.config import TrainConfig


class ResumableBatches(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Endless batches for one rank: the latent cache's shape-bucketed, per-epoch-shuffled batch plan,
    epoch after epoch, starting ``consumed`` batches in.

    The trainer counts the batches it *consumed* (not what the DataLoader prefetched), so a resumed job
    starts exactly where the stopped one left off. Indices travel as (epoch, index) so a dataset that
    draws its own posterior samples (``posterior="sample"``) draws them for the right epoch."""

    def __init__(
        self, dataset: Any, batch_size: int, *, seed: int, rank: int, world_size: int, consumed: int
    ):
        from medvideocap.loading.sampler import BucketBatchSampler

        opts: dict[str, Any] = {"shuffle": True, "seed": seed, "drop_last": True}
        opts |= {"rank": rank, "world_size": world_size}
        if hasattr(dataset, "bucket_sampler"):
            self.plan = dataset.bucket_sampler(batch_size, **opts)
        else:  # any other map-style dataset of equal-shaped items
            self.plan = BucketBatchSampler([()] * len(dataset), batch_size, **opts)
        self.per_epoch = len(self.plan)
        if self.per_epoch == 0:
            raise ValueError(
                f"{len(dataset)} training items give no full batch of {batch_size} per rank on {world_size} rank(s)"
            )
        self.consumed = consumed

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.consumed, self.per_epoch)
        while True:
            self.plan.load_state_dict({"epoch": epoch, "consumed": offset, "seed": self.plan.seed})
            for batch in self.plan:
                yield [(epoch, i) for i in batch]
            epoch, offset = epoch + 1, 0


class EpochIndexed(torch.utils.data.Dataset):
    """Looks up ``(epoch, index)``, telling the dataset the epoch inside every worker process."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def pad_prompts(embeds: torch.Tensor | list[torch.Tensor], text_seq_len: int) -> torch.Tensor:
    """Prompt embeddings, (B, L, D) zero-padded or a list of unpadded (L_i, D), -> (B, text_seq_len, D),
    zero-padded exactly as WanPipeline pads prompts at inference (Wan's cross-attention takes no mask;
    the zeros are what it learned to ignore)."""
    if isinstance(embeds, list):
        embeds = torch.nn.utils.rnn.pad_sequence(embeds, batch_first=True)
    if embeds.shape[1] > text_seq_len:
        raise ValueError(f"prompt of {embeds.shape[1]} tokens exceeds text_seq_len={text_seq_len}")
    return torch.nn.functional.pad(embeds, (0, 0, 0, text_seq_len - embeds.shape[1]))


def make_collate(text_seq_len: int) -> Any:
    """``collate_latents``, then the prompts zero-padded to ``text_seq_len`` (:func:`pad_prompts`)."""
    from medvideocap.latents import collate_latents

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_latents(items)
        batch["prompt_embeds"] = pad_prompts(batch["prompt_embeds"], text_seq_len)
        return batch

    return collate


def make_loader(cfg: TrainConfig, dataset: Any, accelerator: Any, *, pixels: bool, consumed: int) -> Any:
    """The endless DataLoader of this rank over :class:`ResumableBatches`, ``consumed`` batches in."""
    from medvideocap.loading.loader import collate

    plan = ResumableBatches(
        dataset,
        cfg.batch_size,
        seed=cfg.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        consumed=consumed,
    )
    return torch.utils.data.DataLoader(
        EpochIndexed(dataset),
        batch_sampler=plan,
        num_workers=cfg.num_workers,
        collate_fn=collate if pixels else make_collate(cfg.text_seq_len),
        pin_memory=accelerator.device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )
