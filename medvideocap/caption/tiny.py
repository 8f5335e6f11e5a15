"""A tiny random-initialised Qwen2.5-VL saved as a normal model folder (no download), so tests and the
demo run the ``transformers`` backend's real code path: processor, chat template, batched generation."""

from __future__ import annotations

import string
from pathlib import Path

# Qwen's special tokens, so the processor and chat template behave as with the real model.
_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "in",
    "on",
    "with",
    "and",
    "to",
    "is",
    "are",
    "surgeon",
    "doctor",
    "nurse",
    "patient",
    "hand",
    "hands",
    "gloved",
    "instrument",
    "scalpel",
    "forceps",
    "needle",
    "suture",
    "tissue",
    "skin",
    "heart",
    "lung",
    "liver",
    "bone",
    "model",
    "diagram",
    "screen",
    "ultrasound",
    "probe",
    "camera",
    "close-up",
    "view",
    "shows",
    "moves",
    "cuts",
    "holds",
    "points",
    "table",
    "room",
    "light",
    "red",
    "white",
    "blue",
]
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_vlm(out: Path, *, seed: int = 0) -> Path:
    """Write a Qwen2.5-VL with 2 text and 2 vision layers (about 0.1 M parameters), its processor and
    a word-level tokenizer built with ``tokenizers``; load it with ``model=str(out)``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for tok in [*_SPECIALS, "[UNK]", *_WORDS, *string.punctuation, *string.digits]:
        vocab.setdefault(tok, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(_SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="[UNK]"
    )
    lo, hi = 28 * 28, 56 * 56  # frames shrink to at most 4 merged patches: a handful of image tokens
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            min_pixels=lo, max_pixels=hi, patch_size=14, merge_size=2, temporal_patch_size=2
        ),
        video_processor=Qwen2VLVideoProcessor(min_pixels=lo, max_pixels=hi),
        tokenizer=tokenizer,
        chat_template=_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)

    def ids(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))  # type: ignore[arg-type]

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [1],
            "window_size": 56,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(out)
    return out
