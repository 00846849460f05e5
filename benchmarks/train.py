"""Training throughput of the LSTM recommender: Ray Train against the same epoch run in-process.

    python -m benchmarks.train [--root workspace --sessions demo/sessions_train.parquet] [--epochs 4]

Run `musicray quickstart --full` first (it builds the demo workspace used by default). In one run:
  plain   the engine's epoch (``ray_jobs.training.train_epoch``) in this process, over the same
          session rows, task, batch size and objective held as tensors;
  ray x1  Ray Train, 1 worker, data streamed from Ray Data (``ray_jobs.train``);
  ray x2  Ray Train, 2 DDP workers.
Samples are training sessions; each figure is the median over epochs after the first
(warm-up) of sessions / epoch time, validation excluded. Target: ray x1 / plain >= 0.85.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import time

import numpy as np
import torch

from ray_jobs import tasks
from ray_jobs.tasks.recommender import RecommenderSettings
from ray_jobs.train import run_train
from ray_jobs.training import train_epoch


def plain_loop(root: str, sessions: str, settings: RecommenderSettings) -> tuple[float, int]:
    """The engine's own epoch (``train_epoch``) on the task ``run_train`` prepares, in this process,
    over in-memory tensors: no Ray Train workers, no Ray Data stream."""
    torch.set_num_threads(1)  # as a Ray Train worker with one CPU
    torch.manual_seed(settings.seed)
    prepared = tasks.prepare("lstm", root, sessions=sessions, settings=settings)
    task = prepared.task
    task.setup(rank=1, device=torch.device("cpu"))  # rank 1: no validation examples to build
    model = task.build()
    averaged = copy.deepcopy(model).requires_grad_(False)  # the weight average the engine keeps
    objective = task.objective(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    rows = prepared.dataset.to_pandas()
    arrays = {k: torch.from_numpy(np.stack(rows[k].to_numpy())) for k in ("items", "hours", "weekdays")}
    n = len(arrays["items"])

    def batches():
        order = torch.randperm(n)
        for start in range(0, n, settings.batch_size):
            index = order[start: start + settings.batch_size]
            yield (arrays["items"][index], arrays["hours"][index], arrays["weekdays"][index], task.content,
                   task.ids, None, None)

    rates = []
    for _ in range(settings.epochs):
        started = time.perf_counter()
        train_epoch(objective, optimizer, batches(), settings, model, averaged)
        rates.append(n / (time.perf_counter() - started))
    return statistics.median(rates[1:]), n


def ray_train(root: str, sessions: str, settings: RecommenderSettings, workers: int) -> float:
    """Median epoch time of rank 0; with N workers each epoch covers 1/N of the sessions per worker."""
    settings = dataclasses.replace(settings, workers=workers)
    result = run_train("lstm", root, sessions, settings=settings, run_id=f"bench-{workers}w-{os.getpid()}")
    return statistics.median(h["epoch_seconds"] for h in result.history[1:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="workspace")
    parser.add_argument("--sessions", default="demo/sessions_train.parquet")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=RecommenderSettings.batch_size)
    args = parser.parse_args(argv)
    settings = RecommenderSettings(epochs=args.epochs, batch_size=args.batch_size, max_failures=0)

    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    plain, n = plain_loop(args.root, args.sessions, settings)
    print(f"{n} training sessions, batch size {settings.batch_size}, {os.cpu_count()} cores")
    print(f"engine's epoch in-process, 1 thread: {plain:8.1f} sessions/s")
    rates = {}
    for workers in (1, 2):
        rates[workers] = n / ray_train(args.root, args.sessions, settings, workers)
        print(f"Ray Train, {workers} worker(s):        {rates[workers]:8.1f} sessions/s")
    print(f"ray x1 / plain = {rates[1] / plain:.2f}   (target >= 0.85)")
    print(f"ray x2 / ray x1 = {rates[2] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
