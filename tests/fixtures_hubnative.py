"""Shared helpers for the hub-native tests: a converted fixture dataset and a local Hub stand-in.

:func:`converted` converts an upstream-shaped release (``fixtures_upstream.make_upstream_release``)
with fractions 0.5/0.25/0.25 and a tiny shard size, so that the fixture has all three splits and
several shards. :func:`write_hub_native` writes a release's clips straight through the
``DatasetWriter`` (a broken writer fails the tests that use it, it never skips them).
:class:`HubStandIn` exposes the part of ``huggingface_hub.HfApi`` that ``medvideocap.dataset.push`` uses,
exactly as the installed ``HfApi`` has it (``upload_large_folder`` only where the real API still has it:
huggingface_hub 2.0 removed it), records every call and keeps "remote" files in a local folder.
"""

from __future__ import annotations

import filecmp
import functools
import hashlib
import inspect
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from fixtures_upstream import make_upstream_release
from huggingface_hub import HfApi

FRACTIONS = (0.5, 0.25, 0.25)
SHARD_BYTES = 12_000  # tiny clips are ~4-7 kB: two clips per shard, so splits get several shards
N_CLIPS = 8  # with the default salt and FRACTIONS this gives train 5, validation 2, test 1


def converted(tmp: Path, *, n_clips: int = N_CLIPS, faults: tuple[str, ...] = (), workers: int = 1) -> Path:
    """Convert a fresh upstream fixture into ``tmp/hub`` and return that folder."""
    from medvideocap.dataset.convert import convert

    src = make_upstream_release(tmp / "upstream", n_clips=n_clips, faults=faults)
    out = tmp / "hub"
    convert(src, out, shard_bytes=SHARD_BYTES, fractions=FRACTIONS, workers=workers, progress=False)
    return out


def write_hub_native(release: Path, out: Path, *, test_id: str = "00000") -> Path:
    """Every clip of the upstream-shaped ``release`` into ``out`` (clip ``test_id`` in test, the rest
    in train) through :class:`medvideocap.dataset.writer.DatasetWriter`; returns ``out``."""
    from medvideocap.dataset.upstream import UpstreamRelease
    from medvideocap.dataset.writer import DatasetWriter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with DatasetWriter(out, split_fn=lambda r: "test" if r.id == test_id else "train") as w:
            for clip in UpstreamRelease.open(release).clips():
                w.write(clip.record, clip.read_bytes())
    return out


