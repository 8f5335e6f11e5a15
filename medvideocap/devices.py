"""Which torch device a job runs on: the one rule behind every ``--device auto``.

``auto`` (or nothing) is the first CUDA device when torch sees one, else Apple's MPS when present,
else the CPU; any other value is passed through, so ``cuda:1`` reaches torch unchanged and torch
names a bad one."""

from __future__ import annotations


def resolve_device(device: str | None = "auto") -> str:
    """``"cuda"``, ``"mps"`` or ``"cpu"`` for ``auto``/``None``; otherwise ``device`` itself."""
    if device not in (None, "", "auto"):
        return str(device)
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
