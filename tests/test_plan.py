"""The memory planner (medvideocap/plan.py): its exact terms are hand arithmetic on the real models'
parameter counts, its estimates move the right way, it never materialises a weight, and every command's
``--plan`` prints it without loading one (a folder of configs and no weights plans fine)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from medvideocap import plan
from medvideocap.cli import main
from medvideocap.defaults import WAN_T2V_14B
from medvideocap.generate import GenerationSettings
from medvideocap.models import UMT5_XXL_ENCODER_CONFIG, WAN_1_3B_TRANSFORMER_CONFIG, WAN_VAE_CONFIG
from medvideocap.train import load_config

N_TRANSFORMER = 1_418_996_800
N_UMT5 = 5_680_910_336
N_VAE = 126_892_531
LORA_R32 = 30 * 2 * 4 * 32 * (1536 + 1536)  # blocks x (self, cross) x (q, k, v, out) x rank x (in + out)
# Wan's modules diffusers keeps in fp32 in a bf16 load: per block scale_shift_table (6 x 1536) and norm2's
# affine (2 x 1536; norm1/norm3 have none), the head's scale_shift_table (2 x 1536), the time embedder.
WAN_FP32_KEPT = 30 * (6 * 1536 + 2 * 1536) + 2 * 1536 + (256 * 1536 + 1536) + (1536 * 1536 + 1536)


def _step(p: plan.Plan) -> plan.Stage:
    (stage,) = [s for s in p.stages if s.name.startswith("train step")]
    return stage


def _real_config_folder(root: Path) -> Path:
    """A pipeline folder with the real configs and no weights: anything that loads a weight fails."""
    for part, config in (
        ("transformer", {"_class_name": "WanTransformer3DModel", **WAN_1_3B_TRANSFORMER_CONFIG}),
        ("vae", {"_class_name": "AutoencoderKLWan", **WAN_VAE_CONFIG}),
        (
            "text_encoder",
            {"model_type": "umt5", "architectures": ["UMT5EncoderModel"], **UMT5_XXL_ENCODER_CONFIG},
        ),
    ):
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text(json.dumps(config, default=list))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    return root


def test_full_fine_tune_exact_terms_are_20_bytes_per_parameter_28_4_gb() -> None:
    """fp32 weights + fp32 grads + two fp32 AdamW moments + fp32 EMA = 20 B x 1.419B: the 28.4 GB the
    shipped full config's comment got wrong (it said ~21 GB)."""
    step = _step(plan.plan_train(load_config("medgen-1.3b-full"), device="cuda"))
    assert (step.weights, step.grads, step.optimizer, step.ema) == (
        4 * N_TRANSFORMER,
        4 * N_TRANSFORMER,
        8 * N_TRANSFORMER,
        4 * N_TRANSFORMER,
    )
    assert step.exact == 20 * N_TRANSFORMER == 28_379_936_000
    assert round(step.exact / 1e9, 1) == 28.4


def test_lora_exact_terms_are_the_bf16_base_plus_fp32_adapters() -> None:
    step = _step(plan.plan_train(load_config("medgen-1.3b-lora"), device="cuda"))
    base = 2 * (N_TRANSFORMER - WAN_FP32_KEPT) + 4 * WAN_FP32_KEPT
    assert step.weights == base + 4 * LORA_R32
    assert (step.grads, step.optimizer, step.ema) == (4 * LORA_R32, 8 * LORA_R32, 4 * LORA_R32)


def test_lora_count_is_what_peft_adds_to_the_real_architecture() -> None:
    from medvideocap.train import build_transformer

    with torch.device("meta"):
        from diffusers import WanTransformer3DModel

        real = WanTransformer3DModel(**WAN_1_3B_TRANSFORMER_CONFIG)
        model = build_transformer(load_config("medgen-1.3b-lora"), torch.bfloat16, transformer=real)
    added = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert plan.shipped_models().lora_params(32, ["to_q", "to_k", "to_v", "to_out.0"]) == added == LORA_R32


