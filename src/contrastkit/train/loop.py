"""The training loop: data -> views/pairs -> encoder(s) -> loss -> AdamW, read top to bottom.

``train(cfg)`` creates a run folder ``<train.output_dir>/<name>`` holding:

* ``config.yaml``: the resolved config (every default filled in);
* ``metrics.jsonl``: one JSON object per logged step (loss, its terms, lr, temperature,
  throughput), per monitor sample (``"monitor"``) and per evaluation (``"eval"``);
* ``checkpoints/step_XXXXXXX``: weights (safetensors) + optimizer/scheduler/RNG/data-order state,
  written atomically every ``train.checkpoint_every`` steps, on Ctrl-C and at the end;
* ``eval.json`` and ``eval_arrays.safetensors``: the final evaluation (with the raw-input baseline)
  and the arrays the report plots.

Exactness of ``--resume``: batches are drawn from a data-order generator and views from a view
generator whose states are checkpointed with the model, the optimizer, the scheduler, the
global RNG and the negatives queue (``loss.queue_size``), so on CPU an interrupted-and-resumed
run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from contrastkit.losses import LearnableTemperature
from contrastkit.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from contrastkit.train.config import RunConfig, save_config
from contrastkit.train.extra_negatives import ExtraNegatives
from contrastkit.train.monitor import embedding_health
from contrastkit.train.run import build_loss, make_run_dir, write_eval
from contrastkit.train.schedule import warmup_cosine
from contrastkit.train.tasks import build_task

REFIT_FRACTIONS = (0.5, 0.8)
"""With ``train.fit_schedule_to_budget``, the schedule is fitted again when these fractions of
the time budget are spent (besides after ``calibration_steps`` and 5x as many)."""

SUGGESTIONS = (
    "lower optim.lr (e.g. by 3-10x) or raise optim.warmup_steps",
    "raise the temperature (loss.params.temperature) or disable loss.learnable_temperature",
    "keep optim.grad_clip set (e.g. 1.0)",
    "turn off train.bf16 if it is on",
)


class TrainingDiverged(RuntimeError):
    """A loss term or the gradient became NaN/Inf; the message is the diagnostic."""


class DataOrder:
    """Epoch-wise random permutations of ``n`` items, drawn ``batch_size`` at a time.

    Its whole state (generator state, current permutation and position) is checkpointed.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if n < batch_size * world:
            raise ValueError(
                f"optim.batch_size={batch_size} x {world} process(es) exceeds the {n} training "
                "items; lower optim.batch_size or use more data."
            )
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator)
        self.pos = 0
        self.epoch = 0

    def next(self) -> Tensor:
        step_size = self.batch_size * self.world
        if self.pos + step_size > self.n:  # drop the ragged tail, start a new epoch
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
            self.epoch += 1
        start = self.pos + self.rank * self.batch_size
        self.pos += step_size
        return self.perm[start : start + self.batch_size]

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "perm": self.perm,
            "pos": self.pos,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos, self.epoch = state["perm"], state["pos"], state["epoch"]


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


