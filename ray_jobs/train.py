"""Train the models with Ray Train: DDP workers fed by Ray Data, a checkpoint every epoch.

    python -m ray_jobs.train --model {lstm,rnn,dnn,autoencoder,all} --root ROOT --sessions LOG
                             [--workers N] [--gpu] [--epochs E] [--run-name NAME] [--set FIELD=VALUE]
                             [--lr LR] [--batch-size B] [--weight-decay WD] [--no-best-config]
    python -m ray_jobs.train --model generator --root ROOT [...]   (ray_jobs/train_generator.py)

For the recommenders, the latest sessions of the log (``--validation-fraction``) are held out; after every epoch
rank 0 ranks the whole catalog for every validation position and reports MRR@20, which
picks the best checkpoint. Checkpoints live under ``<root>/models/<model>/<run>/``; the best
one is copied to ``<run>/model/`` and ``<root>/models/<model>/LATEST`` names the run last.
Re-running with the same ``--run-name`` resumes from the run's latest checkpoint.

When ``musicray tune`` has written ``<root>/models/<model>/best_config.json``, its training
settings and model config are the defaults; explicit flags override them, ``--no-best-config``
ignores the file, and the job prints which config it used.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

from models import GENERATORS, RECOMMENDERS, build, model_class
from models.losses import NegativeSampler, NextTrackObjective
from models.modules import fit_standardizers
from musicray import storage, workspace
from musicray.checkpoints import MODEL_FILES, newest_checkpoint, restore_training, write_training_checkpoint
from musicray.content import TrackCatalog
from musicray.evaluation import evaluate, make_examples
from musicray.scoring import ModelScorer
from musicray.sessions import load_log, session_arrays, split_by_time
from ray_jobs.common import init_ray, parse_model_config, publish_best, read_best_config, run_config

SELECTION_METRIC = "val_MRR@20"


@dataclass
class TrainSettings:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-5
    # Validation, checkpoints and the published model use an exponential moving average of the
    # weights: on small logs the raw weights swing between epochs (validation MRR@20 +-0.02 on
    # the demo); the average is steadier and, on the demo's validation split, ~0.03 better.
    ema_decay: float = 0.98
    workers: int = 1
    gpu: bool = False
    max_failures: int = 1
    validation_fraction: float = 0.1
    full_softmax_max_tracks: int = 200_000  # above this, sampled softmax with logQ correction
    negatives: int = 2048
    seed: int = 0


@dataclass
class TrainingData:
    catalog: TrackCatalog
    arrays: dict[str, np.ndarray]  # padded training sessions: items, hours, weekdays
    vocabulary: list[str]  # tracks played in training, the ID-embedding rows
    validation: pd.DataFrame  # the held-out newest sessions
    play_counts: np.ndarray  # per catalog track, for negative sampling
    dropped_plays: int  # log rows naming tracks without features


def prepare_data(root: str, sessions: str, validation_fraction: float) -> TrainingData:
    """Features + listening log -> what every training worker needs (the same for any model)."""
    catalog = TrackCatalog.from_workspace(root)
    log = load_log(sessions)
    known = log["track_id"].isin(catalog.index.keys())
    train_log, validation = split_by_time(log[known], validation_fraction)
    arrays = session_arrays(train_log, catalog.index)
    if len(arrays["items"]) == 0:
        raise ValueError(f"listening log {sessions} has no session of two or more known tracks to learn from")
    play_counts = np.bincount(train_log["track_id"].map(catalog.index), minlength=len(catalog))
    return TrainingData(catalog, arrays, sorted(set(train_log["track_id"])), validation, play_counts,
                        int((~known).sum()))


@dataclass
class TrainResult:
    model: str
    run_id: str
    best: dict
    history: list[dict]
    dropped_plays: int


# ---------------------------------------------------------------------------------------------
# On every worker


def train_loop(config: dict) -> None:
    shared = ray.get(config["shared"])
    settings: TrainSettings = config["settings"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(settings.seed + rank)

    model = build(config["model"], **config["model_config"])
    fit_standardizers(model, shared["content"])
    averaged = copy.deepcopy(model).requires_grad_(False)  # the EMA of the weights: what is validated and kept
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    start_epoch, history = 0, []
    resume_from = newest_checkpoint(config["run_uri"], CHECKPOINT_FILES)
    if resume_from:  # resuming: same run name, or an automatic retry after a failure
        start_epoch, history = restore_training(resume_from, averaged, optimizer, training_model=model)

    objective = ray.train.torch.prepare_model(NextTrackObjective(model))
    content, ids = shared["content"].to(device), shared["ids"].to(device)
    sampler = None
    if len(content) > settings.full_softmax_max_tracks:
        sampler = NegativeSampler(shared["play_counts"], settings.negatives)
    validation = make_examples(shared["validation"], shared["track_ids"]) if rank == 0 else None
    catalog = TrackCatalog(shared["track_ids"], shared["content"])
    shard = ray.train.get_dataset_shard("train")

    for epoch in range(start_epoch, settings.epochs):
        objective.train()
        started, total, steps = time.perf_counter(), 0.0, 0
        for batch in shard.iter_torch_batches(batch_size=settings.batch_size, dtypes=torch.long, device=device,
                                              local_shuffle_buffer_size=4 * settings.batch_size,
                                              local_shuffle_seed=settings.seed + epoch):
            negatives, log_q = sampler.sample(device) if sampler else (None, None)
            loss = objective(batch["items"], batch["hours"], batch["weekdays"], content, ids, negatives, log_q)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(objective.parameters(), 5.0)
            optimizer.step()
            update_average(averaged, model, settings.ema_decay)
            total, steps = total + loss.item(), steps + 1
        metrics = {"epoch": epoch, "train_loss": total / max(steps, 1), "epoch_seconds": time.perf_counter() - started}
        if rank != 0:
            ray.train.report(metrics)
        else:
            scores = evaluate(ModelScorer(config["model"], averaged, catalog, shared["vocabulary"], device), validation)
            metrics.update({f"val_{k}": v for k, v in scores["all"].items()})
            history.append(metrics)
            with tempfile.TemporaryDirectory() as directory:
                write_training_checkpoint(directory, config["model"], averaged, shared["vocabulary"], optimizer,
                                          extra={"epoch": epoch, "history": history, "metrics": metrics,
                                                 "sessions": config["sessions"]}, training_model=model)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        if config.get("crash_after_epoch") == epoch:
            os._exit(1)  # fault injection for tests: a worker dies without cleaning up


@torch.no_grad()
def update_average(averaged: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """One step of the exponential moving average of ``model``'s weights kept in ``averaged``."""
    for average, weight in zip(averaged.parameters(), model.parameters()):
        average.lerp_(weight, 1.0 - decay)


