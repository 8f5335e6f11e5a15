from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_hubnative import HubStandIn, converted, tree_files
from huggingface_hub import HfApi

import medvideocap.dataset.push
from medvideocap.dataset.push import PushError, dataset_files, push, schema_tag
from medvideocap.dataset.schema import SCHEMA_VERSION

REPO = "someone/medvideocap-test"
SECRET = "hf_NotARealTokenButSecretAnyway123"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted(tmp_path_factory.mktemp("push"))


@pytest.fixture
def hub(built: Path, tmp_path: Path) -> Path:
    """A private copy: push re-renders README.md with the repo id."""
    return Path(shutil.copytree(built, tmp_path / "hub"))


def test_push_uploads_every_file_of_the_layout_and_tags_the_schema_version(hub: Path, tmp_path: Path) -> None:
    api = HubStandIn(tmp_path / "remote")
    result = push(hub, REPO, private=True, api=api)
    remote = api.branch_dir(REPO)
    assert tree_files(remote) == tree_files(hub)
    layout = set(tree_files(remote))
    assert {"README.md", "meta/info.json", "meta/rejects.parquet", "metadata/train.parquet"} <= layout
    assert {
        "data/train/shard-00000.tar",
        "data/validation/shard-00000.tar",
        "data/test/shard-00000.tar",
    } <= layout
    assert set(result.files) == layout
    assert f'load_dataset("{REPO}"' in (remote / "README.md").read_text()
    assert api.calls[0] == ("create_repo", {"repo_id": REPO, "repo_type": "dataset", "private": True})
    assert all(kw.get("repo_type") == "dataset" for _, kw in api.calls)
    assert result.tag == schema_tag() == f"v{SCHEMA_VERSION}"
    repo = api.repos[REPO]
    assert repo["tags"] == {f"v{SCHEMA_VERSION}": repo["branches"]["main"]}


def test_an_upload_error_midway_leaves_a_rerun_able_to_finish(hub: Path, tmp_path: Path) -> None:
    api = HubStandIn(tmp_path / "remote", fail_after=3, secret=SECRET)
    with pytest.raises(PushError) as failure:
        push(hub, REPO, api=api, token=SECRET)
    message = str(failure.value)
    assert "failed at upload" in message and "run the same command again" in message
    assert SECRET not in message and "***" in message
    assert len(api.uploaded) == 3
    assert api.repos[REPO]["tags"] == {}  # nothing tagged before the data is complete

    result = push(hub, REPO, api=api, token=SECRET)
    assert tree_files(api.branch_dir(REPO)) == tree_files(hub)
    assert len(api.uploaded) == len(result.files)  # the rerun sent only what was missing
    assert schema_tag() in api.repos[REPO]["tags"]


def test_push_to_a_revision_creates_the_branch_and_moves_an_existing_tag(hub: Path, tmp_path: Path) -> None:
    api = HubStandIn(tmp_path / "remote")
    push(hub, REPO, api=api)
    first = api.repos[REPO]["tags"][schema_tag()]
    push(hub, REPO, api=api, revision="rebuild")
    assert ("create_branch", {"repo_id": REPO, "branch": "rebuild", "repo_type": "dataset"}) in api.calls
    assert tree_files(api.branch_dir(REPO, "rebuild")) == tree_files(hub)
    assert [c[0] for c in api.calls].count("delete_tag") == 1
    assert api.repos[REPO]["tags"][schema_tag()] == api.repos[REPO]["branches"]["rebuild"] != first


def test_unfinished_or_foreign_folders_are_refused(hub: Path, tmp_path: Path) -> None:
    api = HubStandIn(tmp_path / "remote")
    with pytest.raises(PushError, match="not a finished hub-native dataset"):
        push(tmp_path / "remote", REPO, api=api)
    (hub / "meta" / "progress").mkdir()
    with pytest.raises(PushError, match="write is still in progress"):
        push(hub, REPO, api=api)
    assert api.calls == []


def test_leftovers_of_unfinished_writes_are_not_part_of_the_dataset(hub: Path) -> None:
    (hub / "data" / "train" / ".shard-00009.tar.partial").write_bytes(b"x")
    (hub / "metadata" / ".train.parquet.tmp-123").write_bytes(b"x")
    (hub / ".README.md.tmp-host-1.md").write_bytes(b"x")
    (hub / ".cache").mkdir()
    (hub / ".cache" / "lock").write_bytes(b"x")
    (hub / ".medvideocap.lock").write_bytes(b'{"pid": 1}\n')  # what a killed convert or build leaves
    files = dataset_files(hub)
    assert not any(".partial" in f or ".tmp-" in f or f.endswith(".lock") for f in files)
    assert not any(f.startswith(".cache/") for f in files)
    assert "data/train/shard-00000.tar" in files


def test_cli_push_never_prints_the_token(hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    from medvideocap.cli import main

    made: list[dict] = []

    def fake_api(token: str | None = None) -> HubStandIn:
        made.append({"token": token})
        return HubStandIn(tmp_path / "remote", fail_after=1, secret=SECRET)

    monkeypatch.setattr(huggingface_hub, "HfApi", fake_api)
    result = CliRunner().invoke(main, ["push", str(hub), REPO, "--token", SECRET])
    assert result.exit_code == 1
    assert made == [{"token": SECRET}]  # the token reached the API object...
    assert SECRET not in result.output  # ...and never the terminal
    assert "failed at upload" in result.output

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: HubStandIn(tmp_path / "remote2"))
    result = CliRunner().invoke(main, ["push", str(hub), REPO])
    assert result.exit_code == 0, result.output
    assert f"tagged v{SCHEMA_VERSION}" in result.output and SECRET not in result.output


def test_the_stand_in_has_exactly_the_hfapi_methods_push_calls() -> None:
    """Each ``api.X(`` in push.py exists on the stand-in exactly when it exists on the installed
    ``HfApi``, so the branch push takes with the real API is the one these tests take."""
    called = set(re.findall(r"api\.(\w+)\(", inspect.getsource(medvideocap.dataset.push)))
    called |= set(re.findall(r'hasattr\(api, "(\w+)"\)', inspect.getsource(medvideocap.dataset.push)))
    assert {"create_repo", "upload_folder", "create_tag"} <= called
    for name in sorted(called):
        assert hasattr(HubStandIn, name) == hasattr(HfApi, name), name
    own = {n for n, v in vars(HubStandIn).items() if callable(v) and not n.startswith("_")} - {"branch_dir"}
    assert own <= set(dir(HfApi)), own - set(dir(HfApi))


def test_a_default_push_takes_the_upload_the_installed_hfapi_offers(hub: Path, tmp_path: Path) -> None:
    api = HubStandIn(tmp_path / "remote")
    push(hub, REPO, api=api)
    uploads = [(name, kw) for name, kw in api.calls if name.startswith("upload")]
    expected = "upload_large_folder" if hasattr(HfApi, "upload_large_folder") else "upload_folder"
    assert [name for name, _ in uploads] == [expected]
    assert uploads[0][1]["repo_type"] == "dataset" and uploads[0][1]["revision"] is None
    assert tree_files(api.branch_dir(REPO)) == tree_files(hub)
