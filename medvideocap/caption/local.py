"""The ``transformers`` backend: a local vision-language model, batched generation on one device.

Loaded through ``AutoModelForImageTextToText`` + ``AutoProcessor`` so the default Qwen2.5-VL
(``Qwen2_5_VLForConditionalGeneration``) and its successors work alike; ``trust_remote_code`` is never
set, so only architectures that ship inside transformers load.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from PIL import Image

from medvideocap.devices import resolve_device

from .base import BaseCaptioner, Job, Reply

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    if max(img.size) <= max_side:
        return img
    scale = max_side / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))


class TransformersCaptioner(BaseCaptioner):
    """Captions with a local VLM. ``batch_size`` clips go through one ``generate`` call (left padding)."""

    backend = "transformers"

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        revision: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int = 4,
        image_max_side: int = 640,
        attn_implementation: str | None = None,
        seed: int = 0,
        **common: Any,
    ):
        super().__init__(model=model, revision=revision, **common)
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = resolve_device(device)
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        self.batch_size = max(1, batch_size)
        self.parallelism = 2  # one thread decodes the next clips while the other generates
        self.image_max_side = image_max_side
        self.seed = seed
        self.params.setdefault("seed", seed)
        self._lock = threading.Lock()
        self.processor = AutoProcessor.from_pretrained(model, revision=revision, trust_remote_code=False)
        self.processor.tokenizer.padding_side = "left"
        kwargs: dict[str, Any] = {"revision": revision, "dtype": torch_dtype, "trust_remote_code": False}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        net: Any = AutoModelForImageTextToText.from_pretrained(model, **kwargs)
        self.net = net.to(self.device).eval()
        # A hub download knows its commit; a local folder has none unless the caller names one.
        self.revision = revision or getattr(self.net.config, "_commit_hash", None)

    def __repr__(self) -> str:
        return f"TransformersCaptioner(model={self.model!r}, device={self.device!r})"

    def close(self) -> None:
        self.net = None  # type: ignore[assignment]

    def _messages(self, job: Job) -> list[dict[str, Any]]:
        return [
            {"role": "system", "content": [{"type": "text", "text": job.system}]},
            {
                "role": "user",
                "content": [*({"type": "image"} for _ in job.frames), {"type": "text", "text": job.user}],
            },
        ]

    def _generate(self, jobs: list[Job]) -> list[Reply]:
        import torch

        replies: list[Reply] = []
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            texts = [
                self.processor.apply_chat_template(
                    self._messages(j), add_generation_prompt=True, tokenize=False
                )
                for j in chunk
            ]
            images = [[_shrink(f.convert("RGB"), self.image_max_side) for f in j.frames] for j in chunk]
            p = chunk[0].params
            temperature = float(p.get("temperature", 0.0))
            gen: dict[str, Any] = {"max_new_tokens": int(p.get("max_new_tokens", 512))}
            if temperature > 0:
                gen.update(do_sample=True, temperature=temperature, top_p=float(p.get("top_p", 0.9)))
            else:
                gen.update(do_sample=False)
            try:
                with self._lock, torch.inference_mode():
                    inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
                    inputs = inputs.to(self.device)
                    torch.manual_seed(self.seed + chunk[0].attempt)
                    out = self.net.generate(**inputs, **gen)
                new = out[:, inputs["input_ids"].shape[1] :]
                decoded = self.processor.batch_decode(new, skip_special_tokens=True)
                replies.extend(Reply(d.strip()) for d in decoded)
            except (torch.OutOfMemoryError, ValueError) as exc:  # OOM, a bad image: fail these clips only
                # (a TypeError, AttributeError... is a bug in this code and stops the run)
                log.warning("generation failed for %s: %s", [j.record.id for j in chunk], exc)
                replies.extend(Reply(None, f"generation failed: {type(exc).__name__}: {exc}") for _ in chunk)
        return replies
