"""What every evaluation metric shares: the interface, the device pick, the model revision record,
VBench's consistency rule and the one way a metric reads a checkpoint file (:func:`weights_file`,
:func:`load_state_dict`).

Each metric module defines one :class:`Metric` subclass with its published definition, the real model id
it loads by default and how its raw value is mapped into [0, 1]. Videos arrive as ``uint8 (T, H, W, 3)``
arrays decoded from the mp4 on disk, so a score does not depend on whether the video was just generated
or read back by ``--videos``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medvideocap.devices import resolve_device


class MetricError(ValueError):
    """A metric cannot run as configured (missing package, model or bad input); says what to do."""


class Unscored(Exception):
    """One video this metric gives no score, for a reason that lies in the video's judgement, not in the
    setup: a judge that refused, or answered something unreadable or out of range. ``kind`` names the
    reason in a word (``refusal``, ``unparseable``, ``out_of_range``, ``markup``), ``record`` is what the
    journal keeps about it (the raw reply).

    Why not a score of 0 or a :class:`MetricError`: a refusal says nothing about the video, so a 0 would
    drag the mean down for the judge's reasons, and stopping the run would lose every other video's score
    for one bad reply. The runner journals the video as unscored, leaves it out of every mean and lists
    it in the report; a setup problem (no server, no key) stays a :class:`MetricError` and stops the run.
    """

    def __init__(self, kind: str, message: str, record: dict[str, Any] | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.record = record or {}


def model_revision(model_id: str) -> str:
    """What exactly was loaded: the Hub commit of ``model_id`` when it came from the Hub cache, or
    ``local:<hash of the folder's files>`` for a local model, so two runs that used different local
    weights are told apart in their outputs (hashing a ViT-L takes a second or two, once per run)."""
    path = Path(model_id)
    if path.exists():
        digest = hashlib.blake2b(digest_size=8)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            digest.update(str(file.relative_to(path) if file != path else file.name).encode())
            with file.open("rb") as fh:
                while block := fh.read(1 << 22):
                    digest.update(block)
        return f"local:{digest.hexdigest()}"
    try:
        from transformers import AutoConfig

        commit = getattr(AutoConfig.from_pretrained(model_id), "_commit_hash", None)
    except (OSError, ValueError):
        commit = None
    return str(commit) if commit else "unknown"


def weights_file(spec: str, *, metric: str) -> Path:
    """The local file a metric's weight spec names: a path, or a file in a Hub model repo
    (``hf://OWNER/NAME/FILE``) fetched into (and read offline from) the Hugging Face cache. The spec is
    parsed by :func:`medvideocap.locations.resolve` and the Hub's own ``HfFileSystem.resolve_path``; a
    spec that names no such file, or another scheme, is a :class:`MetricError` saying what to give."""
    from medvideocap.locations import HUB, LocationError, resolve

    fix = f"give --metric-model {metric}=PATH"
    try:
        location = resolve(spec)
    except LocationError as exc:
        raise MetricError(f"{metric}: {exc}; {fix}") from None
    if location.local is not None:
        if not location.local.is_file():
            raise MetricError(f"{metric}: model file {spec!r} does not exist; {fix}")
        return location.local
    if location.scheme != HUB:
        raise MetricError(
            f"{metric}: model file {spec!r}: weights are read from a local path or hf://; {fix}"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        where = location.fs.resolve_path(location.root)
        return Path(
            hf_hub_download(
                where.repo_id, where.path_in_repo, repo_type=where.repo_type, revision=where.revision
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise MetricError(f"{metric}: cannot fetch {spec!r} ({str(exc).splitlines()[0]}); {fix}") from None


def load_state_dict(path: str | Path, *, what: str, drop: Sequence[str] = ()) -> dict[str, Any]:
    """The tensors of a checkpoint written by ``torch.save``, read with ``weights_only=True`` (a model file is
    never unpickled), DataParallel's ``module.`` prefixes removed and the keys starting with any of
    ``drop`` (a checkpoint's training-only heads) left out. A file holding more than tensors, or not a
    dict, is a :class:`MetricError` naming the file and ``what`` it should hold."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise MetricError(
            f"{path}: holds more than tensors, and model files are never unpickled here (torch.load "
            f"weights_only=True refused it: {str(exc).splitlines()[0]}); save its state_dict alone"
        ) from None
    if not isinstance(state, dict):
        raise MetricError(f"{path}: holds a {type(state).__name__}, not a {what} state_dict")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith(tuple(drop))}


