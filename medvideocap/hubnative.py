"""Reads the hub-native layout written by :mod:`medvideocap.writer`, locally or from a Hub repo.

The metadata parquet is the index: it answers "which clips, with which facts" without opening a
shard, and its ``shard``/``offset``/``size`` columns turn "give me clip X" into one ranged read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvideocap.layout import has_hub_native_info
from medvideocap.schema import SPLITS, ClipRecord, arrow_schema, check_schema_version
from medvideocap.writer import FORMAT

if TYPE_CHECKING:
    import datasets
    import polars as pl


is_hub_native = has_hub_native_info
"""True when ``path`` is a folder holding a finished hub-native dataset (``meta/info.json``); the
strict check, unlike :func:`medvideocap.layout.is_hub_native`, which also accepts shards + parquet."""


def webdataset_features() -> datasets.Features:
    """The ``datasets`` features of the default (webdataset) config, declared in the card so that
    ``load_dataset`` never infers types from the first few rows (where nulls would make them wrong)."""
    import datasets

    from medvideocap.schema import hf_features

    return datasets.Features(
        {
            "mp4": datasets.Video(),
            "json": dict(hf_features()),
            "__key__": datasets.Value("string"),
            "__url__": datasets.Value("string"),
        }
    )


class HubNativeDataset:
    """A hub-native dataset on disk (a folder, or a Hub repo downloaded into the HF cache)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise FileNotFoundError(
                f"{self.root}: not a hub-native dataset (no meta/info.json); "
                "convert an upstream release with `medvideocap convert SRC --out DIR`"
            )
        self.info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
        if self.info.get("format") != FORMAT:
            raise ValueError(f"{info_path}: format is {self.info.get('format')!r}, expected {FORMAT!r}")
        check_schema_version(str(self.info.get("schema_version", "")), where=str(self.root))
        counts = self.info.get("counts", {})
        self.splits: list[str] = [s for s in SPLITS if counts.get(s)]
        self._index: dict[str, dict[str, tuple[str, int, int]]] = {}

    @classmethod
    def open(cls, path_or_repo: str | Path, *, revision: str | None = None) -> HubNativeDataset:
        """Open a local folder, or download a Hub dataset repo (``owner/name``) and open that."""
        from medvideocap.layout import local_or_download

        return cls(local_or_download(path_or_repo, revision=revision))

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise KeyError(f"{self.root}: no split {split!r}; this dataset has {self.splits}")

    def metadata(self, split: str) -> pl.DataFrame:
        """The metadata table of ``split`` (record columns, shard, offset, size, caption columns)."""
        import polars as pl

        self._check_split(split)
        return pl.read_parquet(self.root / "metadata" / f"{split}.parquet")

    def records(self, split: str) -> Iterator[ClipRecord]:
        """Validated records of ``split``, in shard order."""
        names = arrow_schema().names
        for i, row in enumerate(self.metadata(split).select(names).iter_rows(named=True)):
            yield ClipRecord.from_json_dict(row, where=f"{self.root}/metadata/{split}.parquet row {i}")

    def shards(self, split: str) -> list[Path]:
        """The finished shard files of ``split``, in order."""
        self._check_split(split)
        return sorted((self.root / "data" / split).glob("shard-*.tar"))

    def _locate(self, split: str, clip_id: str) -> tuple[str, int, int]:
        if split not in self._index:
            table = self.metadata(split).select("id", "shard", "offset", "size")
            self._index[split] = {r[0]: (r[1], r[2], r[3]) for r in table.iter_rows()}
        try:
            return self._index[split][clip_id]
        except KeyError:
            raise KeyError(f"{self.root}: no clip {clip_id!r} in split {split!r}") from None

    def read_video(self, split: str, clip_id: str) -> bytes:
        """The mp4 bytes of one clip, read straight from its shard at the recorded offset."""
        shard, offset, size = self._locate(split, clip_id)
        with open(self.root / shard, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            raise OSError(f"{self.root / shard}: clip {clip_id} is cut short ({len(data)} of {size} bytes)")
        return data

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.info['counts'][s]}" for s in self.splits)
        return f"HubNativeDataset({self.root}, {counts})"
