"""The training loop: data -> views/pairs -> encoder(s) -> loss -> AdamW, read top to bottom.

``train(cfg)`` creates a run folder ``<train.output_dir>/<name>`` (:mod:`contrastkit.train.run`)
holding ``config.yaml``, ``metrics.jsonl`` (one JSON object per logged step, monitor reading
and evaluation), ``checkpoints/step_XXXXXXX`` (every ``train.checkpoint_every`` steps, on
Ctrl-C / SIGTERM and at the end), ``baseline.json``, ``eval.json`` and
``eval_arrays.safetensors``.

Everything the loop runs comes from the library's registries through the task
(:mod:`contrastkit.train.tasks`) and :func:`contrastkit.train.run.build_loss`. Under
``torchrun`` the loop owns distribution: losses run with ``gather_distributed=True`` (each
process: its rows against the gathered columns) and the trainable modules are wrapped in
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA), so the weights follow the
single-process global batch. With gradient caching the task wraps the module its chunked
backward runs through instead, and the loop averages the gradients of the parameters left
outside (the loss's temperature).

Exactness of ``--resume``: batches come from a sampler and views from a generator whose states
are checkpointed with the model, the optimizer, the scheduler, the global RNG and the negatives
queue, so on CPU an interrupted-and-resumed run ends with the same weights as an uninterrupted
one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from contrastkit._checks import NonFiniteError
from contrastkit.atomic import exclusive_lock
from contrastkit.distributed import all_reduce_, get_world_size
from contrastkit.functional import bf16_gemm
from contrastkit.losses import LearnableTemperature
from contrastkit.monitor import CollapseMonitor
from contrastkit.train.batches import build_order
from contrastkit.train.budget import BudgetFit, BudgetSummary
from contrastkit.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from contrastkit.train.config import RunConfig, save_config
from contrastkit.train.finetune import save_adapters
from contrastkit.train.metrics_log import MetricsLog
from contrastkit.train.run import (
    base_loss,
    build_loss,
    claim_run_dir,
    make_run_dir,
    write_baseline,
    write_eval,
)
from contrastkit.train.schedule import WarmupCosine
from contrastkit.train.tasks import Step, Task, build_task

log = logging.getLogger("contrastkit.train")

SUGGESTIONS = (
    "lower optim.lr (e.g. by 3-10x) or raise optim.warmup_steps",
    "raise the temperature (loss.params.temperature) or disable loss.learnable_temperature",
    "keep optim.grad_clip set (e.g. 1.0)",
    "use train.precision: fp32 if it is bf16 or fp16",
)


class TrainingDiverged(RuntimeError):
    """A value of a step became NaN/Inf; the message is the diagnostic."""


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run after its checkpoint was saved."""

    def __init__(self, signum: int, step: int, run: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"{name} at step {step}: checkpoint saved; resume with "
            f"`contrastkit train --resume {run}`"
        )
        self.signum, self.step, self.run = signum, step, run


@dataclass
class Distributed:
    """Process-group facts for ``torchrun``; single process when WORLD_SIZE is unset."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


class Trainable(nn.Module):
    """The task's modules and the loss as one module whose forward is a training step's
    forward pass, so one ``DistributedDataParallel`` wraps everything that learns."""

    def __init__(self, task: Task, loss: nn.Module) -> None:
        super().__init__()
        self.task = task
        self.model = task.model
        self.loss = base_loss(loss)  # learnable temperature, prototypes: saved with the model
        self.loss_fn = loss  # with its negatives wrapper (queue buffers stay out of the weights)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        step = self.task.loss_terms(batch, self.loss_fn)
        return {"terms": step.terms, "embeddings": step.embeddings, "counts": step.counts}

    def weights(self) -> nn.ModuleDict:
        """What a checkpoint's ``model.safetensors`` holds."""
        return nn.ModuleDict({"model": self.model, "loss": self.loss})