def consistency(features: Any) -> float:
    """VBench's subject/background consistency rule over per-frame features ``(T, D)``: for each frame
    after the first, the mean of its cosine to the first frame and to the previous frame, each clipped at
    0; averaged over those frames. A one-frame video is perfectly consistent (1.0)."""
    import torch

    feats = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=-1)
    if feats.shape[0] < 2:
        return 1.0
    to_first = (feats[1:] @ feats[0]).clamp(min=0.0)
    to_prev = (feats[1:] * feats[:-1]).sum(-1).clamp(min=0.0)
    return float(((to_first + to_prev) / 2).mean().clamp(0.0, 1.0))


class Metric:
    """One evaluation dimension. Subclasses set the class attributes and implement :meth:`score`.

    ``models`` maps a role (``""`` for the main model, e.g. ``"head"`` for a second file) to an id or path;
    ``--metric-model NAME=...`` overrides the main one and ``NAME.ROLE=...`` the others.
    """

    name: ClassVar[str]
    definition: ClassVar[str]
    normalisation: ClassVar[str]
    relation_to_vbench: ClassVar[str]
    default_models: ClassVar[dict[str, str]] = {}

    def __init__(self, models: dict[str, str] | None = None, *, device: str | None = None) -> None:
        unknown = set(models or {}) - set(self.default_models)
        if unknown:
            roles = ", ".join(repr(r) for r in self.default_models) or "none"
            raise MetricError(f"metric {self.name!r} has no model role {sorted(unknown)} (roles: {roles})")
        self.models = {**self.default_models, **(models or {})}
        self.device = resolve_device(device)

    def info(self) -> dict[str, Any]:
        """The record written next to the scores: enough to know what a number means and reproduce it."""
        return {
            "name": self.name,
            "definition": self.definition,
            "normalisation": self.normalisation,
            "relation_to_vbench": self.relation_to_vbench,
            "models": {
                role or "model": {"id": mid, "revision": model_revision(mid)}
                for role, mid in self.models.items()
            },
        }

    def score(self, video: np.ndarray, prompt: str) -> float:
        """Score one ``uint8 (T, H, W, 3)`` video generated for ``prompt``; a float in [0, 1]."""
        raise NotImplementedError

    def assess(self, video: np.ndarray, prompt: str) -> tuple[float, dict[str, Any]]:
        """:meth:`score` and what the journal keeps beside the value (a judge's raw reply and verdict);
        raises :class:`Unscored` for a video that gets no score. What the runner calls; a metric whose
        number is the whole story inherits this."""
        return self.score(video, prompt), {}


def check_video(video: np.ndarray, *, min_frames: int = 1, metric: str = "") -> np.ndarray:
    """``video`` as a ``uint8 (T, H, W, 3)`` array with at least ``min_frames`` frames. A temporal metric
    asks for 2 (3 to re-create a middle frame): on one frame it would report perfect consistency and
    smoothness of a video with no time in it, a silent wrong answer."""
    arr = np.asarray(video)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or arr.shape[0] < 1:
        raise MetricError(f"expected a uint8 (T, H, W, 3) video, got {arr.dtype} {tuple(arr.shape)}")
    if arr.shape[0] < min_frames:
        raise MetricError(
            f"{metric or 'this metric'} measures change over time and needs at least {min_frames} frames, "
            f"the video has {arr.shape[0]}; generate more frames (--frames) or leave it out (--metrics)"
        )
    return arr