def test_the_fp32_rule_is_the_one_diffusers_applies_when_loading(tmp_path: Path) -> None:
    """The kept-in-fp32 count is checked against a real bf16 load of a (tiny) saved transformer."""
    from diffusers import WanTransformer3DModel

    from medvideocap.tiny import tiny_transformer

    tiny_transformer().save_pretrained(tmp_path / "t")
    loaded = WanTransformer3DModel.from_pretrained(tmp_path / "t", dtype=torch.bfloat16)
    fp32 = sum(p.numel() for p in loaded.parameters() if p.dtype == torch.float32)
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    count = plan.Models(config, WAN_VAE_CONFIG, {}, "tiny").transformer_count()
    assert count.fp32_kept == fp32 > 0
    assert count.weight_bytes("bfloat16") == sum(p.numel() * p.element_size() for p in loaded.parameters())
    shipped = plan.shipped_models().transformer_count()
    assert (shipped.params, shipped.fp32_kept, shipped.blocks) == (
        N_TRANSFORMER,
        WAN_FP32_KEPT,
        30 * 46_440_704,
    )


def test_encode_plan_holds_umt5_in_bf16_beside_the_vae() -> None:
    """The default encode-latents run on the CPU: UMT5-XXL in bf16 (11.36 GB, not the fp32 22.7 GB that
    killed it) beside the fp32 VAE."""
    p = plan.plan_encode(device="cpu")
    text = [s for s in p.stages if "text" in s.name]
    assert text[-1].weights == 2 * N_UMT5 + 4 * N_VAE
    assert max(p.host_peak(s) for s in text) < 16 * plan.GIB


def _stage(p: plan.Plan, prefix: str) -> int:
    (stage,) = [s for s in p.stages if s.name.startswith(prefix)]
    return p.device_peak(stage)


def test_predicted_peak_grows_with_frames() -> None:
    cfg = load_config("medgen-1.3b-lora", ["validation_prompts=[]"])  # validation samples at its own size
    sizes = [(5, 240, 416), (17, 240, 416), (49, 480, 832), (81, 480, 832)]
    for device in ("cpu", "cuda"):  # the step's peak (on the CPU a small step peaks below the model's read)
        train = [_step(plan.plan_train(cfg, frames=s, device=device)).on_device for s in sizes]
        assert train == sorted(train) and len(set(train)) == len(train)
    # generate's overall peak is the text encoder's phase (one model at a time): the denoise step and the
    # VAE decode are what grow with the video
    for phase in ("denoise", "VAE decode"):
        gen = [
            _stage(plan.plan_generate(GenerationSettings(frames=f, height=h, width=w), device="cuda"), phase)
            for f, h, w in sizes
        ]
        assert gen == sorted(gen) and len(set(gen)) == len(gen), phase


def test_gradient_checkpointing_reduces_the_activation_term() -> None:
    for name in ("medgen-1.3b-lora", "medgen-1.3b-full"):
        on = _step(plan.plan_train(load_config(name, ["gradient_checkpointing=true"]), device="cuda"))
        off = _step(plan.plan_train(load_config(name, ["gradient_checkpointing=false"]), device="cuda"))
        assert on.activations < off.activations / 4
        assert on.exact == off.exact


def test_vae_tiling_caps_the_encode_working_set() -> None:
    big = plan.vae_encode_activations(81, 720, 1280, dtype_bytes=2, tiling=False)
    tiled = plan.vae_encode_activations(81, 720, 1280, dtype_bytes=2, tiling=True)
    assert tiled < big / 2


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_planning_materialises_nothing() -> None:
    """Counting 7.2B parameters on the meta device: well under a second and no large allocation."""
    plan.plan_encode(device="cpu")  # imports (diffusers, transformers) happen once per process
    plan._count.cache_clear()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set to now
    before = _hwm()
    started = time.process_time()  # this process's CPU time: the test machine may be busy
    plans = [
        plan.plan_encode(device="cpu"),
        plan.plan_train(load_config("medgen-1.3b-full"), device="cuda"),
        plan.plan_generate(GenerationSettings(), device="cuda"),
    ]
    seconds = time.process_time() - started
    assert seconds < 1.0
    assert _hwm() - before < 200 * 2**20
    assert all(p.peak > 10 * plan.GIB for p in plans)


