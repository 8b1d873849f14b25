"""The training loop both `train` and `finetune` run, on Hugging Face accelerate.

This module owns the schedule, evaluation, checkpoints and stopping;
distributed.py owns the accelerator (DDP, FSDP2) and gathering the full state
a checkpoint holds. The hot loop avoids host syncs: the loss is read back
only on logging steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcli.errors import Interrupted
from gptcli.training import checkpoint, distributed
from gptcli.training.metrics import MetricsFile
from gptcli.training.optim import make_optimizer, make_scheduler
from gptcli.training.packing import IGNORE, Blocks
from gptcli.training.precision import use_eager_attention
from gptcli.training.progress import Reporter, format_duration
from gptcli.training.sampler import BlockSampler
from gptcli.training.settings import TrainSettings
from gptcli.training.signals import StopRequest

# Plain attention stores (T x T) scores per head for the backward pass; it trains faster on short
# blocks, while longer blocks keep SDPA's memory-light kernel.
EAGER_MAX_BLOCK = 256


@dataclass
class Job:
    """What a command hands the engine."""

    model: Any  # an nn.Module on CPU, fp32 (possibly a peft model)
    train: Blocks
    val: Blocks | None
    settings: TrainSettings
    runtime: Any  # gptcli.runtime.Runtime, resolved once by runner.setup
    rank: int
    world_size: int
    out: Path
    steps: int
    lr: float
    # (unwrapped model, folder, full state dict or None) -> HF files + tokenizer; the state dict is given
    # under FSDP, where the model's own tensors are shards
    write_model: Callable[[Any, Path, Any], None]
    resume_from: Path | None = None
    resume_state: dict[str, Any] | None = None  # checkpoint.load_state(resume_from)
    resume_command: str = ""
    extra_summary: dict[str, Any] = field(default_factory=dict)
    # called after each optimizer step with the step number (tests slow the loop down with it)
    after_step: Callable[[int], None] | None = None
    # set by run(): the trained (unwrapped) model and whether this process writes the outputs
    final_model: Any = None
    final_state: Any = None  # under FSDP: the gathered full state dict (rank 0), for the export
    is_main: bool = True


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
            x, y = val.batch(picks[i : i + batch_size])
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
    """Train job.model for job.steps optimizer steps; returns the summary (see README)."""
    return _Loop(job, reporter_enabled).run()


class _Loop:
    """One training run: setup, the step loop, evaluation, checkpoints and the summary."""

    def __init__(self, job: Job, reporter_enabled: bool):
        self.job, self.s = job, job.settings
        s = self.s
        device = job.runtime.device
        self.acc = acc = distributed.make_accelerator(s, device, job.world_size)
        self.main = acc.is_main_process
        self.fsdp = bool(getattr(acc, "is_fsdp2", False))
        if s.fsdp and not self.fsdp and self.main and reporter_enabled:
            from gptcli.console import warn

            warn(
                "--fsdp has no effect in a single process (there is nothing to shard across); training unsharded. "
                "Launch with torchrun --nproc-per-node N to shard."
            )
        if device.type == "cpu" and acc.mixed_precision == "bf16" and job.train.block_size <= EAGER_MAX_BLOCK:
            use_eager_attention(job.model)
        if job.resume_from is not None:  # before sharding: FSDP splits the loaded full tensors
            checkpoint.load_weights(job.model, job.resume_from)
        self._tied_aliases = distributed.tied_aliases(job.model)
        optimizer = make_optimizer(job.model, s, job.lr)
        self.scheduler = make_scheduler(optimizer, s, job.steps, job.lr)
        self.model, self.optimizer = acc.prepare(job.model, optimizer)
        self.raw_model = acc.unwrap_model(self.model)
        self._gathered: tuple[int, Any] | None = None  # (step, full model state) of the last FSDP save

        self.start, self.tokens_seen = 0, 0
        self.best_val: float | None = None
        self.last_val: float | None = None
        self.last_loss: float | None = None
        if job.resume_from is not None:
            self._restore()
        self.sampler = BlockSampler(
            len(job.train),
            s.batch_size,
            s.grad_accum,
            acc.num_processes,
            acc.process_index,
            s.seed,
            block_size=job.train.block_size,
            stream_len=len(job.train.ids),
        )
        self.eval_every = s.eval_every if s.eval_every is not None else max(1, job.steps // 10)
        self.save_every = s.save_every if s.save_every is not None else max(1, job.steps // 5)
        self.log_every = s.log_every or max(1, min(100, job.steps // 50))
        self.metrics = MetricsFile(job.out, enabled=self.main, resume_step=self.start if job.resume_from else None)
        self.reporter = Reporter(job.steps, self.start, enabled=self.main and reporter_enabled)
        self.reporter_enabled = reporter_enabled
        if job.resume_from is not None:
            self.reporter.message(f"resumed from {job.resume_from} at step {self.start}")
        self.masked = job.train.mask is not None
        self.tokens_per_step = self.sampler.samples_per_step * job.train.block_size
        self.step = self.start
        self.train_time = 0.0  # seconds spent in optimizer steps (not evaluation or saving)

    def _restore(self) -> None:
        job, acc = self.job, self.acc
        assert job.resume_from is not None  # _restore runs only when resuming
        state = job.resume_state or checkpoint.load_state(job.resume_from)
        distributed.load_optimizer_state(self.optimizer, state["optimizer"], self.fsdp)
        self.scheduler.load_state_dict(state["scheduler"])
        # each rank's dropout continues where it stopped
        checkpoint.set_rng_state(checkpoint.rng_for_rank(state, acc.process_index))
        saved_world = int(state.get("world_size", 1))
        if saved_world != acc.num_processes and self.main:
            from gptcli.console import warn

            warn(
                f"the checkpoint was written by {saved_world} process{'es' if saved_world != 1 else ''} and this run "
                f"has {acc.num_processes}: training continues from step {int(state['step'])}, but not bit-exactly "
                "(batches are split over the processes differently, and a process without saved random states "
                "takes rank 0's)."
            )
        self.start, self.tokens_seen, self.best_val = (
            int(state["step"]),
            int(state["tokens_seen"]),
            state.get("best_val"),
        )

    def _model_state(self) -> Any:
        """Under FSDP the full model state dict (gathered on rank 0; a collective), else None."""
        if not self.fsdp:
            return None
        if self._gathered is None or self._gathered[0] != self.step:
            self._gathered = (self.step, distributed.full_model_state(self.model, self._tied_aliases))
        return self._gathered[1]

    def autocast(self) -> Any:
        return self.acc.autocast() if self.acc.mixed_precision != "no" else nullcontext()

    def train_step(self) -> Any:
        """One optimizer step (grad_accum micro-batches); returns the summed micro-batch losses (a tensor)."""
        s, acc, model = self.s, self.acc, self.model
        total = None
        for micro in range(s.grad_accum):
            x, y = self.job.train.batch_at(self.sampler.starts(self.step, micro))
            x, y = x.to(acc.device, non_blocking=True), y.to(acc.device, non_blocking=True)
            # DDP all-reduces gradients on the last micro-batch only
            sync = acc.no_sync(model) if micro < s.grad_accum - 1 and acc.num_processes > 1 else nullcontext()
            with sync:  # FSDP decides at backward time, DDP at forward time: both run inside
                with self.autocast():
                    loss = _loss(model(input_ids=x).logits, y, self.masked)
                acc.backward(loss / s.grad_accum if s.grad_accum > 1 else loss)
            total = loss.detach() if total is None else total + loss.detach()
        if s.grad_clip > 0:
            acc.clip_grad_norm_(model.parameters(), s.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        return total

    def evaluate(self) -> None:
        if self.job.val is None:
            return
        s = self.s
        val_loss = self.last_val = evaluate(
            self.model, self.job.val, s.batch_size, s.eval_batches, self.acc.device, self.autocast
        )
        is_best = self.best_val is None or val_loss < self.best_val
        self.best_val = val_loss if is_best else self.best_val
        self.metrics.write({"step": self.step, "val_loss": round(val_loss, 6), "tokens": self.tokens_seen})
        self.reporter.evaluated(self.step, val_loss, is_best)

    def save(self) -> None:
        # every rank takes part in gathering; only rank 0 writes
        model_state = self._model_state()
        optimizer_state = distributed.full_optimizer_state(self.optimizer, self.fsdp, self.main)
        rngs = distributed.gather_rng_states(self.acc)
        if self.main:
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "best_val": self.best_val,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "rng_by_rank": rngs,
                "world_size": self.acc.num_processes,
            }
            checkpoint.save(
                self.job.out,
                self.step,
                lambda folder: self.job.write_model(self.raw_model, folder, model_state),
                state,
                self.s.keep_checkpoints,
            )
        self.acc.wait_for_everyone()

    def run(self) -> dict[str, Any]:
        import torch

        job, acc = self.job, self.acc
        stop = StopRequest(distributed=acc.num_processes > 1)
        self.model.train()
        wall0 = time.perf_counter()
        loss_sum = torch.zeros((), device=acc.device)  # summed on the device: no host sync per step
        loss_n, window_start = 0, 0.0  # micro-batches and train_time since the last progress line
        with stop:
            while self.step < job.steps:
                t0 = time.perf_counter()
                loss_sum += self.train_step()
                loss_n += self.s.grad_accum
                self.train_time += time.perf_counter() - t0
                if job.after_step is not None:
                    job.after_step(self.step)
                if self.step % self.log_every == 0 or self.step == job.steps:
                    self._progress(float(loss_sum) / max(loss_n, 1), loss_n, window_start, wall0)
                    loss_sum.zero_()
                    loss_n, window_start = 0, self.train_time
                if stop.requested():
                    self.reporter.close()
                    self.save()
                    self.metrics.close()
                    raise Interrupted(
                        f"training stopped at step {self.step}/{job.steps}; checkpoint saved.",
                        hint=f"Resume with: {job.resume_command}",
                    )
                if self.eval_every and self.step % self.eval_every == 0 and self.step < job.steps:
                    self.evaluate()
                if self.save_every and self.step % self.save_every == 0 and self.step < job.steps:
                    self.save()
            if job.val is not None and (self.step > self.start or self.best_val is None):
                self.evaluate()
            if self.step > self.start or not checkpoint.list_checkpoints(checkpoint.checkpoints_dir(job.out)):
                self.save()
            job.final_state = self._model_state()
        self.reporter.close()
        self.metrics.close()
        return self._summary(time.perf_counter() - wall0)

    def _progress(self, loss: float, micro_batches: int, window_start: float, wall0: float) -> None:
        import torch

        acc = self.acc
        if acc.num_processes > 1:
            loss = float(acc.reduce(torch.tensor(loss, device=acc.device), "mean"))
        self.last_loss = loss
        steps_in_window = micro_batches / self.s.grad_accum
        rate = (
            steps_in_window * self.tokens_per_step / max(self.train_time - window_start, 1e-9)
        )  # excludes eval/saving
        eta = (self.job.steps - self.step) * self.train_time / max(self.step - self.start, 1)
        lr = self.scheduler.get_last_lr()[0]
        self.metrics.write(
            {
                "step": self.step,
                "loss": round(loss, 6),
                "lr": lr,
                "tokens": self.tokens_seen,
                "tokens_per_s": round(rate, 1),
                "elapsed_s": round(time.perf_counter() - wall0, 3),
            }
        )
        self.reporter.step(self.step, loss, lr, rate, eta)

    def _summary(self, wall: float) -> dict[str, Any]:
        job, done = self.job, self.step - self.start
        summary = {
            "out": str(job.out),
            "steps": self.step,
            "best_val_loss": None if self.best_val is None else round(self.best_val, 6),
            "final_val_loss": None if self.last_val is None else round(self.last_val, 6),
            "final_loss": None if self.last_loss is None else round(self.last_loss, 6),
            "tokens_seen": self.tokens_seen,
            "wall_s": round(wall, 3),
            "ms_per_step": round(1000 * self.train_time / done, 3) if done else None,
            "tokens_per_s": round(done * self.tokens_per_step / self.train_time, 1) if self.train_time > 0 else None,
            "world_size": self.acc.num_processes,
            "fsdp": self.fsdp,
            "precision": {"no": "fp32"}.get(self.acc.mixed_precision, self.acc.mixed_precision),
            **job.extra_summary,
        }
        job.final_model, job.is_main = self.raw_model, self.main
        if self.main and self.reporter_enabled:
            from gptcli.console import info

            info(
                f"done: {self.step} steps in {format_duration(wall)}"
                + (f" | best val loss {self.best_val:.4f}" if self.best_val is not None else "")
                + f" | {self.tokens_seen:,} tokens"
            )
        return summary
