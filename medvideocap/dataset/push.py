"""Publish a hub-native dataset folder to the Hugging Face Hub, and tag its schema version.

The upload is resumable. A push to the default branch uses ``HfApi.upload_large_folder`` (its own
resume state, several commits) where the installed ``huggingface_hub`` still has it (0.25 to 1.x);
2.0 removed it in favour of ``upload_folder``, which skips files already committed and deduplicates
uploaded data when re-run, and which every push to a ``revision`` uses. Either way, running ``push``
again after a failure finishes the job. The commit is then tagged ``v{SCHEMA_VERSION}`` (as LeRobot tags its codebase
version) so readers can pin the schema they understand.

The token comes from ``token=``, else ``HF_TOKEN``, else the ``hf auth login`` cache, all through
``huggingface_hub``'s own resolution. It is never logged: any error text is masked before it is
re-raised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvideocap.atomic import TEMP_GLOB
from medvideocap.dataset.layout import INFO_PATH, PARTIAL_SHARD_GLOB, PROGRESS_DIR
from medvideocap.dataset.schema import SCHEMA_VERSION
from medvideocap.lock import LOCK_GLOB

log = logging.getLogger(__name__)

IGNORE_PATTERNS = [
    f"{PROGRESS_DIR}/*",
    f"**/{PARTIAL_SHARD_GLOB}",
    f"**/{TEMP_GLOB}",
    LOCK_GLOB,
    ".cache/*",
]
"""Never uploaded: a write's resume state, unfinished shards, atomic writes cut short, the lock file a
killed run left (:mod:`medvideocap.lock`), and the ``.cache/`` folder ``huggingface_hub`` keeps its
upload state in."""


class PushError(RuntimeError):
    """Publishing failed; the message says at which step (token masked). Re-running resumes."""


@dataclass
class PushResult:
    repo_id: str
    revision: str
    tag: str
    files: list[str]


def schema_tag() -> str:
    """The tag that marks a commit as holding schema ``SCHEMA_VERSION`` data."""
    return f"v{SCHEMA_VERSION}"


def _mask(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return text


def dataset_files(folder: Path) -> list[str]:
    """Files that make up the dataset (relative posix paths), leftovers of unfinished writes excluded."""
    from fnmatch import fnmatch

    # The same IGNORE_PATTERNS the upload is given (``**/`` also matching at the top level), plus
    # .git/, which huggingface_hub always skips.
    patterns = [*IGNORE_PATTERNS, *(p.removeprefix("**/") for p in IGNORE_PATTERNS if p.startswith("**/"))]
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel.startswith(".git/") or any(fnmatch(rel, p) for p in patterns):
            continue
        files.append(rel)
    return files


def push(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    api: Any | None = None,
    commit_message: str | None = None,
    update_card: bool = True,
) -> PushResult:
    """Upload ``folder`` (a finished hub-native dataset) to the dataset repo ``repo_id`` and tag it.

    ``api`` defaults to ``huggingface_hub.HfApi(token=token)``; tests pass a stand-in with the same
    methods. ``update_card`` re-renders README.md so its loading examples name ``repo_id``."""
    from medvideocap.dataset.hubnative import is_hub_native

    folder = Path(folder)
    if not is_hub_native(folder):
        raise PushError(
            f"{folder}: not a finished hub-native dataset (no {INFO_PATH}); run convert or build first"
        )
    if (folder / PROGRESS_DIR).exists():
        raise PushError(
            f"{folder}: a write is still in progress ({PROGRESS_DIR}/ exists); finish it before pushing"
        )
    if update_card:
        from medvideocap.dataset.card import write_card

        write_card(folder, repo_id=repo_id)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    branch = revision or "main"
    tag = schema_tag()
    message = commit_message or f"Upload hub-native dataset (schema {SCHEMA_VERSION}) with medvideocap"
    files = dataset_files(folder)
    step = "create_repo"
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision is not None:
            step = "create_branch"
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        step = "upload"
        log.info("uploading %d files of %s to %s@%s", len(files), folder, repo_id, branch)
        if revision is None and hasattr(api, "upload_large_folder"):
            api.upload_large_folder(
                repo_id=repo_id, folder_path=folder, repo_type="dataset", ignore_patterns=IGNORE_PATTERNS
            )
        else:
            api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                repo_type="dataset",
                revision=revision,
                commit_message=message,
                ignore_patterns=IGNORE_PATTERNS,
            )
        step = "tag"
        refs = api.list_repo_refs(repo_id, repo_type="dataset")
        if any(t.name == tag for t in refs.tags):
            # Move the tag to what was just pushed: it marks the latest data written with this schema.
            api.delete_tag(repo_id, tag=tag, repo_type="dataset")
        api.create_tag(
            repo_id,
            tag=tag,
            revision=branch,
            repo_type="dataset",
            tag_message=f"medvideocap schema {SCHEMA_VERSION}",
        )
    except (
        Exception
    ) as exc:  # masked and re-raised with the step: the caller sees what failed, never the token
        raise PushError(
            f"push {folder} -> {repo_id}@{branch} failed at {step}: {_mask(f'{type(exc).__name__}: {exc}', token)}; "
            "run the same command again to resume"
        ) from None
    return PushResult(repo_id=repo_id, revision=branch, tag=tag, files=files)