def test_render_plan_names_every_stage_term_and_the_peak() -> None:
    p = plan.plan_train(load_config("medgen-1.3b-full"), device="cuda")
    text = plan.render_plan(p)
    for stage in p.stages:
        assert stage.name in text
    for column in ("weights", "grads", "optimizer", "EMA", "activations*", "transient*", "device peak"):
        assert column in text
    assert f"predicted peak: {p.peak / plan.GIB:.2f} GiB (device)" in text
    assert "exact" in text and "estimates" in text


@pytest.mark.parametrize("verb", ["encode-latents", "train", "generate", "eval"])
def test_plan_flag_prints_the_plan_and_exits_without_loading_weights(verb: str, tmp_path: Path) -> None:
    model = _real_config_folder(tmp_path / "model")
    args = {
        "encode-latents": [
            "encode-latents",
            str(tmp_path / "src"),
            "--out",
            str(tmp_path / "o"),
            "--vae",
            str(model),
        ],
        "train": ["train", "--config", "medgen-1.3b-full", "--set", f"model_id={model}"],
        "generate": [
            "generate",
            "--checkpoint",
            str(model),
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "v.mp4"),
        ],
        "eval": [
            "eval",
            "--checkpoint",
            str(model),
            "--out",
            str(tmp_path / "e"),
            "--metrics",
            "temporal_flickering",
        ],
    }[verb]
    result = CliRunner().invoke(
        main, [*args, "--device", "cuda", "--plan"] if verb != "train" else [*args, "--plan"]
    )
    assert result.exit_code == 0, result.output
    assert f"memory plan: {verb}" in result.output and "predicted peak:" in result.output
    assert str(model) in result.output  # planned from the folder's configs
    if verb == "train":
        assert "train step" in result.output and "26.43" in result.output  # 20 B x 1.419B = 26.43 GiB exact
    assert not (tmp_path / "o").exists() and not (tmp_path / "v.mp4").exists()


def test_a_real_run_prints_its_measured_peak_beside_the_plan(tmp_path: Path) -> None:
    from medvideocap.tiny import save_tiny_pipeline

    model = save_tiny_pipeline(tmp_path / "tiny")
    out = tmp_path / "v.mp4"
    args = ["generate", "--checkpoint", str(model), "--prompt", "a suture", "--out", str(out)]
    result = CliRunner().invoke(
        main, [*args, "--frames", "5", "--height", "32", "--width", "32", "--steps", "2"]
    )
    assert result.exit_code == 0, result.output
    assert out.is_file()
    line = [ln for ln in result.output.splitlines() if ln.startswith("memory: measured peak")]
    assert line and "host RSS; planned" in line[0]


def test_run_watched_measures_the_peak_and_kills_above_the_limit() -> None:
    grow = "import time; b = bytearray({}); time.sleep(0.5)"
    ok = plan.run_watched([sys.executable, "-c", grow.format(200 << 20)], limit_bytes=2 << 30)
    assert ok.returncode == 0 and ok.peak_rss > 200 << 20 and not ok.reason
    grow = "import time\nb = []\nfor _ in range(100):\n    b.append(bytearray(20 << 20)); time.sleep(0.05)"
    killed = plan.run_watched([sys.executable, "-c", grow], limit_bytes=300 << 20)
    assert killed.returncode != 0 and "killed at" in killed.reason
    assert killed.peak_rss < 1 << 30


