"""The Trainer: AdamW, clipping, a schedule, evaluation every epoch, early stopping, checkpoints, resume.

One process or many: under `torchrun` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel
over gloo, each rank reads its shard of every global batch, and only rank 0 writes files or shows
progress. `config.batch_size` is the global batch, so N processes take the same optimizer steps as one.

Bit-exact resume: weights, AdamW moments, the scheduler step, the global RNG states and the data
position (epoch, batches done in it) are saved; the data order is a function of (seed, epoch) only and
the DataLoader has its own generator, so nothing else advances the random streams.
"""
from __future__ import annotations

import copy
import gc
import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from gatedrnn.tasks.base import Task
from gatedrnn.train import checkpoint as ckpt
from gatedrnn.train.config import ConfigError, TrainConfig, layer_init, validate
from gatedrnn.train.evaluation import evaluate_split, forward
from gatedrnn.train.recorders import NullRecorder, RunRecorder
from gatedrnn.train.reproducibility import ResumableSampler, rng_state, seed_everything, set_rng_state
from gatedrnn.train.schedule import build_scheduler

# fields that define the run's trajectory: a resumed run must keep them to continue bit-exactly
IDENTITY_FIELDS = ("task", "task_options", "cell", "hidden_size", "num_layers", "dropout", "init", "forget_bias",
                   "chrono_max", "zoneout", "recurrent_dropout", "weight_drop", "candidate_dropout", "batch_size",
                   "lr",
                   "weight_decay", "clip_norm", "schedule", "warmup_steps", "step_every", "step_gamma", "seed")
KILL_AFTER_STEP_ENV = "GATEDRNN_TEST_KILL_AFTER_STEP"  # tests only: SIGKILL this process after that step


class TrainingError(RuntimeError):
    """Training cannot go on (the loss became NaN or inf); the message says where the last good checkpoint is."""


@dataclass
class TrainResult:
    out_dir: Path
    model: nn.Module  # unwrapped, holding the best validation weights
    task: Task
    val: dict[str, float]  # the best epoch's validation metrics
    test: dict[str, float]
    best_epoch: int
    steps: int
    seconds: float
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


def distributed_context() -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group); joins the gloo process group when
    launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size(), created


