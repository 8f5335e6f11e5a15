"""Named evaluation protocols: ``--protocol medgen-paper`` runs what the MedGen paper ran, and says what
still differs.

Why a protocol is data and not a set of flags: a total is only comparable with a published table when the
prompt set, the dimensions and the models all match; a user typing the flags by hand gets one of them
wrong and never knows. A protocol fixes the prompts and the dimensions, prints the published figures next
to ours, and lists every remaining difference (a stand-in model, a frame count, a resolution) so a reader of
the report can judge the gap. The list is computed from the run, not written once: a difference that
the user removes (e.g. by generating at the paper's resolution) leaves the list.

The paper's protocol, from its authors' repository (FreedomIntelligence/MedGen, ``evaluation/README.md``):
the 200 prompts of ``evaluation/eval_prompt_200.txt``; VBench in ``custom_input`` mode on exactly
subject_consistency, background_consistency, motion_smoothness and imaging_quality; VideoScore v1.1; and
doctors' pairwise ratings (``medvideocap rate serve``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medvideocap.eval.metrics import METRICS
from medvideocap.eval.prompts import PAPER_PROMPTS
from medvideocap.eval.report import markdown_table


@dataclass(frozen=True)
class Protocol:
    """A prompt set, the metrics that stand for each published dimension, and the published figures."""

    name: str
    prompts: str
    #: published dimension -> (our metric, the model the paper's tool uses for it, whether ours is that model
    #: when the metric loads its default weights)
    dimensions: dict[str, tuple[str, str, bool]]
    #: published totals by model, and where they were published
    published: dict[str, float]
    source: str
    #: generation settings of the published videos that ours should match: name -> (value, why it matters)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        return [metric for metric, _, _ in self.dimensions.values()]

    def differences(self, run_info: dict[str, Any]) -> list[str]:
        """What keeps this run's total from being comparable with :attr:`published`, from ``eval.json``."""
        found = [
            "the paper does not publish how its total combines the VBench dimensions and VideoScore; ours is "
            "the unweighted mean of the dimensions above, times 100"
        ]
        prompts = str(run_info.get("prompts") or "")
        if "the MedGen paper's prompts" not in prompts:
            found.append(f"prompt set is {prompts or 'unknown'}, not the paper's ({PAPER_PROMPTS})")
        ran = run_info.get("metrics") or {}
        for dimension, (metric, model, same) in self.dimensions.items():
            if not same:
                found.append(f"{dimension}: scored by our `{metric}` stand-in, not {model}")
                continue
            # `same` holds for the default weights; a run told to load others says so in eval.json
            loaded = (ran.get(metric) or {}).get("models") or {}
            for role, default in METRICS[metric].default_models.items():
                used = (loaded.get(role or "model") or {}).get("id", default)
                if used != default:
                    found.append(
                        f"{dimension}: `{metric}` loaded {used}, not {default} ({model}); comparable only "
                        "if it holds the same weights"
                    )
        generation = run_info.get("generation") or {}
        if "videos" in generation:
            wanted = ", ".join(f"{k} {v}" for k, v in self.settings.items())
            found.append(
                f"videos scored from files: their sampling settings are not known to match ({wanted})"
            )
        for key, value in self.settings.items():
            if key in generation and generation[key] != value:
                found.append(f"{key} {generation[key]}, the paper's videos {value}")
        return found


MEDGEN_PAPER = Protocol(
    name="medgen-paper",
    prompts=PAPER_PROMPTS,
    dimensions={
        "subject_consistency": ("subject_consistency", "VBench's DINO ViT-B/16", True),
        "background_consistency": ("background_consistency", "VBench's CLIP ViT-B/32", True),
        "motion_smoothness": ("rife_interpolation_smoothness", "VBench's AMT-S frame interpolator", False),
        "imaging_quality": ("imaging_quality", "VBench's MUSIQ (SPAQ weights)", True),
        "videoscore": ("videoscore", "TIGER-Lab/VideoScore-v1.1", True),
    },
    published={"MedGen": 70.93, "HunyuanVideo": 67.89, "Wan2.1-14B": 65.13, "Wan2.1-1.3B": 59.59},
    source="MedGen (arXiv 2507.05675), Med-VBench totals; protocol from FreedomIntelligence/MedGen evaluation/",
    settings={"height": 480, "width": 832, "frames": 81},
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (MEDGEN_PAPER,)}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"--protocol {name!r}: unknown; known: {', '.join(PROTOCOLS)}") from None


def protocol_section(protocol: Protocol, summary: dict[str, Any], run_info: dict[str, Any]) -> str:
    """The report's comparison with the published table, with every difference listed."""
    rows = [[name, f"{total:.2f}", "published"] for name, total in protocol.published.items()]
    rows += [[name, c["total"], "this run"] for name, c in summary["checkpoints"].items()]
    differences = protocol.differences(run_info)
    verdict = "Not comparable as it stands; what differs:\n\n" + "".join(f"- {d}\n" for d in differences)
    dims = "".join(
        f"- {dim}: `{metric}` ({'the same model as' if same else 'a stand-in for'} {model})\n"
        for dim, (metric, model, same) in protocol.dimensions.items()
    )
    return (
        f"\n## Against the published table (`--protocol {protocol.name}`)\n\n"
        f"Source: {protocol.source}.\n\nDimensions:\n\n{dims}\n"
        + markdown_table(["model", "total", "from"], rows)
        + f"\n{verdict}"
    )