# state_dict.pt holds the averaged weights (what is served); training_weights.pt the raw ones behind it
CHECKPOINT_FILES = {*MODEL_FILES, "training_weights.pt", "optimizer.pt"}


# ---------------------------------------------------------------------------------------------
# On the driver


def worker_inputs(data: TrainingData) -> tuple[dict, pd.DataFrame]:
    """What every worker reads from the object store (the catalog's content, the vocabulary, the
    held-out sessions), and the training sessions as a table for Ray Data."""
    catalog, vocabulary = data.catalog, data.vocabulary
    shared = {"content": catalog.content, "ids": catalog.vocabulary_ids(vocabulary),
              "play_counts": torch.from_numpy(data.play_counts), "track_ids": catalog.track_ids,
              "vocabulary": vocabulary, "validation": data.validation}
    return shared, pd.DataFrame({k: list(v) for k, v in data.arrays.items()})


def full_model_config(data: TrainingData, model_config: dict | None) -> dict:
    """A model config with the fields the data decides (feature width, vocabulary size)."""
    return {**(model_config or {}), "content_dim": data.catalog.content.shape[1], "n_ids": len(data.vocabulary)}


def make_trainer(model: str, model_config: dict, settings: TrainSettings, shared: ray.ObjectRef,
                 sessions_table: pd.DataFrame, sessions: str, run_uri: str, run_config: ray.train.RunConfig,
                 scaling_config: ScalingConfig | None = None, crash_after_epoch: int | None = None) -> TorchTrainer:
    """One recommender's Ray Train run: ``run_train`` fits one, every trial of a search another."""
    return TorchTrainer(
        train_loop,
        train_loop_config={"model": model, "model_config": model_config, "settings": settings, "shared": shared,
                           "sessions": sessions, "run_uri": run_uri, "crash_after_epoch": crash_after_epoch},
        scaling_config=scaling_config or ScalingConfig(num_workers=settings.workers, use_gpu=settings.gpu),
        run_config=run_config,
        datasets={"train": ray.data.from_pandas(sessions_table)},
    )