class Precision:
    """``train.precision``: the autocast context, and a ``GradScaler`` for fp16."""

    def __init__(self, setting: str) -> None:
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if setting == "auto":
            setting = "bf16" if native_bf16() else "fp32"
        self.name = setting
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setting)
        self.scaler = torch.amp.GradScaler(self.device) if setting == "fp16" else None

    def autocast(self) -> AbstractContextManager[Any]:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:  # skips the step when fp16 gradients overflowed, and adapts the scale
            self.scaler.step(optimizer)
            self.scaler.update()


def native_bf16() -> bool:
    """Whether this machine runs bfloat16 natively (CUDA bf16, or AVX512-BF16/AMX on CPU)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bf16_gemm.cpu_has_bf16_dot()


class StopSignals:
    """Ctrl-C and SIGTERM finish the current step; the loop then saves and stops. A second
    signal aborts at once. Handlers are restored on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def train(
    cfg: RunConfig,
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    stop_after: int | None = None,
) -> Path:
    """Train ``cfg``; return the run folder. ``resume=True`` continues its latest checkpoint.

    ``stop_after`` ends the loop early after that optimizer step as if interrupted (checkpoint
    written, no final evaluation): used to test that resuming is exact.

    Raises:
        TrainingDiverged: a loss term, an embedding or the gradient norm is not finite.
        TrainingInterrupted: Ctrl-C or SIGTERM (after saving a checkpoint).
    """
    with contextlib.ExitStack() as hold:  # the run lock, held until the run ends
        return _train(cfg, run_dir, resume, stop_after, hold)


