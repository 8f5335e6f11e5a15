"""What a dataset is, at a glance: layout, schema version, counts per split and category, sizes.

Cheap by design (metadata and file listings only, no decoding, no video download for repo ids), so it
is the first thing to run on anything; ``validate`` is the thorough check.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from medvideocap.dataset.layout import HUB_NATIVE, METADATA_GLOB, split_shards_glob
from medvideocap.dataset.schema import SCHEMA_VERSION
from medvideocap.dataset.stats import compute_stats, load_metadata


def info(
    path_or_repo: str | Path, *, revision: str | None = None, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A JSON-serialisable summary of a dataset (local folder, Hub repo id, or a URL such as
    ``s3://bucket/ds`` read with ``storage_options``)."""
    table = load_metadata(path_or_repo, revision=revision, storage_options=storage_options)
    root = table.root
    summary = compute_stats(table.frame)  # the counts are the stats module's, not a second tally
    result: dict[str, Any] = {
        "source": table.source,
        "layout": table.layout,
        "root": str(root),
        "clips": summary["clips"],
        "hours": summary["hours"],
        "splits": summary["splits"],
        "categories": {name: c["count"] for name, c in summary["categories"].items()},
        "notes": list(table.notes),
    }
    if table.layout == HUB_NATIVE:
        from medvideocap.dataset.hubnative import HubNativeDataset

        ds = HubNativeDataset(root)
        result["schema_version"] = str(ds.info.get("schema_version"))
        for key in ("fingerprint", "created_with"):
            if key in ds.info:
                result[key] = ds.info[key]
        # sizes from one listing per split: no request per shard on object storage
        per_split = {s: root.sizes(split_shards_glob(s)) for s in ds.splits}
        parquets = root.sizes(METADATA_GLOB)
        result["files"] = {
            "shards": {s: len(sizes) for s, sizes in per_split.items()},
            "metadata": [root.relative(p) for p in parquets],
        }
        result["bytes"] = {
            "videos": sum(sum(sizes.values()) for sizes in per_split.values()),
            "metadata": sum(parquets.values()),
        }
        if not any(per_split.values()):
            result["notes"].append("video shards not downloaded (metadata only)")
    else:
        release = table.upstream
        result["schema_version"] = f"upstream JSON (unversioned; read as schema {SCHEMA_VERSION})"
        result["records"] = release.num_rows
        members = 0
        for z in release.zips:
            try:
                with zipfile.ZipFile(z) as zf:
                    members += sum(1 for i in zf.infolist() if not i.is_dir())
            except zipfile.BadZipFile:
                result["notes"].append(f"{z.name}: not a readable zip")
        result["files"] = {"zips": [z.name for z in release.zips], "metadata": release.metadata_path.name}
        result["video_members"] = members
        result["bytes"] = {
            "videos": sum(z.stat().st_size for z in release.zips),
            "metadata": release.metadata_path.stat().st_size,
        }
        if not release.zips:
            result["notes"].append("videos_*.zip not downloaded (metadata only)")
        if release.problems:
            result["notes"].append(f"{len(release.problems)} problems found while reading; run `validate`")
    return result
