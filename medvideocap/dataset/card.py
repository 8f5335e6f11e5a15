"""The dataset card (``README.md``) of a hub-native dataset, rendered from ``cards/dataset_card.md.j2``.

The YAML header is what makes ``load_dataset(DIR_OR_REPO)`` work with no loading script: its
``configs`` map each split to its shards (the default, webdataset config), and ``dataset_info``
declares the features of that config so ``datasets`` never guesses column types from the first rows.
The body carries real statistics of this build and two charts saved next to it. The card owns neither:
the numbers are :mod:`medvideocap.dataset.stats`'s (what ``medvideocap stats`` prints) and the charts
:mod:`medvideocap.dataset.plots`'s (what ``stats --plots`` draws), so the card, the report and the
charts cannot drift apart; the card only lays them out.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl
import yaml

from medvideocap.dataset.layout import (
    CATEGORY_CHART_PATH,
    DURATION_CHART_PATH,
    FUNNEL_PATH,
    INFO_PATH,
    README_PATH,
    REJECTS_PATH,
    metadata_path,
    split_shards_glob,
)
from medvideocap.dataset.plots import category_chart, duration_chart
from medvideocap.dataset.schema import SCHEMA_VERSION, SPLITS, Category
from medvideocap.dataset.stats import compute_stats, load_metadata
from medvideocap.locations import Location, hub_url
from medvideocap.locations import resolve as resolve_location
from medvideocap.resources import resource

TEMPLATE = "dataset_card.md.j2"
UPSTREAM_REPO = "FreedomIntelligence/MedVideoCap-55K"
MAX_ALIAS_NODES = 10_000
"""Nodes that aliases in a card header may add once expanded. A card rendered here uses no aliases;
a hand-written one that reuses a config is a few hundred nodes; a "billion laughs" header is 10**9."""


class CardError(ValueError):
    """A card header the Hub or ``datasets`` would refuse; ``where`` is the file and line."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


class _CardLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s tags, as huggingface_hub's ``RepoCard`` reads a header (no ``!!python/*``
    tag constructs anything), plus the two refusals of the card's other readers: duplicate keys (how
    ``datasets`` reads the card for ``load_dataset``) and aliases that expand past
    :data:`MAX_ALIAS_NODES` (the Hub's own YAML reader stops alias bombs; ``yaml.safe_load`` builds one
    in a millisecond as shared lists, and whatever serializes it next runs out of memory).

    The bound is kept while composing: a node's expanded size is known once it is finished, so each
    alias adds its target's size, and loading stops at the first alias that crosses the bound."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}
        self._from_aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        node = super().compose_node(parent, index)
        if node is None:
            return None
        if isinstance(event, yaml.AliasEvent):
            size = self._sizes.get(id(node))
            if size is None:
                problem = f"the alias *{event.anchor} refers to a node that contains it"
                raise yaml.composer.ComposerError(None, None, problem, event.start_mark)
            self._from_aliases += size
            if self._from_aliases > MAX_ALIAS_NODES:
                problem = f"aliases expand to more than {MAX_ALIAS_NODES} nodes (an alias bomb)"
                raise yaml.composer.ComposerError(None, None, problem, event.start_mark)
            return node
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        self._sizes[id(node)] = 1 + sum(self._sizes[id(c)] for c in children)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep=deep)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.constructed_objects[key_node]  # hashable: the base class checked
            if key in seen:
                problem = f"the key {key!r} appears twice in one mapping"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            seen.add(key)
        return mapping


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < bound:
            return label
    return "1M<n<10M"


def card_configs(splits: list[str]) -> list[dict[str, Any]]:
    """The ``configs`` of the card for a dataset holding ``splits``.

    Empty splits are left out: ``load_dataset`` fails on a split whose files do not exist. There is
    deliberately no second config over ``metadata/*.parquet``: ``datasets`` (checked with 5.2) picks
    one builder per repository from the first config's files, so a parquet config next to the
    webdataset one would be read with the webdataset builder and fail. The card shows how to read the
    parquet directly (``load_dataset("parquet", data_files=...)`` or polars) instead.
    """
    present = [s for s in SPLITS if s in splits]
    return [
        {
            "config_name": "default",
            "default": True,
            "data_files": [{"split": s, "path": split_shards_glob(s)} for s in present],
        }
    ]


