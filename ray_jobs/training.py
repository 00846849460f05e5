"""The one Ray Train engine: every model's training is a ``Task`` that plugs into one loop.

On every worker, ``train_loop_per_worker`` seeds, asks the task for its model, builds AdamW,
resumes from the run's newest checkpoint, wraps the task's objective for DDP, and then, each
epoch, steps through the batches the task draws from this worker's Ray Data shard. After every
epoch rank 0 validates (the task's metrics), writes a checkpoint and reports; the other ranks
report their loss. On the driver, ``make_trainer`` builds the ``TorchTrainer`` that a training
job fits once and every trial of a search fits again, and ``fit`` publishes the best checkpoint.

A task (``ray_jobs/tasks/``) says only what differs between models: how to build the model,
the objective DDP wraps, the batches of one epoch, the validation metrics, and what a checkpoint
carries besides the weights. ``hooks`` are callbacks that run on the workers after each epoch;
only tests install them (to kill a worker mid-run).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator, Protocol

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn

from musicray import storage, workspace
from musicray.checkpoints import MODEL_FILES, newest_checkpoint, restore_training, write_training_checkpoint


@dataclass
class Settings:
    """What every model trains with; a task's settings add its own fields."""
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-5
    grad_clip: float = 5.0  # max gradient norm per step
    # With a decay > 0, validation, checkpoints and the published model use an exponential moving
    # average of the weights (steadier between epochs on small logs); 0 keeps the raw weights.
    ema_decay: float = 0.0
    workers: int = 1
    gpu: bool = False
    max_failures: int = 1
    validation_fraction: float = 0.1
    seed: int = 0


class Task(Protocol):
    """How one model trains. Pickled to every worker, so it holds object refs, not big data."""
    model: str  # the registry name: checkpoints live under <root>/models/<model>/
    metric: str  # the validation metric that picks the best checkpoint (and that Tune optimises)
    mode: str  # "max" or "min"
    settings: Settings

    def with_config(self, train: dict, model: dict) -> "Task":
        """The same task with some settings and model config fields replaced (a search trial)."""

    def setup(self, rank: int, device: torch.device) -> None:
        """Fetch what this worker needs from the object store; runs before ``build``."""

    def build(self) -> nn.Module:
        """A fresh model, with the same initial weights on every rank for the same seed."""

    def objective(self, model: nn.Module) -> nn.Module:
        """The module DDP wraps: its ``forward(*batch)`` returns the loss."""

    def batches(self, shard, epoch: int, rank: int, device: torch.device) -> Iterator[tuple]:
        """One epoch of this worker's steps: the objective's arguments for each."""

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Rank 0, after every epoch: metrics of ``model`` (the weight average when there is one)."""

    def vocabulary(self) -> list[str]:
        """What the checkpoint's vocab.json holds (ID-embedding rows, or the style labels)."""

    def checkpoint_extra(self) -> dict:
        """Fields a checkpoint's config.json carries besides the engine's epoch, history and metrics."""

    # Optional: ``on_publish(root, run_id)`` runs on the driver once the run's best checkpoint is
    # copied and before LATEST names the run (the audio encoder embeds the catalog there).


@dataclass
class Prepared:
    """What the driver prepares once for a model: a run's, or every trial's of a search."""
    task: Task
    dataset: ray.data.Dataset  # the training rows, sharded across the workers
    info: dict = field(default_factory=dict)  # what preparing found out, for the job's summary


@dataclass
class TrainResult:
    model: str
    run_id: str
    best: dict  # the metrics of the best epoch
    history: list[dict]  # every epoch's metrics, resumed ones included
    info: dict  # the Prepared's info


# ---------------------------------------------------------------------------------------------
# On every worker


def train_loop_per_worker(config: dict) -> None:
    task: Task = config["task"]
    settings = task.settings
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(1)  # one worker per core; small LSTMs get ~8x slower when threads contend
    torch.manual_seed(settings.seed + rank)

    task.setup(rank, device)
    model = task.build().to(device)  # before the optimizer, so a restored optimizer state lands on the device
    averaged = copy.deepcopy(model).requires_grad_(False) if settings.ema_decay else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    start_epoch, history = 0, []
    resume_from = newest_checkpoint(config["run_uri"], checkpoint_files(settings))
    if resume_from:  # resuming: same run name, or an automatic retry after a failure
        start_epoch, history = restore_training(resume_from, averaged, optimizer,
                                                training_model=model if averaged is not model else None)
    objective = ray.train.torch.prepare_model(task.objective(model))  # DDP when there are several workers
    shard = ray.train.get_dataset_shard("train")

    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        train_loss = train_epoch(objective, optimizer, task.batches(shard, epoch, rank, device), settings,
                                 model, averaged)
        metrics = {"epoch": epoch, "train_loss": train_loss, "epoch_seconds": time.perf_counter() - started}
        if rank != 0:
            ray.train.report(metrics)
        else:
            metrics.update(task.validate(averaged, device))
            history.append(metrics)
            with tempfile.TemporaryDirectory() as directory:
                write_training_checkpoint(directory, task.model, averaged, task.vocabulary(), optimizer,
                                          extra={"epoch": epoch, "history": history, "metrics": metrics,
                                                 **task.checkpoint_extra()},
                                          training_model=model if averaged is not model else None)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        for hook in config["hooks"]:
            hook.after_epoch(epoch, rank)


