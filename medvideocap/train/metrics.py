"""What a run reports per optimizer step: a ``metrics.jsonl`` line for every step, and every
``log_every`` steps a console line with the ETA of the whole run and the trackers' scalars (loss, LR,
grad norm, s/step, samples/s, tokens/s, peak memory, MFU on CUDA: :mod:`~medvideocap.train.throughput`).

``metrics.jsonl`` is a resume journal kept by :mod:`medvideocap.journal`, the package's one policy for
what a kill leaves: a torn last line is dropped (that step is redone), a bad line in the middle is an
error naming ``file:line``. On resume it keeps exactly the steps up to the checkpoint's, so a stopped and
resumed run's file equals an uninterrupted run's, with no step missing or twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from medvideocap.atomic import atomic_write_text
from medvideocap.journal import JournalAppender, encode_entry, read_journal
from medvideocap.plan import measured_peak, reset_peak
from medvideocap.train.config import TrainConfig
from medvideocap.train.throughput import card_peak_flops, duration, rate, transformer_flops_per_token

METRICS_FILE = "metrics.jsonl"


def _step_line(entry: Any) -> str | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
        return 'not a metrics line: expected {"step": N, "loss": ..., "lr": ...}'
    return None


def trim_metrics(path: Path, step: int) -> list[dict[str, Any]]:
    """Keep the lines of steps ``<= step`` (the resumed checkpoint's; 0 for a fresh run, which keeps
    none and reads nothing) and return them. Rewritten atomically: a kill leaves the old or new file."""
    kept: list[dict[str, Any]] = []
    if step > 0:
        kept = [e for e in read_journal(path, check=_step_line, repair=False).entries if e["step"] <= step]
    atomic_write_text(path, "".join(encode_entry(e).decode("utf-8") for e in kept), fsync=False)
    return kept


class StepLog:
    """The per-step reporting of one rank; only the main process writes files and prints."""

    def __init__(
        self,
        accelerator: Any,
        cfg: TrainConfig,
        console: Any,
        *,
        stop: int,
        resumed_step: int,
        model: Any = None,
    ):
        self.accelerator, self.cfg, self.console, self.stop = accelerator, cfg, console, stop
        self.model_config, self.card_peak = model, card_peak_flops(accelerator.device)
        self.samples_per_step = cfg.batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes
        self.journal = JournalAppender(Path(cfg.output_dir) / METRICS_FILE, durable=False)
        if accelerator.is_main_process:
            trim_metrics(self.journal.path, resumed_step)
        self.t_last, self.steps_since = time.perf_counter(), 0
        # loading (fp32 shards read into bf16, say) can peak above every step: the logged peak is the
        # steps' own, so a memory rung's effect shows (the whole run's peak is still printed at the end)
        self.device = str(accelerator.device)
        self.load_peak = measured_peak(self.device)
        reset_peak(self.device)
        self.first = True

    def __call__(self, step: int, loss: float, lr: float, grad_norm: Any, tokens_per_sample: int) -> None:
        """Record one finished optimizer step (``loss`` already averaged over ranks)."""
        self.steps_since += 1
        if self.accelerator.is_main_process:
            self.journal.append({"step": step, "loss": loss, "lr": lr})
        if step % self.cfg.log_every and step != self.stop:
            return
        step_time = (time.perf_counter() - self.t_last) / self.steps_since
        samples_s = self.samples_per_step / step_time
        logs = {
            "loss": loss,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "step_time_s": step_time,
            "samples_per_s": samples_s,
            "tokens_per_s": samples_s * tokens_per_sample,
            "peak_memory_gib": measured_peak(self.device, since_reset=True) / 2**30,
        }
        mfu = ""
        if self.card_peak and self.model_config is not None:
            per_token = transformer_flops_per_token(
                self.model_config, tokens_per_sample, self.cfg.text_seq_len
            )
            logs["mfu"] = (
                3 * per_token * logs["tokens_per_s"] / self.accelerator.num_processes / self.card_peak
            )
            mfu = f"  MFU {logs['mfu']:.1%}"
        self.accelerator.log(logs, step=step)
        if self.accelerator.is_main_process and self.first:
            self.console.print(
                f"memory: loading peaked at {self.load_peak / 2**30:.2f} GiB; training at "
                f"{logs['peak_memory_gib']:.2f} GiB by step {step}",
                soft_wrap=True,
            )
        self.first = False
        if self.accelerator.is_main_process:
            eta = duration((self.cfg.max_steps - step) * step_time)
            self.console.print(
                f"step {step:>7}/{self.cfg.max_steps}  loss {loss:.4f}  lr {lr:.2e}  grad {logs['grad_norm']:.3f}  "
                f"{rate(1 / step_time)}  {samples_s:.3g} samples/s  {logs['tokens_per_s']:.3g} tok/s  "
                f"peak {logs['peak_memory_gib']:.2f} GiB{mfu}  ETA {eta} to step {self.cfg.max_steps}",
                soft_wrap=True,
            )
        self.t_last, self.steps_since = time.perf_counter(), 0

    def close(self) -> None:
        self.journal.close()
