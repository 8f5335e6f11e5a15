"""``videoscore``: TIGER-Lab's VideoScore v1.1, a Mantis-Idefics2-8B that regresses five 1-4 human ratings of
a generated video against its prompt (the MedGen paper's evaluation uses it).

Why it is shaped this way: the released checkpoint declares ``Idefics2ForSequenceClassification``, a class
that exists only in TIGER-Lab's Mantis package, and we load no remote or third-party model code. That class
is transformers' Idefics2 backbone (SigLIP-so400m vision tower, perceiver resampler, Mistral-7B) plus one
``nn.Linear(4096, 5)`` named ``score``, read at the last token of the last layer's (final-norm) hidden
state. So the backbone loads through transformers' own :class:`~transformers.Idefics2Model` (its keys sit
under ``model.`` in the checkpoint, which ``from_pretrained`` strips as the base-model prefix) and the two
head tensors are read straight from the checkpoint's safetensors shard; the forward pass is then the Mantis
one for a batch of one video (no padding, so its "last non-pad token" is the last token).

What the model is fed, as in ``examples/run_videoscore.py`` of TIGER-AI-Lab/VideoScore (commit
194736f913018188105a6e0c2b0667eff5bd3be5, the v1.1 version) and the model card:

* frames: every frame when the video has at most 48 (v1.1's limit; v1 used 16), else the 48 indices
  ``arange(0, T, T / 48)`` rounded down, at their native size;
* text: :data:`QUERY_PROMPT` with the prompt filled in, then ``"<image> "`` once per frame;
* processor: the checkpoint's ``Idefics2Processor`` (``image_seq_len`` 64; no image splitting; a frame is
  shrunk, aspect kept, only when a side exceeds 980 px, and a side under 378 px is stretched to 378; pixels
  to [-1, 1]) on its PIL backend, the one transformers 4.4x (where VideoScore was released) had;
* output: five raw regression values, nominally 1 (bad) to 4 (perfect/real). The head runs in fp32 on the
  backbone's (bf16 on CUDA) hidden state: the reference rounds its output to bf16, steps of 1/64 near 2.5,
  and we keep the finer value, within that rounding of theirs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medvideocap.eval.metrics.base import Metric, MetricError, check_video
from medvideocap.models import default_compute_dtype, torch_dtype

#: The Hub checkpoint loaded by default (VideoScore v1.1, MIT licence).
VIDEOSCORE_MODEL = "TIGER-Lab/VideoScore-v1.1"
#: v1.1 was trained for up to 48 frames (TIGER-AI-Lab/VideoScore examples/run_videoscore.py, MAX_NUM_FRAMES).
MAX_FRAMES = 48
#: The five regression outputs, in the order of the head's rows.
ASPECTS = (
    "visual_quality",
    "temporal_consistency",
    "dynamic_degree",
    "text_to_video_alignment",
    "factual_consistency",
)
#: The range the ratings were annotated on (VideoFeedback's 1-4 Likert scale).
RATING_RANGE = (1.0, 4.0)
#: Where the checkpoint keeps the backbone and the regression head: Mantis'
#: ``Idefics2ForSequenceClassification`` names its backbone ``model`` and its head ``score`` (biased).
BACKBONE_PREFIX = "model."
HEAD_WEIGHT = "score.weight"
HEAD_BIAS = "score.bias"
#: A sharded checkpoint's map from tensor name to shard file, or the single file of an unsharded one.
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

#: The query VideoScore was trained on, part of the model's input contract, so kept verbatim (note the
#: trailing space after "sub-score,"). Source: TIGER-AI-Lab/VideoScore, examples/run_videoscore.py,
#: REGRESSION_QUERY_PROMPT, commit 194736f913018188105a6e0c2b0667eff5bd3be5 (same text in the
#: TIGER-Lab/VideoScore-v1.1 model card).
QUERY_PROMPT = (
    "\n"
    "Suppose you are an expert in judging and evaluating the quality of AI-generated videos,\n"
    "please watch the following frames of a given video and see the text prompt for generating the video,\n"
    "then give scores from 5 different dimensions:\n"
    "(1) visual quality: the quality of the video in terms of clearness, resolution, brightness, and color\n"
    "(2) temporal consistency, both the consistency of objects or humans and the smoothness of motion or "
    "movements\n"
    "(3) dynamic degree, the degree of dynamic changes\n"
    "(4) text-to-video alignment, the alignment between the text prompt and the video content\n"
    "(5) factual consistency, the consistency of the video content with the common-sense and factual "
    "knowledge\n"
    "\n"
    "for each dimension, output a float number from 1.0 to 4.0,\n"
    "the higher the number is, the better the video performs in that sub-score, \n"
    "the lowest 1.0 means Bad, the highest 4.0 means Perfect/Real (the video is like a real video)\n"
    "Here is an output example:\n"
    "visual quality: 3.2\n"
    "temporal consistency: 2.7\n"
    "dynamic degree: 4.0\n"
    "text-to-video alignment: 2.3\n"
    "factual consistency: 1.8\n"
    "\n"
    'For this video, the text prompt is "{text_prompt}",\n'
    "all the frames of video are as follows:\n"
)
IMAGE_PLACEHOLDER = "<image> "

#: The real backbone's config, for shape checks on the ``meta`` device without a download
#: (tests/test_eval_videoscore.py). Vision and vocabulary as written in HuggingFaceM4/idefics2-8b(-base)'s
#: config.json (SigLIP so400m: 27 layers, width 1152, MLP 4304, 16 heads, patch 14 at 980 px; 32003 tokens
#: once ``<fake_token_around_image>``, ``<image>`` and ``<end_of_utterance>`` are added to Mistral's 32000),
#: which VideoScore inherits through TIGER-Lab/Mantis-8B-Idefics2 (image token 32001, untied embeddings);
#: the perceiver and the Mistral-7B text model are left to Idefics2's defaults there, so they are spelt out.
IDEFICS2_8B_CONFIG: dict[str, Any] = {
    "image_token_id": 32001,
    "tie_word_embeddings": False,
    "vision_config": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 980,
        "patch_size": 14,
    },
    "perceiver_config": {
        "hidden_size": 4096,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "resampler_n_latents": 64,
        "resampler_depth": 3,
        "resampler_n_heads": 16,
        "resampler_head_dim": 96,
        "num_key_value_heads": 4,
    },
    "text_config": {
        "model_type": "mistral",
        "vocab_size": 32003,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "sliding_window": 4096,
        "rms_norm_eps": 1e-5,
        "pad_token_id": 0,
    },
}

_MODELS: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}


def frame_indices(num_frames: int, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """Which frames VideoScore looks at: all of them up to ``max_frames``, else ``arange(0, T, T/max)``
    floored, VideoScore's own pick (evenly spaced from frame 0; float steps can give ``max_frames + 1``
    indices for some lengths, and the reference passes those on, so this does too)."""
    if num_frames <= max_frames:
        return np.arange(num_frames)
    return np.arange(0, num_frames, num_frames / max_frames).astype(int)


def query_text(prompt: str, num_frames: int) -> str:
    """The text the processor gets: the query with ``prompt`` filled in, then one ``<image>`` per frame."""
    return QUERY_PROMPT.format(text_prompt=prompt) + IMAGE_PLACEHOLDER * num_frames


def _checkpoint_folder(model_id: str) -> Path:
    """A local checkpoint folder as is; a Hub id through the huggingface_hub cache (the backbone needs
    every shard anyway, so the whole snapshot is fetched once)."""
    folder = Path(model_id)
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_id))


def head_file(folder: Path) -> Path:
    """The safetensors file that holds the regression head: the shard the index names for
    ``score.weight``, or the single ``model.safetensors``."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        if HEAD_WEIGHT not in weight_map:
            raise MetricError(
                f"{index} lists no {HEAD_WEIGHT!r}: not a VideoScore regression checkpoint (expected "
                f"Mantis' Idefics2ForSequenceClassification, e.g. {VIDEOSCORE_MODEL})"
            )
        path = folder / weight_map[HEAD_WEIGHT]
    else:
        path = folder / SINGLE_FILE
        if not path.is_file():
            raise MetricError(
                f"{folder} has neither {INDEX_FILE} nor {SINGLE_FILE}: the regression head "
                f"({HEAD_WEIGHT}, {HEAD_BIAS}) cannot be found; point --metric-model videoscore=PATH at a "
                f"complete copy of {VIDEOSCORE_MODEL}"
            )
    if not path.is_file():
        raise MetricError(
            f"the regression head file {path} is missing (named for {HEAD_WEIGHT} in {index.name}); "
            f"re-download {VIDEOSCORE_MODEL} or point --metric-model videoscore=PATH at a complete copy"
        )
    return path