def shuffled_batches(shard, settings: Settings, epoch: int, *, device: torch.device | None = None,
                     buffer_batches: int = 4):
    """One epoch of a worker's shard in an order fixed by the seed and the epoch, so a resumed run sees
    the batches it would have seen: long tensors on ``device``, or numpy batches without one."""
    common = dict(batch_size=settings.batch_size, local_shuffle_buffer_size=buffer_batches * settings.batch_size,
                  local_shuffle_seed=settings.seed + epoch)
    if device is not None:
        return shard.iter_torch_batches(dtypes=torch.long, device=device, **common)
    return shard.iter_batches(batch_format="numpy", **common)


def train_epoch(objective: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[tuple],
                settings: Settings, model: nn.Module, averaged: nn.Module) -> float:
    """One pass over ``batches``: step, clip, and update the weight average; the mean loss.
    The benchmark times this same function outside Ray."""
    objective.train()
    total, steps = 0.0, 0
    for batch in batches:
        loss = objective(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), settings.grad_clip)
        optimizer.step()
        if averaged is not model:
            update_average(averaged, model, settings.ema_decay)
        total, steps = total + loss.item(), steps + 1
    return total / max(steps, 1)


@torch.no_grad()
def update_average(averaged: nn.Module, model: nn.Module, decay: float) -> None:
    """One step of the exponential moving average of ``model``'s weights kept in ``averaged``."""
    for average, weight in zip(averaged.parameters(), model.parameters()):
        average.lerp_(weight, 1.0 - decay)


def checkpoint_files(settings: Settings) -> set[str]:
    """A complete checkpoint: the model files (the averaged weights when averaging: what is
    served), the optimizer state, and then the raw weights behind the average."""
    return {*MODEL_FILES, "optimizer.pt", *(("training_weights.pt",) if settings.ema_decay else ())}


# ---------------------------------------------------------------------------------------------
# On the driver


def new_run_id(model: str) -> str:
    return f"{model}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"


def make_trainer(task: Task, dataset: ray.data.Dataset, run_uri: str, run_config: ray.train.RunConfig,
                 scaling_config: ScalingConfig | None = None, hooks: Iterable = ()) -> TorchTrainer:
    """One Ray Train run of ``task``: a training job fits one, every trial of a search another."""
    settings = task.settings
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"task": task, "run_uri": run_uri, "hooks": list(hooks)},
        scaling_config=scaling_config or ScalingConfig(num_workers=settings.workers, use_gpu=settings.gpu),
        run_config=run_config,
        datasets={"train": dataset},
    )


def run_config(storage_uri: str, run_id: str, max_failures: int, metric: str, mode: str,
               callbacks: list | None = None) -> ray.train.RunConfig:
    """Where a training run keeps its checkpoints (``<storage_uri>/<run_id>/``, the two best by
    ``metric`` kept), and how often a failed worker is retried. The training jobs store runs in
    ``<root>/models/<model>``, the search in ``<root>/tune/<search>/runs``; ``callbacks`` are Ray
    Train callbacks (a progress bar, the search's report to Tune)."""
    fs, path = storage.resolve(storage_uri)
    return ray.train.RunConfig(
        name=run_id, storage_path=path, storage_filesystem=fs, callbacks=callbacks,
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=metric,
                                                     checkpoint_score_order=mode),
    )


def fit(prepared: Prepared, root: str, run_id: str, *, callbacks: list | None = None,
        hooks: Iterable = ()) -> TrainResult:
    """Train a prepared task as run ``run_id`` (re-using a name resumes it); publish its best checkpoint."""
    task = prepared.task
    models_uri = workspace.models_dir(root, task.model)
    trainer = make_trainer(task, prepared.dataset, workspace.run_dir(root, task.model, run_id),
                           run_config(models_uri, run_id, task.settings.max_failures, task.metric, task.mode,
                                      callbacks=callbacks),
                           hooks=hooks)
    best, history = publish_best(trainer.fit(), root, task.model, run_id, task.metric, task.mode,
                                 on_publish=getattr(task, "on_publish", None))
    return TrainResult(task.model, run_id, best, history, prepared.info)


def publish_best(result: ray.train.Result, root: str, model: str, run_id: str, metric: str,
                 mode: str, on_publish=None) -> tuple[dict, list[dict]]:
    """Copy a finished run's best checkpoint to ``<run>/model/``, run ``on_publish(root, run_id)``,
    then point LATEST at the run.

    Returns the best epoch's metrics and the history of every epoch (resumed ones included).
    """
    best = result.get_best_checkpoint(metric=metric, mode=mode)
    target = workspace.model_dir(root, model, run_id)
    with best.as_directory() as directory:
        for name in MODEL_FILES:
            with open(os.path.join(directory, name), "rb") as f:
                storage.write_bytes(storage.join(target, name), f.read())
    if on_publish:
        on_publish(root, run_id)
    storage.publish(workspace.model_pointer(root, model), run_id)  # data first, pointer last
    best_meta = json.loads(storage.read_text(storage.join(target, "config.json")))
    with result.checkpoint.as_directory() as directory:  # the latest epoch holds the whole history
        with open(os.path.join(directory, "config.json")) as f:
            history = json.load(f)["history"]
    return best_meta["metrics"], history
