"""Every knob of a training run, and how a shipped YAML config plus ``key=value`` overrides become one.

The validation videos are sampled with an :class:`~medvideocap.generate.GenerationSettings`, the same
object ``medvideocap eval`` samples with, so their defaults and checks have one owner. Config files keep
the flat keys users write (``validation_frames``, ``validation_steps``, ...): they are folded into
``TrainConfig.validation`` on the way in and spelled out again by ``model_dump()`` on the way out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from medvideocap.defaults import WAN_T2V_1_3B, WAN_TEXT_TOKENS
from medvideocap.generate import GenerationSettings

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

#: Validation prompts in the spirit of the paper's evaluation set (our own wording).
DEFAULT_VALIDATION_PROMPTS = [
    "Laparoscopic view of a surgeon placing interrupted sutures to close a small incision in the abdominal "
    "wall, instruments moving steadily under bright surgical lighting.",
    "Transthoracic echocardiogram in the apical four-chamber view, grayscale ultrasound showing all four "
    "heart chambers contracting and the valves opening and closing.",
    "A trainer demonstrates adult CPR on a manikin, hands centered on the chest, compressing at a steady "
    "rhythm while a second person prepares a defibrillator.",
    "Medical animation of red blood cells flowing through an artery, the vessel wall pulsing gently with "
    "each heartbeat.",
]

#: Config key -> the :class:`GenerationSettings` field it sets for validation sampling. ``base`` has no
#: key: validation always samples the model being trained.
VALIDATION_KEYS = {
    "validation_frames": "frames",
    "validation_height": "height",
    "validation_width": "width",
    "validation_steps": "steps",
    "validation_guidance": "guidance",
    "validation_fps": "fps",
    "validation_negative_prompt": "negative_prompt",
}


class NoTrainingDataError(RuntimeError):
    """Training cannot go on: the data source stopped giving batches (every clip of a run of batches
    failed to load), so the loop would otherwise spin forever over an endless batch plan."""


class NonFiniteTrainingError(RuntimeError):
    """Training cannot go on: the loss or gradient norm was NaN/inf (``max_nonfinite_steps`` steps in a
    row), or weights about to be checkpointed or exported hold NaN/inf. Raised instead of going on,
    because a run on ``loss nan`` used to finish every step, exit 0 and export a LoRA that makes noise."""


class DistributedConfig(BaseModel):
    """How the model is spread over the devices ``accelerate launch``/``torchrun`` starts.

    ``ddp``: every device holds the whole model and optimizer (accelerate's DistributedDataParallel).
    ``fsdp``: full sharding with torch's ``fully_shard`` (FSDP2), one unit per ``WanTransformerBlock``,
    bf16/fp16 compute over fp32 master weights, sharded checkpoints (:mod:`~medvideocap.train.fsdp`)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["ddp", "fsdp"] = "ddp"


class TrainConfig(BaseModel):
    """Every knob of a run. Shipped configs live in ``medvideocap/configs/*.yaml``; any field can be
    overridden as ``key=value`` (values parse as YAML, so ``lora_target_modules=[to_q,to_v]`` works)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # where things are
    output_dir: str = "runs/medgen"
    latents: str | None = None  # an `encode-latents` cache folder (the fast path)
    source: str | None = None  # or encode on the fly: any dataset `medvideocap.load` reads
    split: str = "train"
    expect_fingerprint: str | None = None  # refuse a cache built from a different dataset/recipe
    # model
    model_id: str = WAN_T2V_1_3B  # hub id or a local pipeline folder
    revision: str | None = None
    transformer_subfolder: str = "transformer"
    mode: Literal["lora", "full"] = "lora"
    lora_rank: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]
    gradient_checkpointing: bool = True
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16"
    # memory ladder (medvideocap.train.ladder), LoRA only: frozen base stored in fp8 (null: the
    # mixed_precision dtype); transformer blocks kept on the CPU between uses
    base_weights_dtype: Literal["float8_e4m3fn"] | None = None
    offload_frozen_blocks: bool = False
    distributed: DistributedConfig = DistributedConfig()  # distributed={strategy: fsdp} to shard
    # the validation pipeline's text encoder stored in fp8 (null: the mixed_precision dtype)
    text_encoder_dtype: Literal["float8_e4m3fn"] | None = None
    # data
    frames: int = 81  # on-the-fly only (a cache fixed these when it was encoded)
    height: int = 480
    width: int = 832
    fps: float = 16.0
    caption: str = "detailed"
    batch_size: int = 1  # per device
    gradient_accumulation_steps: int = 1
    num_workers: int = 2
    max_empty_batches: int = 100  # batches in a row with no readable clip (on-the-fly) before stopping
    text_seq_len: int = (
        WAN_TEXT_TOKENS  # WanPipeline pads prompts to 512 tokens at inference; train the same way
    )
    caption_dropout: float = 0.1  # probability of the unconditional prompt, for classifier-free guidance
    caption_dropout_embeds: Literal["empty", "zeros"] = "empty"  # UMT5("") as WanPipeline's negative, or 0s
    # objective (rectified flow, as Wan)
    flow_shift: float = 3.0
    timestep_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # optimisation
    learning_rate: float = 5e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"  # adamw8bit: bitsandbytes' 8-bit moments
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    # optimizer steps in a row with a NaN/inf loss or gradient norm that stop the run (1: the first);
    # fewer are skipped (no update) with a warning
    max_nonfinite_steps: int = 1
    lr_scheduler: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    max_steps: int = 1000
    stop_at_step: int | None = None  # end this job early (time-boxed cluster jobs); schedule keeps max_steps
    ema_decay: float = 0.999  # 0 disables EMA
    seed: int = 1024
    # bookkeeping
    log_every: int = 10
    report_to: str | None = "tensorboard"  # any tracker accelerate supports, or null
    checkpoint_every: int = 500
    checkpoints_keep: int = 3
    resume: str = "auto"  # auto (newest checkpoint in output_dir, if any) | none | a checkpoint folder
    validation_every: int = 0  # 0: only at the end
    validation_prompts: list[str] = DEFAULT_VALIDATION_PROMPTS
    validation: GenerationSettings = GenerationSettings()  # written as the validation_* keys above
    validation_seed: int = 0
    # held-out loss (medvideocap.train.heldout): clips kept out of training, scored at every checkpoint
    heldout_fraction: float = 0.0  # of the cache, picked by a hash of the clip id (0: off)
    heldout_min: int = 8  # at least this many clips when heldout_fraction > 0
    heldout_max: int = 256  # at most this many (each costs one forward pass per scoring)
    heldout_ids: list[str] = []  # or exactly these clips (overrides the fraction)
    heldout_buckets: int = 4  # timestep buckets the held-out loss is reported in
    export_ema: bool = True  # the final export holds EMA weights (when EMA is on)
    export_pipeline: bool = True  # full mode: write a complete WanPipeline folder, not only transformer/

    @model_validator(mode="before")
    @classmethod
    def _fold_validation_keys(cls, values: Any) -> Any:
        """``validation_frames: 49`` (what config files say) -> ``validation.frames = 49``."""
        if not isinstance(values, dict) or not VALIDATION_KEYS.keys() & values.keys():
            return values
        values = dict(values)
        given = values.get("validation", GenerationSettings())
        merged = dataclasses.asdict(given) if isinstance(given, GenerationSettings) else dict(given)
        for key, name in VALIDATION_KEYS.items():
            if key in values:
                merged[name] = values.pop(key)
        values["validation"] = merged
        return values

    @model_serializer(mode="wrap")
    def _spell_validation_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The inverse of the fold: dumps (``config.yaml``, ``--print-config``, trackers) show the keys a
        config file takes, so a dumped config loads again as it is."""
        data: dict[str, Any] = handler(self)
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key == "validation":
                out.update({k: value[name] for k, name in VALIDATION_KEYS.items()})
            else:
                out[key] = value
        return out

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        return "no" if value is False else value  # YAML reads a bare `no` as false

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        problems = []
        if not 0.0 <= self.caption_dropout <= 1.0:
            problems.append(f"caption_dropout={self.caption_dropout} is not a probability")
        if self.flow_shift <= 0:
            problems.append(f"flow_shift={self.flow_shift} must be > 0 (1.0 = no shift)")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay={self.ema_decay} must be in [0, 1) (0 disables EMA)")
        counts = (
            self.batch_size,
            self.gradient_accumulation_steps,
            self.max_steps,
            self.checkpoint_every,
            self.max_empty_batches,
            self.max_nonfinite_steps,
        )
        if min(counts) < 1:
            problems.append(
                "batch_size, gradient_accumulation_steps, max_steps, checkpoint_every, max_empty_batches, "
                "max_nonfinite_steps must be >= 1"
            )
        if not 0.0 <= self.heldout_fraction < 1.0 or min(self.heldout_min, self.heldout_buckets) < 1:
            problems.append(
                f"heldout_fraction={self.heldout_fraction} must be in [0, 1) (0: off), heldout_min and "
                "heldout_buckets >= 1"
            )
        if self.heldout_max < self.heldout_min:
            problems.append(f"heldout_max={self.heldout_max} is below heldout_min={self.heldout_min}")
        if self.mode == "full" and (self.base_weights_dtype or self.offload_frozen_blocks):
            problems.append(
                "base_weights_dtype and offload_frozen_blocks store or move the frozen base weights, and "
                "mode=full trains every weight: set mode=lora, or base_weights_dtype=null "
                "offload_frozen_blocks=false"
            )
        if self.distributed.strategy == "fsdp":
            problems += self._fsdp_problems()
        if (self.frames - 1) % 4:
            problems.append(f"frames={self.frames}: Wan's VAE needs 4k+1 frames (81, 49, 17, 5)")
        problems += self.validation.problems("validation_{}".format)
        if self.validation.base is not None:
            problems.append("validation.base: validation samples the model being trained; leave it unset")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _fsdp_problems(self) -> list[str]:
        """What the sharded path does not (yet) do, each with the setting that avoids it."""
        problems = []
        if self.mode != "full":
            problems.append(
                "distributed.strategy=fsdp shards a full fine-tune: set mode=full, or use strategy=ddp for "
                "LoRA (the 14B base in bf16 with rank-32 adapters fits one 80 GB GPU: see `train --plan`)"
            )
        if self.optimizer != "adamw":
            problems.append(
                "distributed.strategy=fsdp: optimizer=adamw8bit is untested on sharded parameters; set "
                "optimizer=adamw"
            )
        if self.validation_prompts:
            problems.append(
                "distributed.strategy=fsdp: validation videos sample on the main process, and a sharded "
                "model needs every rank in each forward: set validation_prompts=[] and sample the export "
                "with `medvideocap generate` (the held-out loss still scores every checkpoint)"
            )
        return problems


def load_config(name_or_path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """A shipped config name (``medgen-1.3b-lora``) or a YAML path, then ``key=value`` overrides."""
    path = Path(name_or_path)
    if not path.is_file() and path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no config {str(name_or_path)!r}; shipped configs: {shipped}")
    values = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value")
        key = key.strip()
        head, dot, rest = key.partition(".")
        if dot and head == "distributed":  # distributed.strategy=fsdp: one field of the nested block
            values[head] = {**(values.get(head) or {}), rest: yaml.safe_load(raw)}
            continue
        if key not in TrainConfig.model_fields and key not in VALIDATION_KEYS:
            hint = ""
            if key.split(".")[0] in ("data", "dataset", "data_path", "data_dir", "path", "train_data"):
                hint = "; the training data is latents=CACHE_DIR (an encode-latents folder) or source=DATASET"
            raise ValueError(f"override {item!r}: unknown field {key!r} (see {path}){hint}")
        value = yaml.safe_load(raw)
        if key == "validation" and isinstance(value, dict):  # validation={steps: 4}: beats the file's keys
            values.update({f"validation_{name}": v for name, v in value.items()})
        else:
            values[key] = value
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise ValueError(f"config {path}: {exc}") from exc