def load_head(path: Path, hidden_size: int) -> tuple[Any, Any]:
    """``score.weight`` ``(5, hidden)`` and ``score.bias`` ``(5,)`` from one safetensors file, checked
    against the backbone's width (read with safetensors: no pickle)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        names = set(fh.keys())
        missing = [k for k in (HEAD_WEIGHT, HEAD_BIAS) if k not in names]
        if missing:
            raise MetricError(f"{path} has no {missing}: not a VideoScore regression head")
        weight, bias = fh.get_tensor(HEAD_WEIGHT), fh.get_tensor(HEAD_BIAS)
    if tuple(weight.shape) != (len(ASPECTS), hidden_size) or tuple(bias.shape) != (len(ASPECTS),):
        raise MetricError(
            f"{path}: head {HEAD_WEIGHT} {tuple(weight.shape)} / {HEAD_BIAS} {tuple(bias.shape)} does not "
            f"fit {len(ASPECTS)} aspects on a {hidden_size}-wide backbone"
        )
    return weight, bias


def _videoscore(model_id: str, device: str) -> tuple[Any, Any, Any, Any]:
    """Backbone, processor and head for ``model_id`` on ``device``, loaded once per process; the backbone
    goes straight into bf16 on CUDA (as VideoScore is run) and fp32 elsewhere, the 5x4096 head into fp32."""
    key = (model_id, device)
    if key not in _MODELS:
        import torch
        from transformers import Idefics2Config, Idefics2Model, Idefics2Processor

        folder = _checkpoint_folder(model_id)
        dtype = torch_dtype(default_compute_dtype(device))
        config: Any = Idefics2Config.from_pretrained(folder)
        hidden = int(config.text_config.hidden_size)
        weight, bias = load_head(head_file(folder), hidden)
        # transformers lists score.* as unexpected keys here: they are read above, not by the backbone.
        model = Idefics2Model.from_pretrained(folder, dtype=dtype).to(device).eval()  # type: ignore[arg-type]
        processor = Idefics2Processor.from_pretrained(folder, backend="pil")
        _MODELS[key] = (model, processor, weight.to(device, torch.float32), bias.to(device, torch.float32))
    return _MODELS[key]


class VideoScore(Metric):
    name = "videoscore"
    definition = (
        "VideoScore v1.1 (Mantis-Idefics2-8B with a 5-output regression head, trained on VideoFeedback human "
        "ratings): up to 48 evenly spaced frames and the prompt in its query template; visual quality, "
        "temporal consistency, dynamic degree, text-to-video alignment and factual consistency, each on 1-4"
    )
    normalisation = (
        "each aspect (r - 1) / 3, clipped to [0, 1] (a regression head can leave 1-4); mean of five"
    )
    relation_to_vbench = (
        "not a VBench dimension: a learned judge of generated video used beside VBench (the MedGen paper "
        "reports it); the aspects are VideoScore's own, unrounded, from transformers' Idefics2 classes."
    )
    default_models = {"": VIDEOSCORE_MODEL}

    def aspects(self, video: np.ndarray, prompt: str) -> dict[str, float]:
        """The five raw ratings (nominally 1-4) for one ``uint8 (T, H, W, 3)`` video and its prompt."""
        import torch
        from PIL import Image

        frames = check_video(video, min_frames=2, metric=self.name)
        picked = [Image.fromarray(frames[i]) for i in frame_indices(len(frames))]
        model, processor, weight, bias = _videoscore(self.models[""], self.device)
        inputs = processor(text=query_text(prompt, len(picked)), images=picked, return_tensors="pt")
        with torch.inference_mode():
            out = model(**{k: v.to(self.device) for k, v in inputs.items()}, use_cache=False)
            ratings = torch.nn.functional.linear(out.last_hidden_state[0, -1].float(), weight, bias)
        return dict(zip(ASPECTS, ratings.cpu().tolist(), strict=True))

    def score(self, video: np.ndarray, prompt: str) -> float:
        low, high = RATING_RANGE
        mapped = [(r - low) / (high - low) for r in self.aspects(video, prompt).values()]
        return float(np.clip(mapped, 0.0, 1.0).mean())