def test_a_lora_checkpoint_is_planned_on_the_base_it_names_plus_its_adapter_file(tmp_path: Path) -> None:
    from medvideocap.generate import LORA_FILE, RUN_FILE

    base = _real_config_folder(tmp_path / "base")
    lora = tmp_path / "run" / "final"
    lora.mkdir(parents=True)
    (lora / LORA_FILE).write_bytes(b"\0" * 1000)
    (lora / RUN_FILE).write_text(json.dumps({"model_id": str(base)}))
    settings = GenerationSettings(frames=5, height=240, width=416)
    with_lora = plan.plan_generate(settings, checkpoint=lora, device="cuda", dtype="bfloat16")
    alone = plan.plan_generate(settings, checkpoint=base, device="cuda", dtype="bfloat16")
    loads = [s.weights for s in with_lora.stages if s.name.startswith("load transformer")]
    assert loads == [s.weights + 1000 for s in alone.stages if s.name.startswith("load transformer")]
    assert loads
    assert str(base) in with_lora.models


def test_reading_fp32_shards_into_bf16_plans_the_mapped_file_pages(tmp_path: Path) -> None:
    """A bf16 load of fp32 shards maps every shard while diffusers' kept-fp32 modules view it (measured:
    6.1 GB above the 2.84 GB transformer); a load in the stored dtype adds only the loader's overhead.
    Shard sizes come from the folder (sparse files here: only their size is read)."""
    model = _real_config_folder(tmp_path / "model")
    shard = model / "transformer" / "diffusion_pytorch_model.safetensors"
    lora = load_config("medgen-1.3b-lora", [f"model_id={model}", "validation_prompts=[]"])
    full = load_config("medgen-1.3b-full", [f"model_id={model}", "validation_prompts=[]"])
    overhead = plan.LOAD_OVERHEAD_SHARE
    with shard.open("wb") as f:
        f.truncate(4 * N_TRANSFORMER)  # stored in float32
    assert plan.plan_train(lora, device="cpu").stages[0].transient == 4 * N_TRANSFORMER + int(
        overhead * (2 * (N_TRANSFORMER - WAN_FP32_KEPT) + 4 * WAN_FP32_KEPT)
    )
    assert plan.plan_train(full, device="cpu").stages[0].transient == 0  # the weights are the file's pages
    on_cuda = plan.plan_train(lora, device="cuda").stages[0]
    assert on_cuda.host > 4 * N_TRANSFORMER and on_cuda.transient == 0  # read on the host, then moved


# ---------------------------------------------------------------------------------------------- the ladder
# One Wan-1.3B block by hand: self- and cross-attention q/k/v/out (1536 x 1536 + bias each) and the FFN
# (1536 -> 8960 -> 1536): what layerwise casting stores in fp8; the rest of a block (norms, the modulation
# table) is 12,288 parameters the loader keeps in fp32.
BLOCK_LINEARS = 8 * (1536 * 1536 + 1536) + (1536 * 8960 + 8960) + (8960 * 1536 + 1536)
BLOCK_KEPT = 6 * 1536 + 2 * 1536
BLOCK_BF16 = 2 * (46_440_704 - BLOCK_KEPT) + 4 * BLOCK_KEPT


def _lora_step(*overrides: str, device: str = "cuda") -> plan.Stage:
    return _step(plan.plan_train(load_config("medgen-1.3b-lora", list(overrides)), device=device))


def test_fp8_base_saves_one_byte_per_cast_parameter_and_nothing_else() -> None:
    plain, fp8 = _lora_step(), _lora_step("base_weights_dtype=float8_e4m3fn")
    assert plan.shipped_models().fp8_cast().params == 30 * BLOCK_LINEARS == 1_392_668_160
    assert plain.weights - fp8.weights == 30 * BLOCK_LINEARS  # bf16 (2 bytes) -> fp8 (1 byte)
    assert (fp8.grads, fp8.optimizer, fp8.ema) == (plain.grads, plain.optimizer, plain.ema)