class MetricsLog:
    """Append-only JSON-lines log (and optional TensorBoard mirror) on the main process."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # pragma: no cover - optional dependency
                print("train.tensorboard: tensorboard is not installed (pip install tensorboard)")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["step"]
            for key, value in _flatten(record).items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def build_extra_negatives(cfg: RunConfig, loss: nn.Module) -> ExtraNegatives | None:
    """The queue / hard-negative / threshold wrapper of ``loss`` if ``cfg.loss`` asks for one."""
    c = cfg.loss
    if not (c.queue_size or c.hard_negatives is not None or c.false_negative_threshold is not None):
        return None
    return ExtraNegatives(
        loss,
        queue_size=c.queue_size,
        hard_negatives=c.hard_negatives,
        false_negative_threshold=c.false_negative_threshold,
    )


def current_temperature(loss_fn: nn.Module) -> float | None:
    t = getattr(loss_fn, "temperature", None)
    if isinstance(t, LearnableTemperature):
        return float(t().detach())
    if isinstance(t, (int, float)):
        return float(t)
    return None


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
    """
    dist = init_distributed()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run = make_run_dir(cfg, run_dir)
    if dist.is_main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")

    # -- components: data/task -> encoder(s) -> loss -> optimizer -> schedule ----------------
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    base_loss = build_loss(cfg)
    model = task.model
    trainable = nn.ModuleDict({"model": model, "loss": base_loss})
    decay = [p for p in trainable.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in trainable.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
    )
    total_steps = cfg.train.max_steps
    order = DataOrder(task.num_train, cfg.optim.batch_size, cfg.seed, dist.rank, dist.world)
    view_generator = torch.Generator().manual_seed(cfg.seed + 10_000 + dist.rank)
    step, elapsed = 0, 0.0

    state: dict[str, Any] = {}
    if resume:
        ckpt = latest_checkpoint(run)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: {run} has no checkpoint to resume from.")
        state = load_checkpoint(ckpt, trainable)
        step, elapsed, total_steps = state["step"], state["elapsed"], state["total_steps"]
    # the scheduler is built before the optimizer state is restored: it records base rates
    scheduler = _make_scheduler(cfg, optimizer, total_steps)
    if resume:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        order.load_state_dict(state["data_order"])
        view_generator.set_state(state["view_generator"])
        torch.set_rng_state(state["torch_rng"])

    # queue / mined / masked negatives around the loss (loss.queue_size, hard_negatives, ...)
    extra = build_extra_negatives(cfg, base_loss)
    loss_fn: nn.Module = base_loss if extra is None else extra
    if resume and extra is not None:
        extra.load_queue_state(state.get("queue"))
    if dist.world > 1:  # every process sees the global batch's embeddings as negatives
        loss_fn = GatheredLoss(loss_fn)
    log = MetricsLog(run, dist.is_main, cfg.train.tensorboard)
    if not resume:
        global_batch = cfg.optim.batch_size * dist.world
        log.write({"step": 0, "event": "start", "world_size": dist.world, "batch": global_batch})

    def checkpoint_state() -> dict[str, Any]:
        return {
            "step": step,
            "elapsed": elapsed,
            "total_steps": total_steps,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "data_order": order.state_dict(),
            "view_generator": view_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "queue": None if extra is None else extra.queue_state(),
        }

    def save() -> None:
        if dist.is_main:
            save_checkpoint(run, step, trainable, checkpoint_state())

    # Ctrl-C: finish the current step, save, exit cleanly; a second Ctrl-C aborts at once.
    interrupted = {"flag": False}
    previous_handler = None
    if _in_main_thread():

        def on_sigint(signum: int, frame: Any) -> None:
            if interrupted["flag"]:
                raise KeyboardInterrupt
            interrupted["flag"] = True

        previous_handler = signal.signal(signal.SIGINT, on_sigint)

    autocast = bf16_autocast(cfg.train.bf16)
    # pair tasks compare against the model before training (pretrained or random init)
    if (
        not resume
        and dist.is_main
        and cfg.eval.raw_baseline
        and getattr(task, "baseline_is_initial_model", False)
    ):
        initial = task.evaluate(baseline=False)
        (run / "baseline.json").write_text(
            json.dumps({"metrics": initial.metrics, "name": initial.baseline_name}, indent=2)
        )
        log.write({"step": 0, "eval": initial.metrics})
    progress = _progress_bar(cfg, dist, step, total_steps)
    last_eval: dict[str, float] = {}
    start_step = step
    last_fit = (0, 0.0)  # (step, elapsed) of the latest schedule fit
    refit_at = list(REFIT_FRACTIONS)
    t_log, items_since_log = time.perf_counter(), 0
    try:
        model.train()
        while step < total_steps:
            t0 = time.perf_counter()
            # data -> views/pairs -> encoder(s) -> loss terms
            indices = order.next()
            batch = task.batch(indices, view_generator)
            if extra is not None:  # ids stored with the queued keys, for the whole (gathered) batch
                ids = batch.get("ids")
                extra.batch_ids = _all_gather(ids) if ids is not None and dist.world > 1 else ids
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                terms, (z1, z2) = task.loss_terms(batch, loss_fn)
            loss = sum(terms.values())
            _check_finite(step, terms, cfg)
            if loss.requires_grad:  # gradient caching already accumulated the gradients
                loss.backward()
            if dist.world > 1:
                _average_gradients(trainable, dist.world)
            grad_norm = _clip(trainable, cfg.optim.grad_clip)
            if not math.isfinite(grad_norm):
                raise TrainingDiverged(
                    _diagnostic(step, "gradient norm", grad_norm, terms, cfg, run)
                )
            optimizer.step()
            scheduler.step()
            if hasattr(task, "after_step"):
                task.after_step(step, total_steps)
            step += 1
            elapsed += time.perf_counter() - t0
            if cfg.train.time_budget_s and dist.world > 1:
                elapsed = _main_clock(elapsed)  # every rank takes the same time-based decisions
            items_since_log += len(indices) * dist.world

            # fit the schedule length to the time budget: after calibration_steps from their
            # mean time; again after 5x as many, and when half and 80 % of the budget are
            # spent, from the rate since the previous fit (the first steps are slow and a
            # shared machine changes speed: a single early fit ended runs 10-20 % early)
            calib = cfg.train.calibration_steps
            budget = cfg.train.time_budget_s
            fitted = None
            if cfg.train.fit_schedule_to_budget and budget and start_step == 0:
                if step == calib:
                    fitted = int(budget / (elapsed / step))
                elif step > calib and (
                    step == 5 * calib or (refit_at and elapsed >= refit_at[0] * budget)
                ):
                    rate = (elapsed - last_fit[1]) / (step - last_fit[0])
                    fitted = step + int((budget - elapsed) / rate)
            if fitted is not None:
                last_fit = (step, elapsed)
                while refit_at and elapsed >= refit_at[0] * budget:  # fractions passed
                    refit_at.pop(0)
                total_steps = max(step, min(cfg.train.max_steps, fitted))
                scheduler = _rescale_scheduler(cfg, optimizer, scheduler, total_steps)
                if progress is not None:
                    progress.total = total_steps
                log.write({"step": step, "event": "schedule_fitted", "total_steps": total_steps})

            if step % cfg.train.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                record = {
                    "step": step,
                    "loss": float(loss.detach()),
                    **{f"loss/{k}": float(v.detach()) for k, v in terms.items()},
                    "lr": optimizer.param_groups[0]["lr"],
                    "grad_norm": grad_norm,
                    "items_per_s": items_since_log / max(now - t_log, 1e-9),
                    "elapsed_s": round(elapsed, 3),
                }
                temperature = current_temperature(base_loss)
                if temperature is not None:
                    record["temperature"] = temperature
                if extra is not None and extra.queue is not None:
                    record["queue"] = len(extra.queue)
                log.write(record)
                t_log, items_since_log = now, 0
                if progress is not None:
                    post = {"loss": f"{record['loss']:.3f}", "it/s": f"{record['items_per_s']:.0f}"}
                    if temperature is not None:
                        post["T"] = f"{temperature:.3f}"
                    post.update({k: f"{v:.3f}" for k, v in last_eval.items()})
                    progress.set_postfix(post, refresh=False)
            if progress is not None:
                progress.update(1)
            if cfg.train.monitor_every and step % cfg.train.monitor_every == 0 and z1 is not None:
                log.write({"step": step, "monitor": embedding_health(z1, z2)})
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and dist.is_main:
                last_eval = task.evaluate(baseline=False, quick=True).metrics
                log.write({"step": step, "eval": last_eval, "quick": True})
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                save()
            if interrupted["flag"]:
                save()
                print(
                    f"\ninterrupted at step {step}: checkpoint saved; resume with "
                    f"`contrastkit train --resume {run}`"
                )
                return run
            if stop_after is not None and step >= stop_after:
                save()
                return run
            calibrating = cfg.train.fit_schedule_to_budget and step < cfg.train.calibration_steps
            if cfg.train.time_budget_s and elapsed >= cfg.train.time_budget_s and not calibrating:
                log.write({"step": step, "event": "time_budget_reached", "elapsed_s": elapsed})
                break
    finally:
        if progress is not None:
            progress.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)

    save()
    if dist.is_main:
        result = task.evaluate(baseline=True)
        write_eval(run, step, elapsed, result)
        log.write({"step": step, "eval": result.metrics, "baseline": result.baseline})
    log.close()
    return run


