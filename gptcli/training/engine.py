"""The training loop both `train` and `finetune` run, on Hugging Face accelerate.

accelerate owns devices, mixed precision and distribution (DDP under
`torchrun`, gloo on CPU); this module owns the schedule, evaluation,
checkpoints and stopping. The hot loop avoids host syncs: the loss is read
back (`.item()`) only on logging steps.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gptcli.errors import Interrupted
from gptcli.training import checkpoint
from gptcli.training.metrics import MetricsFile
from gptcli.training.packing import IGNORE, Blocks
from gptcli.training.progress import Reporter, format_duration
from gptcli.training.sampler import BlockSampler
from gptcli.training.settings import TrainSettings
from gptcli.training.signals import StopRequest


@dataclass
class Job:
    """What a command hands the engine."""

    model: Any  # an nn.Module on CPU, fp32 (possibly a peft model)
    train: Blocks
    val: Blocks | None
    settings: TrainSettings
    out: Path
    steps: int
    lr: float
    write_model: Callable[[Any, Path], None]  # (unwrapped model, folder) -> HF files + tokenizer
    resume_from: Path | None = None
    resume_state: dict[str, Any] | None = None  # checkpoint.load_state(resume_from)
    resume_command: str = ""
    extra_summary: dict[str, Any] = field(default_factory=dict)
    # set by run(): the trained (unwrapped) model and whether this process writes the outputs
    final_model: Any = None
    is_main: bool = True


def mixed_precision(precision: str, device_type: str) -> str:
    """accelerate's name for --precision on this device.

    auto: bf16 (else fp16) on CUDA; bf16 on CPUs that compute it natively (AVX512-BF16/AMX),
    where the nanoGPT baby model trains ~1.25x faster per step (benchmarks/train_speed.py);
    fp32 elsewhere. Weights and optimizer state stay fp32 either way.
    """
    if precision == "auto":
        if device_type == "cuda":
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device_type == "cpu":
            from gptcli.runtime import cpu_has_native_bf16

            return "bf16" if cpu_has_native_bf16() else "no"
        return "no"
    if precision == "fp16" and device_type == "cpu":
        from gptcli.errors import UsageError

        raise UsageError("--precision fp16 needs a GPU; on CPU use bf16 (or fp32).")
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def make_accelerator(settings: TrainSettings, device_type: str) -> Any:
    from accelerate import Accelerator

    return Accelerator(cpu=device_type == "cpu", mixed_precision=mixed_precision(settings.precision, device_type))


def lr_lambda(steps: int, warmup: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup, then cosine or linear decay to min_ratio * lr (nanoGPT's get_lr)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant" or steps <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        if schedule == "linear":
            return min_ratio + (1 - min_ratio) * (1 - progress)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def use_eager_attention(model: Any) -> None:
    """On CPU under bf16 autocast, PyTorch's fused SDPA backward is the slowest op of a step
    (45% of it for the nanoGPT baby model); plain matmul + softmax attention trains 1.5x faster
    there (measured for 128- and 256-wide models). Only the training run changes: the saved
    config does not record it, so inference keeps SDPA."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        return
    try:
        setter("eager")
    except (ValueError, NotImplementedError, TypeError):
        pass  # an architecture without an eager path keeps its default