def run_train(model: str, root: str, sessions: str, *, settings: TrainSettings = TrainSettings(),
              run_id: str | None = None, model_config: dict | None = None,
              crash_after_epoch: int | None = None, callbacks: list | None = None) -> TrainResult:
    """Train one recommender on the workspace's features and a listening log; publish its best checkpoint.
    ``callbacks`` are Ray Train callbacks (the quickstart's progress bar)."""
    model_class(model)  # an unknown name fails here, before any work
    root = storage.normalize(root)
    data = prepare_data(root, sessions, settings.validation_fraction)
    run_id = run_id or f"{model}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"

    init_ray()
    shared, sessions_table = worker_inputs(data)
    models_uri = workspace.models_dir(root, model)
    trainer = make_trainer(model, full_model_config(data, model_config), settings, ray.put(shared), sessions_table,
                           sessions, storage.join(models_uri, run_id),
                           run_config(models_uri, run_id, settings.max_failures, SELECTION_METRIC, "max",
                                      callbacks=callbacks),
                           crash_after_epoch=crash_after_epoch)
    best, history = publish_best(trainer.fit(), root, model, run_id, SELECTION_METRIC, "max")
    return TrainResult(model, run_id, best, history, data.dropped_plays)


def run_trains(jobs: dict[str, tuple[TrainSettings, dict]], root: str, sessions: str, *,
               run_id: str | None = None, callbacks: list | None = None) -> list[TrainResult]:
    """Train several recommenders at once (``jobs``: model -> (settings, model config)).

    Each run's driver is a Ray task, as Tune runs its trials, so one run's start-up (worker
    group, process group, data) overlaps another's epochs, and the runs share the cluster's CPUs
    and GPUs as they free up. ``run_id`` names every run (each in its model's folder). Results come
    back in the order of ``jobs``; the first failure is raised.
    """
    for model in jobs:
        model_class(model)
    if len(jobs) == 1:
        (model, (settings, model_config)), = jobs.items()
        return [run_train(model, root, sessions, settings=settings, run_id=run_id, model_config=model_config,
                          callbacks=callbacks)]
    init_ray()
    driver = ray.remote(num_cpus=0)(run_train)  # only waits on its Train run, like a Tune trial's driver
    runs = [driver.remote(model, root, sessions, settings=settings, model_config=model_config, run_id=run_id,
                          callbacks=callbacks) for model, (settings, model_config) in jobs.items()]
    try:
        return ray.get(runs)
    except ray.exceptions.RayTaskError as error:  # the run's own error (a missing workspace...), not Ray's wrapper
        raise error.cause from None


def parse_args(argv=None) -> argparse.Namespace:
    from ray_jobs.train_generator import GeneratorSettings

    parser = argparse.ArgumentParser(prog="musicray train", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, choices=[*RECOMMENDERS, *GENERATORS, "all"],
                        help="a model, or all = the four recommenders")
    parser.add_argument("--root", required=True, help="workspace root with extracted features")
    parser.add_argument("--sessions", help="listening log (Parquet: user_id, track_id, ts); recommenders only")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--epochs", type=int, help=f"default {TrainSettings.epochs} ({GeneratorSettings.epochs} "
                                                   "for the generator)")
    parser.add_argument("--batch-size", type=int, help=f"default {TrainSettings.batch_size} "
                                                       f"({GeneratorSettings.batch_size} crops for the generator)")
    parser.add_argument("--lr", type=float, help=f"default {TrainSettings.lr} ({GeneratorSettings.lr} for the generator)")
    parser.add_argument("--weight-decay", type=float, help=f"default {TrainSettings.weight_decay}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-failures", type=int, default=TrainSettings.max_failures)
    parser.add_argument("--full-softmax-max-tracks", type=int, default=TrainSettings.full_softmax_max_tracks)
    parser.add_argument("--crop-frames", type=int, default=GeneratorSettings.crop_frames,
                        help="generator: training window in log-mel frames (43 per second)")
    parser.add_argument("--run-name", help="re-use a name to resume that run")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a model config field, e.g. --set dim=128 (repeatable)")
    parser.add_argument("--no-best-config", action="store_true",
                        help="ignore <root>/models/<model>/best_config.json (written by musicray tune)")
    args = parser.parse_args(argv)
    if args.model not in GENERATORS and not args.sessions:
        parser.error(f"--sessions is required to train {args.model!r}")
    given = [v for v in (args.epochs, args.batch_size) if v is not None]
    if min([args.workers, args.crop_frames, *given]) < 1:
        parser.error("--workers, --epochs, --batch-size and --crop-frames must be >= 1")
    args.model_config = parse_model_config(parser, args.set)
    return args