class GatheredLoss(nn.Module):
    """Calls ``loss`` on embeddings gathered from every process (differentiably), so the
    in-batch negatives span the global batch; labels are gathered too.

    A per-process ``ignore_mask`` (B, S * B) (S column groups of B: keys, then negatives)
    becomes the global (G * B, S * G * B) mask by :func:`place_ignore_blocks`: each process's
    block lands where its rows meet its own columns of every group; pairs across processes are
    not ignored (their texts / ids were never compared).
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, *inputs: Tensor, ignore_mask: Tensor | None = None) -> Tensor:
        gathered = [_all_gather(x) for x in inputs]
        if ignore_mask is None:
            return self.loss(*gathered)
        masks = _all_gather(ignore_mask)  # (G * B, S * B)
        world = masks.shape[0] // ignore_mask.shape[0]
        return self.loss(*gathered, ignore_mask=place_ignore_blocks(masks, world))


def place_ignore_blocks(masks: Tensor, world: int) -> Tensor:
    """Gathered per-process masks (G * B, S * B) -> the global ignore mask (G * B, S * G * B).

    >>> m = torch.tensor([[True, False], [False, True]])  # G = 2 processes, B = 1, S = 2
    >>> place_ignore_blocks(m, 2).int().tolist()
    [[1, 0, 0, 0], [0, 0, 0, 1]]
    """
    b = masks.shape[0] // world
    groups = masks.shape[1] // b
    out = torch.zeros(world * b, groups * world * b, dtype=torch.bool, device=masks.device)
    for r in range(world):
        rows = slice(r * b, (r + 1) * b)
        for g in range(groups):
            start = g * world * b + r * b
            out[rows, start : start + b] = masks[rows, g * b : (g + 1) * b]
    return out


def _main_clock(elapsed: float) -> float:
    """The main process's ``elapsed``, on every torchrun process.

    Each process times its own steps; the others also wait inside their collectives while the
    main one evaluates or writes a checkpoint, so their clocks would count that time, which a
    single-process run does not.
    """
    import torch.distributed as tdist

    from contrastkit.distributed import _collective_device

    value = torch.tensor([elapsed], dtype=torch.float64, device=_collective_device())
    tdist.broadcast(value, src=0)
    return float(value)


def _all_gather(x: Tensor) -> Tensor:
    from contrastkit.distributed import all_gather, all_gather_with_grad

    return all_gather_with_grad(x) if x.requires_grad else all_gather(x)


def _average_gradients(module: nn.Module, world: int) -> None:
    import torch.distributed as dist

    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def native_bf16() -> bool:
    """Whether this machine runs bfloat16 natively (CUDA bf16, or AVX512-BF16/AMX on CPU)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_autocast(setting: bool | str) -> Any:
    """The autocast context for ``train.bf16`` (True, False or "auto")."""
    enabled = native_bf16() if setting == "auto" else bool(setting)
    if not enabled:
        return nullcontext()
    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)


