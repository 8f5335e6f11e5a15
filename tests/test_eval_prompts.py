"""Prompt sets of `medvideocap eval`: the paper's set fetched once by pinned checksum, then offline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medvideocap.eval import prompts as P
from medvideocap.eval.prompts import PromptError, describe_prompts, load_prompts


def _paper_like(path: Path) -> Path:
    """A file of the paper's shape: 200 lines, one long prompt each (85-296 words)."""
    lines = [" ".join(f"w{i}x{j}" for j in range(85 + (i * 7) % 212)) for i in range(200)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def paper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The paper's constants pointed at a local file:// copy; the cache in a temporary folder."""
    (tmp_path / "upstream").mkdir()
    src = _paper_like(tmp_path / "upstream" / "eval_prompt_200.txt")
    monkeypatch.setattr(P, "PAPER_URL", src.as_uri())
    monkeypatch.setattr(P, "PAPER_SHA256", hashlib.sha256(src.read_bytes()).hexdigest())
    monkeypatch.setenv("MEDVIDEOCAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("MEDVIDEOCAP_OFFLINE", raising=False)
    return src


def test_the_paper_set_is_fetched_once_checked_and_then_read_offline(
    paper: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_prompts("medgen-paper")
    assert len(first) == 200 and first[0].id == "p0001" and first[-1].id == "p0200"
    paper.unlink()  # the source is gone and we are offline: the cache answers
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_prompts("medgen-paper") == first
    described = describe_prompts("medgen-paper")
    assert P.PAPER_SHA256 in described and "the MedGen paper's prompts" in described


def test_a_file_that_does_not_match_the_pinned_checksum_is_refused_and_not_cached(
    paper: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paper.write_text(paper.read_text() + "one more prompt\n")
    with pytest.raises(PromptError, match="not the pinned"):
        load_prompts("medgen-paper")
    assert not list((tmp_path / "cache").rglob("*.txt"))


def test_offline_and_uncached_says_where_to_put_the_file(
    paper: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PromptError, match="not cached and running offline; download .* or put it at"):
        load_prompts("medgen-paper")


def test_another_file_is_described_by_name_and_checksum_not_as_the_papers(tmp_path: Path) -> None:
    own = tmp_path / "mine.txt"
    own.write_text("a surgeon ties a knot\n")
    described = describe_prompts(own)
    assert "mine.txt" in described and hashlib.sha256(own.read_bytes()).hexdigest() in described
    assert "paper" not in described


def test_clip_truncations_are_counted(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from medvideocap.eval.metrics.text_video_alignment import TextVideoAlignment
    from medvideocap.eval.tiny import save_tiny_clip

    metric = TextVideoAlignment({"": str(save_tiny_clip(tmp_path / "clip"))}, device="cpu")
    texts = ["a knot", " ".join(["suture"] * 200), "a doctor listens to the lungs"]
    assert metric.truncations(texts) == {"text_video_alignment (CLIP, 77 tokens)": 1}