def _train(
    cfg: RunConfig,
    run_dir: str | os.PathLike | None,
    resume: bool,
    stop_after: int | None,
    hold: contextlib.ExitStack,
) -> Path:
    dist = init_distributed()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run = make_run_dir(cfg, run_dir)  # named before any rank creates it (same name on each)

    # -- components: task (data, models) -> loss -> optimizer -> schedule -> sampler -----------
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    if dist.is_main:  # after the data loaded: a bad data path leaves no half-made run folder
        if dist.world == 1:  # claimed atomically (torchrun: every rank already has the name)
            run = claim_run_dir(run, explicit=run_dir is not None or resume)
        else:
            run.mkdir(parents=True, exist_ok=True)
        # One writer per run folder: a second `train` (or `--run-dir` at a live run) stops here.
        hold.enter_context(exclusive_lock(run / "train.lock", what=f"run {run}", wait=False))
        save_config(cfg, run / "config.yaml")
    trainable = Trainable(task, build_loss(cfg, dist.world, task))
    forward, outside_ddp = wrap_in_ddp(trainable) if dist.world > 1 else (trainable, [])
    optimizer = make_optimizer(cfg, trainable.weights())
    schedule = WarmupCosine(
        cfg.train.max_steps,
        cfg.optim.warmup_steps,
        cfg.optim.min_lr_ratio,
        cfg.optim.schedule == "cosine",
        cfg.optim.max_warmup_fraction,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    order = build_order(cfg, task, dist.rank, dist.world)
    view_generator = torch.Generator().manual_seed(cfg.seed + 10_000 + dist.rank)
    precision = Precision(cfg.train.precision)
    budget = None
    if cfg.train.time_budget_s and cfg.train.fit_schedule_to_budget:
        budget = BudgetFit(
            cfg.train.time_budget_s, cfg.train.calibration_steps, cfg.train.max_steps
        )
    step, elapsed, stopped_at_budget = 0, 0.0, False
    if resume:
        step, elapsed = restore(run, trainable, optimizer, scheduler, order, view_generator)
        budget = None  # a resumed run keeps the length it had
    monitor = CollapseMonitor(warn=False)
    metrics = MetricsLog(run, dist.is_main, cfg.train.tensorboard)

    saved_step = step if resume else -1  # the step whose checkpoint is on disk

    def save() -> None:
        nonlocal saved_step
        if step == saved_step:  # never rewrite an identical step: a kill mid-swap could hide it
            return
        state = {
            "step": step,
            "elapsed": elapsed,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "data_order": order.state_dict(),
            "view_generator": view_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "queue": queue_state(trainable.loss_fn),
        }
        weights = trainable.weights()
        bad = non_finite_tensor(weights)
        if bad is not None:  # a finite step can still overflow the weights: keep the last good
            what = f"the update made {bad!r} non-finite"
            raise TrainingDiverged(diagnostic(step - 1, what, last_loss, cfg, run))
        if dist.is_main:
            save_checkpoint(run, step, weights, state)
            save_adapters(run, task.model, cfg, step)  # LoRA runs: the adapters alone
        saved_step = step

    if not resume and dist.is_main:
        metrics.write(
            {
                "step": 0,
                "event": "start",
                "world_size": dist.world,
                "batch": cfg.optim.batch_size * dist.world,
                "precision": precision.name,
            }
        )
        baseline = timed("baseline", task.baseline) if cfg.eval.raw_baseline else None
        if baseline is not None:
            write_baseline(run, baseline)
            metrics.write({"step": 0, "eval": baseline.metrics, "baseline": True})

    progress = progress_bar(cfg, dist, step, schedule.total_steps)
    last_loss, last_eval = math.nan, {}
    counts: dict[str, int] = {}
    t_log, items_since_log = time.perf_counter(), 0
    with StopSignals() as signals:
        try:
            trainable.train()
            while step < schedule.total_steps:
                t0 = time.perf_counter()
                # data -> views/pairs -> encoder(s) -> loss terms -> gradients -> AdamW
                indices = order.next()
                batch = task.batch(indices, view_generator)
                optimizer.zero_grad(set_to_none=True)
                with precision.autocast():
                    out = forward_checked(forward, batch, step, last_loss, cfg, run, trainable)
                loss = sum(out.terms.values())
                if loss.requires_grad:  # gradient caching already accumulated the gradients
                    precision.backward(loss)
                average_gradients(outside_ddp)  # what DDP does for the parameters it holds
                precision.unscale(optimizer)
                grad_norm = clip_gradients(trainable, cfg.optim.grad_clip)
                if not math.isfinite(grad_norm) and precision.scaler is None:
                    what = f"the gradient norm is {grad_norm}"
                    raise TrainingDiverged(diagnostic(step, what, last_loss, cfg, run))
                precision.step(optimizer)
                scheduler.step()
                task.after_step(step, schedule.total_steps)
                step += 1
                elapsed += time.perf_counter() - t0
                if cfg.train.time_budget_s and dist.world > 1:
                    elapsed = main_clock(elapsed)  # every rank takes the same time decisions
                last_loss = float(loss.detach())
                items_since_log += len(indices) * dist.world
                for key, value in out.counts.items():  # e.g. skipped_files, summed per record
                    counts[key] = counts.get(key, 0) + value

                fitted = budget.update(step, elapsed) if budget is not None else None
                if fitted is not None:
                    schedule.refit(step, fitted)
                    if progress is not None:
                        progress.total = schedule.total_steps
                    metrics.write(
                        {
                            "step": step,
                            "event": "schedule_fitted",
                            "total_steps": schedule.total_steps,
                        }
                    )

                if step % cfg.train.log_every == 0 or step == schedule.total_steps:
                    now = time.perf_counter()
                    rate = items_since_log / max(now - t_log, 1e-9)
                    record = step_record(step, out, optimizer, grad_norm, rate, elapsed, trainable)
                    metrics.write({**record, **counts})
                    if counts.get("skipped_files"):
                        log.warning(
                            "step %d: %d unreadable files skipped since the last log line",
                            step,
                            counts["skipped_files"],
                        )
                    t_log, items_since_log, counts = now, 0, {}
                    if progress is not None:
                        post = {"loss": f"{last_loss:.3f}", "items/s": f"{rate:.0f}"}
                        post.update({k: f"{v:.3f}" for k, v in last_eval.items()})
                        progress.set_postfix(post, refresh=False)
                if progress is not None:
                    progress.update(1)
                every = cfg.train.monitor_every
                if every and step % every == 0 and out.embeddings is not None:
                    metrics.write({"step": step, "monitor": monitor_reading(monitor, out, step)})
                if cfg.train.eval_every and step % cfg.train.eval_every == 0 and dist.is_main:
                    last_eval = task.evaluate(quick=True).metrics
                    metrics.write({"step": step, "eval": last_eval, "quick": True})
                if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                    save()
                if signals.received is not None:
                    save()
                    raise TrainingInterrupted(signals.received, step, run)
                if stop_after is not None and step >= stop_after:
                    save()
                    return run
                waiting = budget is not None and budget.calibrating(step)
                if cfg.train.time_budget_s and elapsed >= cfg.train.time_budget_s and not waiting:
                    metrics.write(
                        {"step": step, "event": "time_budget_reached", "elapsed_s": elapsed}
                    )
                    stopped_at_budget = True
                    break
        finally:
            if progress is not None:
                progress.close()

    save()
    if cfg.train.time_budget_s:  # say how much of the budget was used, and why
        used = BudgetSummary.of(
            cfg.train.time_budget_s, step, elapsed, cfg.train.max_steps, stopped_at_budget
        )
        metrics.write({"step": step, **used.record()})
        log.info("%s", used.message())
    if dist.is_main:
        result = timed("final evaluation", task.evaluate)
        write_eval(run, step, elapsed, result)
        metrics.write({"step": step, "eval": result.metrics})
    metrics.close()
    return run


def wrap_in_ddp(trainable: Trainable) -> tuple[nn.Module, list[nn.Parameter]]:
    """``DistributedDataParallel`` for the step; returns (what the loop calls, the trainable
    parameters outside DDP, whose gradients the loop averages).

    The whole :class:`Trainable` in one DDP, unless the task runs the backward inside its
    ``loss_terms`` (gradient caching: DDP's reducer cannot run a backward inside its own
    forward) and wraps the modules that backward goes through itself
    (:meth:`~contrastkit.train.tasks.base.Task.distribute`). Every wrapper is made here: gloo
    on CPU or NCCL on CUDA, buffers not broadcast (each process keeps its own statistics).
    """
    wrapped: list[nn.Module] = []

    def ddp(module: nn.Module) -> nn.Module:
        wrapped.append(module)
        return nn.parallel.DistributedDataParallel(module, broadcast_buffers=False)

    if not trainable.task.distribute(ddp):
        return ddp(trainable), []
    inside = {id(p) for module in wrapped for p in module.parameters()}
    outside = [p for p in trainable.parameters() if p.requires_grad and id(p) not in inside]
    return trainable, outside


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the processes in one all-reduce, as DDP does:
    every process calls it every step, whatever its batch held. A parameter without a gradient
    counts as zero; one that no process gave a gradient keeps none (AdamW skips it, as it does
    in one process)."""
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    given = torch.tensor([p.grad is not None for p in params], device=params[0].device)
    flat = torch.cat([*(g.detach().float().reshape(-1) for g in grads), given.float()])
    all_reduce_(flat)  # (sum of numels + P,) summed over the processes
    total, processes = flat.split([flat.numel() - len(params), len(params)])
    for p, g, n in zip(params, total.split([p.numel() for p in params]), processes.tolist()):
        p.grad = (g / get_world_size()).view_as(p).to(p.dtype) if n > 0 else None


def make_optimizer(cfg: RunConfig, weights: nn.Module) -> torch.optim.Optimizer:
    """AdamW; matrices decay, biases / norms / temperatures do not. The identity losses'
    class centres take SGD with momentum at ``optim.centre_lr``, no weight decay
    (``optim.centre_optimizer: sgd``, the default; why: :mod:`contrastkit.train.optimizer`).

    AdamW's fused implementation (one kernel over all parameters) where every parameter allows
    it (:func:`fused_adamw_ok`): on CPU the default per-parameter loop took 0.89 s of a MiniLM
    step, the fused one 0.09 s (same update up to float round-off).
    """
    from contrastkit.losses.class_centres import centre_parameters
    from contrastkit.train.optimizer import MixedAdamW

    o = cfg.optim
    sgd = o.centre_optimizer == "sgd"
    held = {id(p) for p in centre_parameters(weights)} if sgd else set()
    named = [(n, p) for n, p in weights.named_parameters() if p.requires_grad]
    rest = [(n, p) for n, p in named if id(p) not in held]
    if o.layer_decay is not None:
        from contrastkit.train.finetune import layer_decay_groups

        groups = layer_decay_groups(rest, o.lr, o.layer_decay, o.weight_decay)
    else:
        groups = [
            {"params": [p for _, p in rest if p.ndim >= 2], "weight_decay": o.weight_decay},
            {"params": [p for _, p in rest if p.ndim < 2], "weight_decay": 0.0},
        ]
    if held:
        centres = [p for _, p in named if id(p) in held]
        sgd_group = {"sgd": True, "lr": o.centre_lr, "momentum": 0.9, "weight_decay": 0.0}
        groups.append({"params": centres, **sgd_group})
    fused = fused_adamw_ok([p for _, p in rest])
    return MixedAdamW(groups, lr=o.lr, betas=o.betas, fused=fused)


def fused_adamw_ok(params: list[Tensor]) -> bool | None:
    """True when torch's fused AdamW takes every one of ``params`` (floating point, all on CPU
    or all on CUDA, each contiguous); None (torch's own choice) otherwise.

    Contiguous, because the fused kernel walks a parameter and its moments as flat memory: a
    channels-last convolution weight with moments restored contiguous from a checkpoint
    would pair the wrong elements, and a resumed run would no longer equal an uninterrupted one.
    """
    devices = {p.device.type for p in params}
    if not params or len(devices) != 1 or devices.pop() not in ("cpu", "cuda"):
        return None
    ok = all(p.is_floating_point() and p.is_contiguous() for p in params)
    return True if ok else None


def restore(
    run: Path,
    trainable: Trainable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    order: Any,
    view_generator: torch.Generator,
) -> tuple[int, float]:
    """Load the latest checkpoint of ``run`` into every piece; return (step, elapsed)."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise FileNotFoundError(f"--resume: {run} has no checkpoint to resume from.")
    state = load_checkpoint(ckpt, trainable.weights())
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    order.load_state_dict(state["data_order"])
    view_generator.set_state(state["view_generator"])
    torch.set_rng_state(state["torch_rng"])
    load_queue_state(trainable.loss_fn, state.get("queue"))
    log.info("resumed %s at step %d", ckpt, state["step"])
    return int(state["step"]), float(state["elapsed"])


def queue_state(loss: nn.Module) -> Any:
    from contrastkit.negatives import ExtraNegatives

    return loss.queue_state() if isinstance(loss, ExtraNegatives) else None


def load_queue_state(loss: nn.Module, state: Any) -> None:
    from contrastkit.negatives import ExtraNegatives

    if isinstance(loss, ExtraNegatives):
        loss.load_queue_state(state)


def forward_checked(
    forward: nn.Module,
    batch: dict[str, Any],
    step: int,
    last_loss: float,
    cfg: RunConfig,
    run: Path,
    trainable: Trainable,
) -> Step:
    """One forward pass; a NaN/Inf in an embedding or a loss term is a divergence. A loss's
    own input check (non-finite embeddings) after non-finite weights is one too."""
    try:
        out = forward(batch)
    except NonFiniteError as err:  # a loss's input check saw the NaN/Inf embeddings
        what = str(err).split(";")[0] + " (a loss input)"
        raise TrainingDiverged(diagnostic(step, what, last_loss, cfg, run)) from None
    result = Step(out["terms"], out["embeddings"], out["counts"])
    for i, z in enumerate(result.embeddings or ()):
        if z is not None and not torch.isfinite(z.detach()).all():
            what = f"embedding batch {i + 1} holds NaN/Inf"
            raise TrainingDiverged(diagnostic(step, what, last_loss, cfg, run))
    for name, value in result.terms.items():
        if not torch.isfinite(value.detach()).all():
            what = f"the loss term {name!r} is {float(value)}"
            raise TrainingDiverged(diagnostic(step, what, last_loss, cfg, run))
    return result


def clip_gradients(module: nn.Module, max_norm: float | None) -> float:
    """The total gradient norm (after clipping it to ``max_norm`` when set)."""
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is None:
        return float(torch.stack([p.grad.detach().norm() for p in params]).norm())
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def non_finite_tensor(module: nn.Module) -> str | None:
    """The name of the first parameter or floating buffer holding NaN/Inf, or None."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return next(
        (n for n, t in tensors if t.is_floating_point() and not torch.isfinite(t).all()), None
    )


def diagnostic(step: int, what: str, last_loss: float, cfg: RunConfig, run: Path) -> str:
    """The divergence message: where, what, the last finite loss, the surviving checkpoint."""
    ckpt = latest_checkpoint(run)
    kept = (
        f"the last checkpoint, {ckpt}, was written after a finite step; resume it with "
        f"`contrastkit train --resume {run} --set ...`"
        if ckpt is not None
        else "no checkpoint was written yet"
    )
    return "\n".join(
        [
            f"training diverged at step {step + 1}: {what}; the last finite loss was "
            f"{last_loss:.6g}.",
            f"config: loss={cfg.loss.name} params={cfg.loss.params} lr={cfg.optim.lr} "
            f"precision={cfg.train.precision} grad_clip={cfg.optim.grad_clip}",
            kept + ". Try:",
            *[f"  - {s}" for s in SUGGESTIONS],
        ]
    )


def step_record(
    step: int,
    out: Step,
    optimizer: torch.optim.Optimizer,
    grad_norm: float,
    rate: float,
    elapsed: float,
    trainable: Trainable,
) -> dict[str, Any]:
    record = {
        "step": step,
        "loss": float(sum(out.terms.values()).detach()),
        **{f"loss/{k}": float(v.detach()) for k, v in out.terms.items()},
        "lr": optimizer.param_groups[0]["lr"],
        "grad_norm": grad_norm,
        "items_per_s": rate,
        "elapsed_s": round(elapsed, 3),
    }
    temperature = getattr(trainable.loss, "temperature", None)
    if isinstance(temperature, LearnableTemperature):  # plotted only when it is learned
        record["temperature"] = float(temperature().detach())
    queue = getattr(trainable.loss_fn, "queue", None)
    if queue is not None:
        record["queue"] = len(queue)
    return record


def monitor_reading(monitor: CollapseMonitor, out: Step, step: int) -> dict[str, float]:
    """The collapse monitor's statistics of this step's embedding pairs (every process calls:
    the monitor reduces across ranks)."""
    z1, z2 = out.embeddings  # type: ignore[misc]
    monitor.update(z1.detach().float(), z2.detach().float())
    report = monitor.compute(step=step)
    seen = monitor.__dict__.setdefault("_alerted", set())
    for alert in report.alerts:
        if alert.metric not in seen:  # each kind of alert once per run: no log flood
            seen.add(alert.metric)
            log.warning("step %d: %s", step, alert)
    return dict(report.values)


def main_clock(elapsed: float) -> float:
    """The main process's ``elapsed``, on every torchrun process (the others also wait inside
    their collectives while the main one evaluates or writes a checkpoint, which a
    single-process run does not count)."""
    import torch.distributed as tdist

    from contrastkit.distributed import _collective_device

    value = torch.tensor([elapsed], dtype=torch.float64, device=_collective_device())
    tdist.broadcast(value, src=0)
    return float(value)


def timed(what: str, fn: Any) -> Any:
    """``fn()`` with a log line before and after (phases without a bar still say what runs)."""
    log.info("%s ...", what)
    t0 = time.monotonic()
    result = fn()
    log.info("%s done in %.1f s", what, time.monotonic() - t0)
    return result


def progress_bar(cfg: RunConfig, dist: Distributed, step: int, total: int) -> Any:
    """A tqdm bar on a terminal; none when stderr is a file or a pipe (a log would get a line per
    refresh), nor with ``train.progress: false``: ``metrics.jsonl`` has every step then."""
    if not (cfg.train.progress and dist.is_main and _is_terminal(sys.stderr)):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=step, desc=cfg.name, unit="step", dynamic_ncols=True)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False