def tree_files(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root``."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def same_tree(a: Path, b: Path) -> bool:
    files_a, files_b = tree_files(a), tree_files(b)
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


@dataclass
class _Ref:
    name: str
    target_commit: str


@dataclass
class _Refs:
    branches: list[_Ref]
    tags: list[_Ref]
    converts: list[_Ref] = field(default_factory=list)


class UploadInterrupted(OSError):
    pass


def _like_hfapi(method: Callable[..., Any]) -> Callable[..., Any]:
    """Bind every call against the real ``HfApi`` method first, so a stand-in that accepts a call the
    real API would refuse (wrong name, positional where keyword-only, unknown option) fails the test."""
    real = inspect.signature(getattr(HfApi, method.__name__))

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        real.bind(self, *args, **kwargs)
        return method(self, *args, **kwargs)

    return wrapper


class HubStandIn:
    """A local stand-in for ``HfApi``: files land in ``remote/{repo_id}/{branch}/``.

    ``fail_after=N`` makes the next upload raise after N files have been stored, the way a dropped
    connection leaves a partial upload; the error text carries ``secret`` so tests can check that
    callers mask it. Uploads skip files whose bytes are already stored (resume)."""

    def __init__(self, remote: Path, *, fail_after: int | None = None, secret: str = "") -> None:
        self.remote = remote
        self.fail_after = fail_after
        self.secret = secret
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.repos: dict[str, dict[str, Any]] = {}
        self.uploaded: list[str] = []

    def _repo(self, repo_id: str) -> dict[str, Any]:
        if repo_id not in self.repos:
            raise FileNotFoundError(f"404 repo {repo_id} not found")
        return self.repos[repo_id]

    def branch_dir(self, repo_id: str, branch: str = "main") -> Path:
        return self.remote / repo_id / branch

    @_like_hfapi
    def create_repo(
        self,
        repo_id: str,
        *,
        repo_type: str | None = None,
        private: bool | None = None,
        exist_ok: bool = False,
        **kw: Any,
    ) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, "repo_type": repo_type, "private": private}))
        if repo_id in self.repos and not exist_ok:
            raise FileExistsError(f"409 repo {repo_id} exists")
        self.repos.setdefault(
            repo_id, {"private": private, "type": repo_type, "branches": {"main": "c0"}, "tags": {}, "n": 0}
        )
        self.branch_dir(repo_id).mkdir(parents=True, exist_ok=True)
        return f"https://huggingface.co/datasets/{repo_id}"

    @_like_hfapi
    def create_branch(
        self, repo_id: str, *, branch: str, repo_type: str | None = None, exist_ok: bool = False, **kw: Any
    ) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, "branch": branch, "repo_type": repo_type}))
        repo = self._repo(repo_id)
        if branch in repo["branches"] and not exist_ok:
            raise FileExistsError(f"409 branch {branch} exists")
        if branch not in repo["branches"]:
            repo["branches"][branch] = repo["branches"]["main"]
            shutil.copytree(self.branch_dir(repo_id), self.branch_dir(repo_id, branch), dirs_exist_ok=True)

    @_like_hfapi
    def upload_folder(
        self,
        *,
        repo_id: str,
        folder_path: str | Path,
        repo_type: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        ignore_patterns: list[str] | None = None,
        **kw: Any,
    ) -> str:
        self.calls.append(
            (
                "upload_folder",
                {
                    "repo_id": repo_id,
                    "repo_type": repo_type,
                    "revision": revision,
                    "ignore_patterns": ignore_patterns,
                },
            )
        )
        return self._store(repo_id, Path(folder_path), revision, ignore_patterns)

    if hasattr(HfApi, "upload_large_folder"):  # huggingface_hub < 2.0: push's default-branch path

        @_like_hfapi
        def upload_large_folder(
            self,
            repo_id: str,
            folder_path: str | Path,
            *,
            repo_type: str,
            revision: str | None = None,
            ignore_patterns: list[str] | str | None = None,
            **kw: Any,
        ) -> None:
            self.calls.append(
                (
                    "upload_large_folder",
                    {
                        "repo_id": repo_id,
                        "repo_type": repo_type,
                        "revision": revision,
                        "ignore_patterns": ignore_patterns,
                    },
                )
            )
            patterns = [ignore_patterns] if isinstance(ignore_patterns, str) else ignore_patterns
            self._store(repo_id, Path(folder_path), revision, patterns)

    def _store(
        self, repo_id: str, folder: Path, revision: str | None, ignore_patterns: list[str] | None
    ) -> str:
        repo = self._repo(repo_id)
        branch = revision or "main"
        if branch not in repo["branches"]:
            raise FileNotFoundError(f"404 revision {branch} not found")
        stored = 0
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if not path.is_file() or any(fnmatch(rel, p) for p in ignore_patterns or []):
                continue
            dest = self.branch_dir(repo_id, branch) / rel
            if dest.exists() and dest.read_bytes() == path.read_bytes():
                continue  # already committed: a resumed upload skips it
            if self.fail_after is not None and stored >= self.fail_after:
                self.fail_after = None
                raise UploadInterrupted(
                    f"connection reset while uploading {rel} (Authorization: Bearer {self.secret})"
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            self.uploaded.append(rel)
            stored += 1
        repo["n"] += 1
        repo["branches"][branch] = f"c{repo['n']}"
        return repo["branches"][branch]

    @_like_hfapi
    def list_repo_refs(self, repo_id: str, *, repo_type: str | None = None, **kw: Any) -> _Refs:
        self.calls.append(("list_repo_refs", {"repo_id": repo_id, "repo_type": repo_type}))
        repo = self._repo(repo_id)
        return _Refs(
            branches=[_Ref(n, c) for n, c in repo["branches"].items()],
            tags=[_Ref(n, c) for n, c in repo["tags"].items()],
        )

    @_like_hfapi
    def create_tag(
        self,
        repo_id: str,
        *,
        tag: str,
        revision: str | None = None,
        repo_type: str | None = None,
        exist_ok: bool = False,
        tag_message: str | None = None,
        **kw: Any,
    ) -> None:
        self.calls.append(
            ("create_tag", {"repo_id": repo_id, "tag": tag, "revision": revision, "repo_type": repo_type})
        )
        repo = self._repo(repo_id)
        if tag in repo["tags"] and not exist_ok:
            raise FileExistsError(f"409 tag {tag} exists")
        repo["tags"][tag] = repo["branches"][revision or "main"]

    @_like_hfapi
    def delete_tag(self, repo_id: str, *, tag: str, repo_type: str | None = None, **kw: Any) -> None:
        self.calls.append(("delete_tag", {"repo_id": repo_id, "tag": tag, "repo_type": repo_type}))
        del self._repo(repo_id)["tags"][tag]