def test_the_plans_fp8_count_is_what_diffusers_casts_in_a_real_lora_model() -> None:
    from medvideocap.tiny import tiny_transformer
    from medvideocap.train import build_transformer

    tiny = tiny_transformer()
    counted = plan.Models(dict(tiny.config), WAN_VAE_CONFIG, {}, "tiny").fp8_cast().params
    cfg = load_config("medgen-1.3b-lora", ["base_weights_dtype=float8_e4m3fn"])
    model = build_transformer(cfg, torch.bfloat16, transformer=tiny)
    cast = sum(p.numel() for p in model.parameters() if p.dtype == torch.float8_e4m3fn)
    assert counted == cast > 0


def test_block_offload_moves_all_but_two_blocks_to_the_host_on_cuda_only() -> None:
    plain, off = _lora_step(), _lora_step("offload_frozen_blocks=true")
    assert plain.weights - off.weights == 28 * BLOCK_BF16
    assert off.host - plain.host == 30 * BLOCK_BF16
    both = _lora_step("offload_frozen_blocks=true", "base_weights_dtype=float8_e4m3fn")
    assert off.weights - both.weights == 2 * BLOCK_LINEARS  # the two resident blocks, in fp8
    assert off.host - both.host == 30 * BLOCK_LINEARS
    cpu_plain, cpu_off = (_lora_step(f"offload_frozen_blocks={o}", device="cpu") for o in ("false", "true"))
    assert cpu_off == dataclasses.replace(cpu_plain, note=cpu_off.note)  # on a CPU the host is the device