def _make_scheduler(
    cfg: RunConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    factor = warmup_cosine(
        total_steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio, cfg.optim.schedule == "cosine"
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rescale_scheduler(
    cfg: RunConfig,
    optimizer: torch.optim.Optimizer,
    old: torch.optim.lr_scheduler.LambdaLR,
    total_steps: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    factor = warmup_cosine(
        total_steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio, cfg.optim.schedule == "cosine"
    )
    old.lr_lambdas = [factor] * len(optimizer.param_groups)
    return old


def _clip(module: nn.Module, max_norm: float | None) -> float:
    params = [p for p in module.parameters() if p.grad is not None]
    if max_norm is None:
        norms = [p.grad.detach().norm() for p in params]
        return float(torch.stack(norms).norm()) if norms else 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def _check_finite(step: int, terms: dict[str, Tensor], cfg: RunConfig) -> None:
    for name, value in terms.items():
        if not torch.isfinite(value.detach()).all():
            raise TrainingDiverged(_diagnostic(step, f"loss term {name!r}", value, terms, cfg))


def _diagnostic(
    step: int, what: str, value: Any, terms: dict[str, Tensor], cfg: RunConfig, run: Any = None
) -> str:
    values = {k: float(v.detach()) for k, v in terms.items()}
    lines = [
        f"training stopped at step {step + 1}: {what} is not finite ({float(value)}).",
        f"loss terms at that step: {values}",
        f"config: loss={cfg.loss.name} params={cfg.loss.params} lr={cfg.optim.lr} "
        f"bf16={cfg.train.bf16} grad_clip={cfg.optim.grad_clip}",
        "the last good checkpoint is intact (resume with --resume after changing the config "
        "with --set). Try:",
        *[f"  - {s}" for s in SUGGESTIONS],
    ]
    return "\n".join(lines)


def _progress_bar(cfg: RunConfig, dist: Distributed, step: int, total: int) -> Any:
    if not (cfg.train.progress and dist.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=step, desc=cfg.name, unit="step", dynamic_ncols=True)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