def identity(info: dict[str, Any]) -> dict[str, Any]:
    """What this dataset is, from ``meta/info.json``'s recipe: a conversion of the upstream release
    (or a re-captioning of one) is MedVideoCap-55K; a ``build`` from one's own videos is named by
    its ``--name`` (``recipe.build.name``), else by its recipe, with its source folder, and claims no
    upstream dataset as its source."""
    recipe = info.get("recipe") or {}
    if "stages" not in recipe:  # convert / recaption of the upstream release
        return {
            "title": "MedVideoCap-55K (hub-native)",
            "built": False,
            "source_datasets": [UPSTREAM_REPO],
            "recipe_name": None,
            "source": UPSTREAM_REPO,
        }
    build = recipe.get("build") or {}
    name = str(recipe.get("name") or "custom")
    return {
        "title": str(build.get("name") or f"Medical video clips built with medvideocap (recipe {name})"),
        "built": True,
        "source_datasets": None,
        "recipe_name": name,
        "source": str(build.get("source") or "local video files"),
    }


def card_data(info: dict[str, Any]) -> Any:
    """``huggingface_hub.DatasetCardData`` of the card header, built from ``meta/info.json``."""
    import datasets
    from huggingface_hub import DatasetCardData

    from medvideocap.dataset.hubnative import webdataset_features

    splits = [s for s in SPLITS if info.get("counts", {}).get(s)]
    who = identity(info)
    data = DatasetCardData(
        license="apache-2.0" if not who["built"] else "other",
        language=["en"],
        task_categories=["text-to-video"],
        size_categories=[size_category(int(info.get("total", 0)))],
        pretty_name=who["title"],
        tags=["medical", "video", "text-to-video", "video-captioning", "webdataset", "medvideocap"],
        source_datasets=who["source_datasets"],
        configs=card_configs(splits),
    )
    infos = datasets.info.DatasetInfosDict({"default": datasets.DatasetInfo(features=webdataset_features())})
    infos.to_dataset_card_data(data)
    return data


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def build_stats(root: Path, splits: list[str]) -> dict[str, Any]:
    """Markdown tables of this build: clips per split and category, durations, resolutions, scores.

    Every number comes from :func:`medvideocap.dataset.stats.compute_stats` (the owner of the
    dataset's statistics, also behind ``medvideocap stats``), over the whole dataset and over each
    split, unrounded: the card only formats them. ``frame`` and ``summary`` are returned for the
    charts."""
    frame = load_metadata(root).frame
    if frame.is_empty():
        return {
            "frame": frame,
            "summary": None,
            "split_table": "",
            "category_table": "",
            "duration_table": "",
            "resolution_table": "",
            "score_table": "",
            "hours": 0.0,
        }
    overall = compute_stats(frame, digits=None)
    by_split = {s: compute_stats(frame.filter(pl.col("split") == s), digits=None) for s in splits}
    total = overall["clips"]

    def clips_of(summary: dict[str, Any], category: str) -> int:
        return int(summary["categories"].get(category, {}).get("count", 0))

    category_rows = []
    for cat in (c.value for c in Category if c.value in overall["categories"]):
        n = clips_of(overall, cat)
        category_rows.append(
            [cat, *(clips_of(by_split[s], cat) for s in splits), n, f"{100 * n / total:.1f}%"]
        )
    duration_rows = []
    for name, summary in [*by_split.items(), ("all", overall)]:
        dur = summary["duration"]
        duration_rows.append(
            [
                name,
                summary["clips"],
                _fmt(dur.get("min")),
                _fmt(dur.get("mean")),
                _fmt(dur.get("p50")),
                _fmt(dur.get("max")),
                _fmt(summary["hours"], 3),
            ]
        )
    resolution_rows = [
        [r["resolution"], r["clips"], _fmt(r["mean_fps"], 1)] for r in overall["by_resolution"]
    ]
    score_rows = []
    for name in ("aesthetic", "technical"):
        q = overall["scores"].get(name, {"count": 0})
        score_rows.append(
            [name, q["count"], _fmt(q.get("min"), 3), _fmt(q.get("mean"), 3), _fmt(q.get("max"), 3)]
        )
    return {
        "frame": frame,
        "summary": overall,
        "split_table": _table(["split", "clips"], [[s, by_split[s]["clips"]] for s in splits]),
        "category_table": _table(["category", *splits, "total", "share"], category_rows),
        "duration_table": _table(
            ["split", "clips", "min s", "mean s", "median s", "max s", "hours"], duration_rows
        ),
        "resolution_table": _table(["resolution", "clips", "mean fps"], resolution_rows),
        "score_table": _table(["score", "clips with it", "min", "mean", "max"], score_rows),
        "hours": float(overall["hours"]),
    }