def make_optimizer(model: Any, s: TrainSettings, lr: float) -> Any:
    """AdamW; weight decay on matrices only (not biases, norms); fused kernel when available."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(s.beta1, s.beta2), fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=(s.beta1, s.beta2), foreach=True)


def _loss(logits: Any, y: Any, masked: bool) -> Any:
    import torch.nn.functional as F

    flat = logits.float().view(-1, logits.size(-1))
    if not masked:
        return F.cross_entropy(flat, y.reshape(-1))
    # Mean over the tokens that carry a loss; a micro-batch with none contributes 0, not NaN.
    total = F.cross_entropy(flat, y.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return total / (y != IGNORE).sum().clamp(min=1)


def evaluate(model: Any, val: Blocks, batch_size: int, max_batches: int, device: Any, autocast: Any) -> float:
    """Mean loss over up to max_batches batches spread evenly over the validation blocks."""
    import torch

    n = len(val)
    count = min(n, batch_size * max_batches)
    picks = torch.linspace(0, n - 1, count).round().long() if count < n else torch.arange(n)
    masked = val.mask is not None
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    weight = 0.0
    with torch.no_grad(), autocast():
        for i in range(0, len(picks), batch_size):
            x, y = val.batch(picks[i:i + batch_size])
            x, y = x.to(device), y.to(device)
            logits = model(input_ids=x).logits
            loss = _loss(logits, y, masked)
            w = float((y != IGNORE).sum()) if masked else float(y.numel())
            total += loss.double().cpu() * w
            weight += w
    if was_training:
        model.train()
    return float(total / max(weight, 1.0))


def run(job: Job, reporter_enabled: bool = True) -> dict[str, Any]:
    import torch

    s = job.settings
    from gptcli.runtime import resolve_device

    device = resolve_device(s.device)
    if device.type == "cuda" and device.index is not None and "LOCAL_RANK" not in os.environ:
        torch.cuda.set_device(device.index)  # accelerate uses the current device: honour --device cuda:N
    acc = make_accelerator(s, device.type)
    main = acc.is_main_process
    model = job.model
    if device.type == "cpu" and acc.mixed_precision == "bf16":
        use_eager_attention(model)
    optimizer = make_optimizer(model, s, job.lr)
    min_ratio = (s.min_lr if s.min_lr is not None else job.lr / 10) / job.lr
    warmup = s.warmup if s.warmup is not None else min(1000, job.steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(job.steps, warmup, s.schedule, min_ratio))
    model, optimizer = acc.prepare(model, optimizer)
    raw_model = acc.unwrap_model(model)

    start, tokens_seen, best_val, last_val = 0, 0, None, None
    if job.resume_from is not None:
        state = job.resume_state or checkpoint.load_state(job.resume_from)
        job_load_weights(raw_model, job.resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])  # dropout continues where it stopped
        start, tokens_seen, best_val = int(state["step"]), int(state["tokens_seen"]), state.get("best_val")

    sampler = BlockSampler(len(job.train), s.batch_size, s.grad_accum, acc.num_processes, acc.process_index, s.seed,
                           block_size=job.train.block_size, stream_len=len(job.train.ids))
    eval_every = s.eval_every if s.eval_every is not None else max(1, job.steps // 10)
    save_every = s.save_every if s.save_every is not None else max(1, job.steps // 5)
    step_delay = float(os.environ.get("GPTCLI_TEST_STEP_DELAY", "0") or 0)  # tests: make a run slow enough to kill
    log_every = s.log_every or max(1, min(100, job.steps // 50))
    metrics = MetricsFile(job.out, enabled=main, resume_step=start if job.resume_from else None)
    reporter = Reporter(job.steps, start, enabled=main and reporter_enabled)
    if job.resume_from is not None:
        reporter.message(f"resumed from {job.resume_from} at step {start}")
    masked = job.train.mask is not None
    tokens_per_step = sampler.samples_per_step * job.train.block_size
    stop = StopRequest(distributed=acc.num_processes > 1)

    def autocast():
        return acc.autocast() if acc.mixed_precision != "no" else nullcontext()

    def save(step: int) -> None:
        if main:
            state = {
                "step": step, "tokens_seen": tokens_seen, "best_val": best_val,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": checkpoint.rng_state(), "world_size": acc.num_processes,
            }
            checkpoint.save(job.out, step, lambda folder: job.write_model(raw_model, folder), state, s.keep_checkpoints)
        acc.wait_for_everyone()

    def do_eval(step: int) -> None:
        nonlocal best_val, last_val
        if job.val is None:
            return
        val_loss = last_val = evaluate(model, job.val, s.batch_size, s.eval_batches, acc.device, autocast)
        is_best = best_val is None or val_loss < best_val
        best_val = val_loss if is_best else best_val
        metrics.write({"step": step, "val_loss": round(val_loss, 6), "tokens": tokens_seen})
        reporter.evaluated(step, val_loss, is_best)

    model.train()
    step = start
    wall0 = time.perf_counter()
    train_time = 0.0  # seconds spent in optimizer steps (not evaluation or saving)
    loss_sum = torch.zeros((), device=acc.device)
    loss_n = 0
    last_loss = None
    t_window = 0.0  # train_time at the start of the current logging window
    interrupted = False
    with stop:
        while step < job.steps:
            t0 = time.perf_counter()
            for micro in range(s.grad_accum):
                x, y = job.train.batch_at(sampler.starts(step, micro))
                x, y = x.to(acc.device, non_blocking=True), y.to(acc.device, non_blocking=True)
                sync = acc.no_sync(model) if micro < s.grad_accum - 1 and acc.num_processes > 1 else nullcontext()
                with sync, autocast():
                    logits = model(input_ids=x).logits
                    loss = _loss(logits, y, masked)
                acc.backward(loss / s.grad_accum if s.grad_accum > 1 else loss)
                loss_sum += loss.detach()
                loss_n += 1
            if s.grad_clip > 0:
                acc.clip_grad_norm_(model.parameters(), s.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            train_time += time.perf_counter() - t0
            if step_delay:
                time.sleep(step_delay)

            if step % log_every == 0 or step == job.steps:
                last_loss = float(loss_sum) / max(loss_n, 1)
                if acc.num_processes > 1:
                    last_loss = float(acc.reduce(torch.tensor(last_loss, device=acc.device), "mean"))
                now = time.perf_counter()
                window_steps = loss_n / s.grad_accum
                rate = window_steps * tokens_per_step / max(train_time - t_window, 1e-9)  # excludes eval/saving
                eta = (job.steps - step) * train_time / max(step - start, 1)
                lr_now = scheduler.get_last_lr()[0]
                metrics.write({"step": step, "loss": round(last_loss, 6), "lr": lr_now, "tokens": tokens_seen,
                               "tokens_per_s": round(rate, 1), "elapsed_s": round(now - wall0, 3)})
                reporter.step(step, last_loss, lr_now, rate, eta)
                loss_sum.zero_()
                loss_n, t_window = 0, train_time
            if stop.requested():
                interrupted = True
                break
            if eval_every and step % eval_every == 0 and step < job.steps:
                do_eval(step)
            if save_every and step % save_every == 0 and step < job.steps:
                save(step)

        if interrupted:
            reporter.close()
            save(step)
            metrics.close()
            raise Interrupted(f"training stopped at step {step}/{job.steps}; checkpoint saved.",
                              hint=f"Resume with: {job.resume_command}")
        if job.val is not None and (step > start or best_val is None):
            do_eval(step)
        if step > start or not checkpoint.list_checkpoints(checkpoint.checkpoints_dir(job.out)):
            save(step)
    reporter.close()
    metrics.close()
    wall = time.perf_counter() - wall0
    steps_done = step - start
    summary = {
        "out": str(job.out),
        "steps": step,
        "best_val_loss": None if best_val is None else round(best_val, 6),
        "final_val_loss": None if last_val is None else round(last_val, 6),
        "final_loss": None if last_loss is None else round(last_loss, 6),
        "tokens_seen": tokens_seen,
        "wall_s": round(wall, 3),
        "ms_per_step": round(1000 * train_time / steps_done, 3) if steps_done else None,
        "tokens_per_s": round(steps_done * tokens_per_step / train_time, 1) if train_time > 0 else None,
        "world_size": acc.num_processes,
        "precision": {"no": "fp32"}.get(acc.mixed_precision, acc.mixed_precision),
        **job.extra_summary,
    }
    job.final_model, job.is_main = raw_model, main
    if main:
        reporter_line = (f"done: {step} steps in {format_duration(wall)}"
                         + (f" | best val loss {best_val:.4f}" if best_val is not None else "")
                         + f" | {tokens_seen:,} tokens")
        if reporter_enabled:
            from gptcli.console import info

            info(reporter_line)
    return summary


def job_load_weights(model: Any, folder: Path) -> None:
    """Load a checkpoint's weights into the freshly built model (full model or LoRA adapter)."""
    from safetensors.torch import load_file

    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(adapter))
        return
    state: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k}
    if set(missing) - tied or unexpected:
        from gptcli.errors import InputError

        raise InputError(f"checkpoint {folder} does not match this model "
                         f"({len(set(missing) - tied)} missing, {len(unexpected)} unexpected tensors).")