# settings that a best_config.json may set and a flag of the same name overrides
SEARCHABLE_FLAGS = ("epochs", "batch_size", "lr", "weight_decay")


def configure(args: argparse.Namespace, model: str):
    """The training settings and model config one model trains with, and a line saying where they came from.

    Precedence: the settings' defaults, then ``<root>/models/<model>/best_config.json`` as
    ``musicray tune`` wrote it (unless ``--no-best-config``), then the explicit flags
    (``--lr``, ``--batch-size``, ``--weight-decay``, ``--epochs``, ``--set FIELD=VALUE``).
    """
    from ray_jobs.train_generator import GeneratorSettings

    best = None if args.no_best_config else read_best_config(args.root, model)
    explicit = {name: getattr(args, name) for name in SEARCHABLE_FLAGS if getattr(args, name) is not None}
    common = {"workers": args.workers, "gpu": args.gpu, "max_failures": args.max_failures, "seed": args.seed}
    if model in GENERATORS:
        settings_class, common["crop_frames"] = GeneratorSettings, args.crop_frames
    else:
        settings_class, common["full_softmax_max_tracks"] = TrainSettings, args.full_softmax_max_tracks
    searched = dict(best["train"]) if best else {}
    unknown = sorted(set(searched) - {f.name for f in fields(settings_class)})
    if unknown:
        raise ValueError(f"best config {workspace.best_config_file(args.root, model)} sets unknown training setting(s) "
                         f"{unknown}; fix or delete it, or pass --no-best-config")
    settings = settings_class(**{**common, **searched, **explicit})
    model_config = {**(best["model_config"] if best else {}), **args.model_config}

    overrides = [f"--{name.replace('_', '-')}" for name in explicit] + [f"--set {k}" for k in args.model_config]
    if best:
        source = (f"{model}: config from {workspace.best_config_file(args.root, model)} (search {best['search']!r}, "
                  f"{best['metric']} {best['value']:.4f})")
        if overrides:
            source += f", overridden by {', '.join(overrides)}"
    else:
        why = "--no-best-config" if args.no_best_config else f"no {workspace.best_config_file(args.root, model)}"
        source = f"{model}: default config ({why})" + (f" with {', '.join(overrides)}" if overrides else "")
    return settings, model_config, source


def main(argv=None) -> int:
    args = parse_args(argv)
    names = list(RECOMMENDERS) if args.model == "all" else [args.model]
    try:
        jobs = {}
        for name in names:
            settings, model_config, source = configure(args, name)
            print(source)
            jobs[name] = settings, model_config
        if args.model in GENERATORS:
            from ray_jobs.train_generator import run_train_generator, summary

            settings, model_config = jobs[args.model]
            print(summary(run_train_generator(args.root, settings=settings, run_id=args.run_name,
                                              model_config=model_config)))
            return 0
        results = run_trains(jobs, args.root, args.sessions, run_id=args.run_name)
    except (ValueError, FileNotFoundError) as error:
        print(f"musicray train: error: {error}", file=sys.stderr)
        return 2
    for result in results:
        if result.dropped_plays:
            print(f"{result.model}: {result.dropped_plays} log rows name tracks without features; they were left out")
        best = result.best
        print(f"{result.model} {result.run_id}: best epoch {best['epoch']} of {len(result.history)}, "
              f"val MRR@20 {best[SELECTION_METRIC]:.4f}, HR@20 {best['val_HR@20']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