def write_charts(root: Path, frame: pl.DataFrame, summary: dict[str, Any] | None) -> list[str]:
    """The category and duration charts of :mod:`medvideocap.dataset.plots` (the owner of every chart,
    written atomically, no software metadata: a rebuild of the same data gives the same bytes) at
    their layout paths; returns the paths written, relative to root. ``summary`` is
    :func:`~medvideocap.dataset.stats.compute_stats` of ``frame``; None or an empty frame draws none."""
    if summary is None or frame.is_empty():
        return []
    categories = {name: int(c["count"]) for name, c in summary["categories"].items()}
    category_chart(categories, root / CATEGORY_CHART_PATH)
    written = [CATEGORY_CHART_PATH]
    if duration_chart(frame["duration"], root / DURATION_CHART_PATH) is not None:
        written.append(DURATION_CHART_PATH)
    return written


def _funnel_table(path: Path) -> str:
    """The build's per-stage funnel (written by ``medvideocap build``), like the paper's table."""
    if not path.exists():
        return ""
    funnel = json.loads(path.read_text(encoding="utf-8"))
    rows = [
        [
            st["stage"],
            st.get("unit", ""),
            st["in"],
            st["out"],
            st["dropped"],
            ", ".join(f"{r['code']} ({r['count']})" for r in st.get("top_reasons", [])) or "-",
        ]
        for st in funnel.get("stages", [])
    ]
    return _table(["stage", "unit", "in", "out", "dropped", "top reasons"], rows) if rows else ""


def render_card(root: Path | str, *, repo_id: str | None = None) -> str:
    """The card text for the dataset in ``root`` (writes its charts as a side effect)."""
    import jinja2

    root = Path(root)
    info = json.loads((root / INFO_PATH).read_text(encoding="utf-8"))
    splits = [s for s in SPLITS if info.get("counts", {}).get(s)]
    stats = build_stats(root, splits)
    charts = write_charts(root, stats.pop("frame"), stats.pop("summary"))
    rejects_path = root / REJECTS_PATH
    reject_table = ""
    if rejects_path.exists():
        rejects = pl.read_parquet(rejects_path)
        if rejects.height:
            summary = (
                rejects.group_by("stage", "reason")
                .len()
                .sort(["len", "stage", "reason"], descending=[True, False, False])
            )
            reject_table = _table(["stage", "reason", "inputs"], [list(r) for r in summary.iter_rows()])
    funnel_table = _funnel_table(root / FUNNEL_PATH)
    template = jinja2.Template(
        resource("cards", TEMPLATE).read_text(encoding="utf-8"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return template.render(
        card_data=card_data(info).to_yaml(),
        who=identity(info),
        info=info,
        recipe_json=json.dumps(info.get("recipe", {}), indent=2, sort_keys=True),
        splits=splits,
        charts=charts,
        reject_table=reject_table,
        funnel_table=funnel_table,
        repo_id=repo_id or "OWNER/medvideocap-55k",
        upstream_repo=UPSTREAM_REPO,
        schema_version=SCHEMA_VERSION,
        metadata_files={s: hub_url(repo_id or "OWNER/medvideocap-55k", metadata_path(s)) for s in splits},
        wds_split=splits[0] if splits else "train",
        wds_last=max(int(info.get("shards", {}).get(splits[0], 1)) - 1, 0) if splits else 0,
        **stats,
    )


def read_card_header(path: Path | str, *, location: Location | None = None) -> dict[str, Any]:
    """The YAML header of the card at ``path`` (``{}`` when it has none), read as the Hub reads it;
    ``location`` reads a ``path`` that is a URL (``s3://bucket/ds/README.md``).

    The header is found with huggingface_hub's own pattern (the one the Hub server uses), parsed
    with :class:`_CardLoader`, and must be a mapping. Raises :class:`CardError` naming the file and
    its line for anything the Hub or ``load_dataset`` would refuse."""
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    name = PurePosixPath(str(path)).name
    try:
        text = (location or resolve_location(Path(path))).read_text(str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(name, f"cannot read the dataset card ({exc})") from None
    match = REGEX_YAML_BLOCK.search(text)
    if match is None:
        return {}
    first_line = text[: match.start(2)].count("\n") + 1
    fix = "fix the header by hand, or let `medvideocap push` re-render the card (it rewrites README.md)"
    try:
        data = yaml.load(match.group(2), Loader=_CardLoader)  # a SafeLoader: no tag runs code
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f"{name} line {first_line + mark.line}" if mark is not None else name
        raise CardError(
            where, f"{problem}; the Hub or load_dataset refuses such a card header: {fix}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CardError(
            f"{name} line {first_line}", f"the card header is a {type(data).__name__}, not a mapping; {fix}"
        )
    return data


def write_card(root: Path | str, *, repo_id: str | None = None) -> Path:
    """Render and atomically write ``root/README.md``."""
    from medvideocap.atomic import atomic_write_bytes

    root = Path(root)
    path = root / README_PATH
    atomic_write_bytes(path, render_card(root, repo_id=repo_id).encode())
    return path