def test_adamw8bit_state_is_about_2_bytes_per_parameter_instead_of_8() -> None:
    plain, small = _lora_step(), _lora_step("optimizer=adamw8bit")
    assert plain.optimizer == 8 * LORA_R32
    # 480 adapter tensors of 32 x 1536: two uint8 moments plus an fp32 absmax per 256 elements each, and
    # the two shared 256-entry quantisation maps
    assert small.optimizer == 480 * (2 * 32 * 1536 + 2 * 4 * (32 * 1536 // 256)) + 2 * 256 * 4
    assert 2.0 < small.optimizer / LORA_R32 < 2.1
    assert (small.weights, small.grads, small.ema) == (plain.weights, plain.grads, plain.ema)


def test_adamw8bit_bytes_are_what_bitsandbytes_allocates() -> None:
    """The formula against the library's own state after one step, on tensors either side of its
    4096-element minimum (smaller ones keep fp32 state)."""
    import bitsandbytes as bnb

    params = [torch.nn.Parameter(torch.randn(n)) for n in (100, 4095, 4096, 5000, 70_000)]
    optimizer = bnb.optim.AdamW8bit(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    seen: set[int] = set()
    allocated = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.numel() > 1 and id(value) not in seen:
                seen.add(id(value))  # the quantisation maps are one tensor shared by every parameter
                allocated += value.numel() * value.element_size()
    assert plan.adamw8bit_state_bytes(p.numel() for p in params) == allocated


def test_each_rung_lowers_the_predicted_cuda_peak() -> None:
    rungs = [
        [],
        ["optimizer=adamw8bit"],
        ["optimizer=adamw8bit", "base_weights_dtype=float8_e4m3fn"],
        ["optimizer=adamw8bit", "base_weights_dtype=float8_e4m3fn", "offload_frozen_blocks=true"],
    ]
    peaks = [_lora_step("validation_prompts=[]", *r).on_device for r in rungs]
    assert peaks == sorted(peaks, reverse=True) and len(set(peaks)) == len(peaks)


# ---------------------------------------------------------------------------------------------- world size
def test_fsdp_on_8_gpus_is_the_sharded_terms_over_8_plus_the_gather() -> None:
    cfg = load_config("medgen-14b-full", ["validation_prompts=[]"])
    one = _step(plan.plan_train(cfg, device="cuda"))
    eight = _step(plan.plan_train(cfg, device="cuda", world_size=8, strategy="fsdp"))
    count = plan.shipped_models(WAN_T2V_14B).transformer_count()
    assert count.params == 14_288_491_584
    for term in ("weights", "grads", "optimizer", "ema"):
        assert getattr(eight, term) == -(-getattr(one, term) // 8), term
    per_block = count.blocks // 40
    # the root's parameters and two blocks in bf16, one block's fp32 gradients
    assert eight.gathered == 2 * (count.params - count.blocks) + 2 * 2 * per_block + 4 * per_block
    assert eight.on_device < plan.H100_BYTES < one.on_device
    ddp = _step(plan.plan_train(cfg, device="cuda", world_size=8, strategy="ddp"))
    assert (ddp.weights, ddp.grads, ddp.optimizer) == (one.weights, 2 * one.grads, one.optimizer)


def test_train_plan_gpus_prints_ddp_and_fsdp_per_device_for_the_14b_configs() -> None:
    full8 = CliRunner().invoke(main, ["train", "--config", "medgen-14b-full", "--plan", "--gpus", "8"])
    assert full8.exit_code == 0, full8.output
    assert "== 8 GPUs, ddp ==" in full8.output and "== 8 GPUs, fsdp ==" in full8.output
    assert "Wan2.1-T2V-14B configs" in full8.output and "14,288,491,584 trainable" in full8.output
    fits = [ln for ln in full8.output.splitlines() if ln.startswith("per device:")]
    assert len(fits) == 2 and "does not fit" in fits[0] and ": fits" in fits[1]
    lora1 = CliRunner().invoke(main, ["train", "--config", "medgen-14b-lora", "--plan", "--gpus", "1"])
    assert lora1.exit_code == 0 and "== 1 GPU, ddp ==" in lora1.output and ": fits" in lora1.output
    refused = CliRunner().invoke(main, ["train", "--config", "medgen-14b-lora", "--gpus", "8"])
    assert refused.exit_code == 2 and "add --plan" in refused.output


def test_fp8_text_encoder_saves_one_byte_per_umt5_projection_parameter() -> None:
    """UMT5-XXL's 24 layers x (q, k, v, o: 4096 x 4096; wi_0, wi_1: 4096 x 10240) go to fp8; its
    embeddings, norms and ``wo`` stay in bf16."""
    projections = 24 * (4 * 4096 * 4096 + 2 * 4096 * 10240)
    assert plan.shipped_models().text_encoder_fp8_params() == projections == 3_623_878_656
    p = plan.plan_train(load_config("medgen-1.3b-lora"), device="cuda")
    q = plan.plan_train(load_config("medgen-1.3b-lora", ["text_encoder_dtype=float8_e4m3fn"]), device="cuda")
    (v,), (w,) = ([s for s in x.stages if s.name.startswith("validation")] for x in (p, q))
    assert v.weights - w.weights == projections
    assert _step(p) == _step(q)  # only validation loads the text encoder


def test_reset_peak_starts_a_new_window_and_the_whole_run_peak_is_kept() -> None:
    """What the trainer logs per step: the peak since loading, read apart from loading's own peak."""
    big = bytearray(400 << 20)  # touched: resident
    for i in range(0, len(big), 4096):
        big[i] = 1
    loaded = plan.measured_peak("cpu")
    del big
    assert plan.reset_peak("cpu")  # Linux >= 4.0: /proc/self/clear_refs
    after = plan.measured_peak("cpu", since_reset=True)
    assert after < loaded - (300 << 20)
    # the whole run's answer still holds the load (to within the kernel's lazily synced RSS counters:
    # two reads of VmHWM a moment apart were seen to differ by 0.2 MB)
    assert plan.measured_peak("cpu") >= loaded - (8 << 20)