def check_writable_dir(path: Path) -> None:
    """`path` is, or can be created as, a writable directory (checked without creating anything)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"out_dir {str(path)!r} exists and is not a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"out_dir {str(path)!r} cannot be created: {str(probe)!r} is not a directory")
    try:  # an anonymous file (O_TMPFILE where available): the real test, also for root
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise ConfigError(f"out_dir {str(path)!r} is not writable: cannot create files in {str(probe)!r} "
                          f"({error.strerror})") from None


class Trainer:
    """Train `config.task` with `config`; `fit()` returns a TrainResult. Everything is checked in
    __init__, before any file is written."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                 task: Optional[Task] = None, description: Optional[str] = None) -> None:
        self.config = validate(config)
        self.out_dir = Path(config.out_dir)
        self.description = description or f"{config.task} {config.cell}"
        self.rank, self.world, self.owns_group = distributed_context()
        if config.batch_size % self.world:
            raise ConfigError(f"batch_size {config.batch_size} should be divisible by the {self.world} processes")
        if task is None:
            from gatedrnn.tasks import get_task

            try:
                task = get_task(config.task, **dict(config.task_options))
            except ValueError as error:
                raise ConfigError(str(error)) from None
        self.task = task
        self.layer_init = layer_init(config, task.options)
        if self.layer_init:  # a cell without gates (rnn) refuses gate-bias options: say so before any write
            from gatedrnn.models import build_rnn

            try:
                with torch.random.fork_rng(devices=[]):  # a 1x1 trial layer; the global RNG is left as it was
                    build_rnn(config.cell, 1, 1, init=self.layer_init)
            except (ValueError, TypeError) as error:
                raise ConfigError(f"layer options {self.layer_init} with cell {config.cell!r}: {error}") from None
        check_writable_dir(self.out_dir)
        self.splits = task.splits(config.seed)  # reads real data now, so a missing package fails before any write
        self.resume_from: Optional[tuple[dict, dict, dict]] = None
        self.best_from: Optional[dict] = None  # best/'s weights, when resuming a run that has them
        last = ckpt.recover_dir(self.out_dir / "last")
        if resume:
            if not last.exists():
                raise ckpt.CheckpointError(f"cannot resume: {str(self.out_dir / 'last')!r} does not exist")
            meta = ckpt.read_meta(last)
            self.resume_from = (meta, ckpt.read_weights(last, meta), ckpt.read_state(last, meta))
            best = self.out_dir / "best"
            if best.exists():  # checked now, before anything is written
                try:
                    self.best_from = ckpt.read_weights(best, ckpt.read_meta(best))
                except ckpt.CheckpointError as error:
                    raise ckpt.CheckpointError(f"cannot resume: {error} (last/ is fine: remove {str(best)!r} "
                                               f"to resume without the best weights so far)") from None
            saved = TrainConfig.from_dict(meta["config"])
            changed = [name for name in IDENTITY_FIELDS if getattr(saved, name) != getattr(config, name)]
            if changed:
                raise ConfigError(f"cannot resume {str(last)!r} with a different {', '.join(changed)} "
                                  f"(saved: {', '.join(f'{n}={getattr(saved, n)!r}' for n in changed)})")
        elif last.exists() and not overwrite:
            raise ConfigError(f"{str(self.out_dir)!r} already holds a run; pass --resume to continue it or "
                              f"--overwrite to start again")

    # ----- set-up -----
    def _build(self) -> None:
        config = self.config
        seed_everything(config.seed)
        self.train_set, self.val_set, self.test_set = self.splits["train"], self.splits["val"], self.splits["test"]
        init = {"init": self.layer_init} if self.layer_init else {}  # tasks written before `init` still work
        self.model = self.task.build_model(config.cell, config.hidden_size, config.num_layers, config.dropout, **init)
        self.module = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.module)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.per_rank_batch = config.batch_size // self.world
        self.sampler = ResumableSampler(self.train_set, num_replicas=self.world, rank=self.rank, seed=config.seed)
        self.loader = DataLoader(self.train_set, batch_size=self.per_rank_batch, sampler=self.sampler,
                                 collate_fn=self.task.collate, generator=torch.Generator().manual_seed(config.seed))
        self.steps_per_epoch = math.ceil(self.sampler.num_samples / self.per_rank_batch)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.scheduler = build_scheduler(self.optimizer, schedule=config.schedule, total_steps=self.total_steps,
                                         warmup_steps=config.warmup_steps, step_every=config.step_every,
                                         step_gamma=config.step_gamma)
        # counters, saved in every checkpoint
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.loss_sum, self.loss_count = 0.0, 0
        self.best_value: Optional[float] = None
        self.best_epoch, self.bad_epochs = 0, 0
        self.best_val: dict[str, float] = {}
        self.best_weights: Optional[dict] = None
        self.stopped_early = False
        if self.resume_from is not None:
            self._restore(*self.resume_from)

    def _restore(self, meta: dict, weights: dict, state: dict) -> None:
        ckpt.load_weights_into(self.module, weights, self.out_dir / "last" / ckpt.WEIGHTS_FILE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        counters = state["counters"]
        self.epoch, self.batch_in_epoch = counters["epoch"], counters["batch_in_epoch"]
        self.global_step = counters["global_step"]
        self.loss_sum, self.loss_count = counters["loss_sum"], counters["loss_count"]
        self.best_value, self.best_epoch = counters["best_value"], counters["best_epoch"]
        self.bad_epochs, self.stopped_early = counters["bad_epochs"], counters["stopped_early"]
        self.best_val = dict(state.get("best_val", {}))
        self.best_weights = self.best_from

    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "counters": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step,
                         "loss_sum": self.loss_sum, "loss_count": self.loss_count, "best_value": self.best_value,
                         "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                         "stopped_early": self.stopped_early},
            "best_val": dict(self.best_val),
        }

    def _save(self, name: str, metrics: dict[str, Any], *, resumable: bool) -> None:
        if resumable:
            self.last_saved_step = self.global_step
        if self.rank != 0:
            return
        try:
            ckpt.save_checkpoint(
                self.out_dir / name, model=self.module, config=self.config.to_dict(), task_name=self.config.task,
                task_options=self.task.options, metrics=metrics,
                position={"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step},
                state=self._state() if resumable else None,
            )
        except OSError as error:  # a full disk, a quota, a read-only mount: the previous checkpoint is untouched
            raise ckpt.CheckpointError(f"cannot write the checkpoint {str(self.out_dir / name)!r}: "
                                       f"{error.strerror or error}; the previous checkpoint there, if any, is intact") from None

    def leave_group(self, *, together: bool) -> None:
        """The end of a DDP run (fit calls it; after a failure, the caller): with `together`, every rank meets
        first; then this rank drops its DistributedDataParallel wrapper before the process group goes. In that
        order: when the wrapper's reducer held the group's last reference, destroying it (with the GIL held) waited
        for gloo's worker threads while one of them waited for the GIL to free a finished collective, and the rank
        never exited (seen in CI under torchrun). A group this trainer created is destroyed here, while the
        interpreter is whole; one the caller created is left to the caller. Safe to call twice."""
        if self.world <= 1:
            return
        import torch.distributed as dist

        if together and dist.is_initialized():
            dist.barrier()  # a rank tearing down gloo while rank 0 still writes can abort
        self.model = self.module
        gc.collect()  # the wrapper and its reducer now, should a reference cycle hold them
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def _rank_weight_digests(self) -> list[str]:
        """sha256 of the final weights on every rank (rank order): a check that DDP kept them identical."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
        if self.world == 1:
            return [digest.hexdigest()]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, digest.hexdigest())
        return gathered

    # ----- the loop -----
    def _train_step(self, inputs: Any, targets: torch.Tensor) -> tuple[float, float]:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task.loss(forward(self.model, inputs), targets)
        loss.backward()
        max_norm = self.config.clip_norm if self.config.clip_norm is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.scheduler.step()
        loss_value = loss.detach()
        if self.world > 1:  # the global batch's mean loss, the same number on every rank
            import torch.distributed as dist

            loss_value = loss_value.clone()
            dist.all_reduce(loss_value)
            loss_value /= self.world
        if not math.isfinite(float(loss_value)):  # the same number on every rank: all of them stop here
            last = (f"{str(self.out_dir / 'last')!r} (step {self.last_saved_step})" if self.last_saved_step is not None
                    else "none: nothing was saved yet")
            raise TrainingError(f"the training loss became {float(loss_value)} at step {self.global_step + 1} "
                                f"(epoch {self.epoch + 1}); training stopped and saved nothing more. The last good "
                                f"checkpoint is {last}. Try a lower lr or a clip_norm")
        return float(loss_value), float(grad_norm)

    def _end_epoch(self, recorder, started: float) -> bool:
        """Validate, keep the best, log, checkpoint `last/`; True when training should stop."""
        config = self.config
        val = evaluate_split(self.module, self.task, self.val_set, batch_size=max(256, self.per_rank_batch))
        metric, higher = self.task.info.metric, self.task.info.higher_is_better
        value = val[metric]
        improved = self.best_value is None or (value > self.best_value if higher else value < self.best_value)
        epoch_number = self.epoch + 1
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs, self.best_val = value, epoch_number, 0, dict(val)
            self.best_weights = copy.deepcopy(self.module.state_dict())
        else:
            self.bad_epochs += 1
        row = {"epoch": epoch_number, "step": self.global_step,
               "train_loss": self.loss_sum / max(1, self.loss_count),
               **{f"val_{k}": v for k, v in val.items()},
               "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.time() - started}
        recorder.epoch(row)
        self.history.append(row)
        self.epoch, self.batch_in_epoch, self.loss_sum, self.loss_count = epoch_number, 0, 0.0, 0
        if config.patience is not None and self.bad_epochs >= config.patience:
            self.stopped_early = True
        if improved:
            self._save("best", {"val": val, "epoch": epoch_number}, resumable=False)
        self._save("last", {"val": val, "epoch": epoch_number}, resumable=True)
        return self.stopped_early

    def fit(self) -> TrainResult:
        config = self.config
        self._build()
        self.history: list[dict[str, Any]] = []
        resume_step = self.global_step if self.resume_from is not None else None
        self.last_saved_step: Optional[int] = resume_step
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.resume_from is None:  # a new run (possibly --overwrite): nothing of an old one may mix in
                for stale in ("best", "tensorboard"):
                    shutil.rmtree(self.out_dir / stale, ignore_errors=True)
                (self.out_dir / "results.json").unlink(missing_ok=True)
            ckpt.atomic_write_bytes(self.out_dir / "config.json",
                                    json.dumps(config.to_dict(), indent=2, default=str).encode())
            recorder = RunRecorder(self.out_dir, resume_step=resume_step, resume_epoch=self.epoch,
                                   tensorboard=config.tensorboard, progress=config.progress)
        else:
            recorder = NullRecorder()
        kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "0") or 0)
        started = time.time()
        try:
            recorder.progress_start(self.description, self.total_steps, self.global_step)
            while (self.epoch < config.epochs and self.global_step < self.total_steps and not self.stopped_early):
                epoch_started = time.time()
                self.sampler.set_epoch(self.epoch, skip=self.batch_in_epoch * self.per_rank_batch)
                self.model.train()
                for inputs, targets in self.loader:
                    loss, grad_norm = self._train_step(inputs, targets)
                    self.global_step += 1
                    self.batch_in_epoch += 1
                    self.loss_sum += loss
                    self.loss_count += 1
                    recorder.step({"step": self.global_step, "epoch": self.epoch + 1, "loss": loss,
                                   "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm})
                    recorder.progress_update(self.global_step, loss)
                    at_epoch_end = self.batch_in_epoch == self.steps_per_epoch
                    if config.checkpoint_every and self.global_step % config.checkpoint_every == 0 and not at_epoch_end:
                        self._save("last", {"train_loss": loss}, resumable=True)
                    if kill_after and self.global_step == kill_after:
                        os.kill(os.getpid(), signal.SIGKILL)
                    if self.global_step >= self.total_steps:
                        break
                if self._end_epoch(recorder, epoch_started):
                    break
            recorder.progress_stop()
            if self.best_weights is not None:
                self.module.load_state_dict(self.best_weights)
            test = evaluate_split(self.module, self.task, self.test_set, batch_size=max(256, self.per_rank_batch))
            seconds = time.time() - started
            rank_digests = self._rank_weight_digests()
            if self.rank == 0:
                results = {"task": config.task, "task_options": dict(self.task.options), "cell": config.cell,
                           "best_epoch": self.best_epoch, "val": self.best_val, "test": test,
                           "steps": self.global_step, "seconds": seconds, "stopped_early": self.stopped_early,
                           "parameters": sum(p.numel() for p in self.module.parameters()),
                           "world_size": self.world, "rank_weight_digests": rank_digests}
                ckpt.atomic_write_bytes(self.out_dir / "results.json",
                                        json.dumps(results, indent=2, default=str).encode())
            if self.world > 1:
                self.leave_group(together=True)
        finally:
            recorder.close()
        return TrainResult(out_dir=self.out_dir, model=self.module, task=self.task, val=self.best_val, test=test,
                           best_epoch=self.best_epoch, steps=self.global_step, seconds=seconds,
                           stopped_early=self.stopped_early, history=self.history)
