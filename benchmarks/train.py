"""Training throughput of the LSTM recommender: Ray Train against a plain PyTorch loop.

    python -m benchmarks.train [--root workspace --sessions demo/sessions_train.parquet] [--epochs 4]

Run `make quickstart` first (it builds the demo workspace used by default). In one run:
  plain   a single-process PyTorch loop over the same session arrays, batch size and objective;
  ray x1  Ray Train, 1 worker, data streamed from Ray Data (``ray_jobs.train``);
  ray x2  Ray Train, 2 DDP workers.
Samples are training sessions; each figure is the median over epochs after the first
(warm-up) of sessions / epoch time, validation excluded. Target: ray x1 / plain >= 0.85.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from models import build
from models.losses import NextTrackObjective
from models.modules import fit_standardizers
from ray_jobs.train import TrainSettings, prepare_data, run_train, update_average


def plain_loop(root: str, sessions: str, settings: TrainSettings) -> tuple[float, int]:
    torch.set_num_threads(1)  # as a Ray Train worker with one CPU
    torch.manual_seed(settings.seed)
    data = prepare_data(root, sessions, settings.validation_fraction)  # exactly what run_train uses
    catalog, vocabulary = data.catalog, data.vocabulary
    arrays = {k: torch.from_numpy(v) for k, v in data.arrays.items()}
    model = build("lstm", content_dim=catalog.content.shape[1], n_ids=len(vocabulary))
    fit_standardizers(model, catalog.content)
    averaged = copy.deepcopy(model).requires_grad_(False)  # ray_jobs.train keeps the same weight average
    objective = NextTrackObjective(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    ids = catalog.vocabulary_ids(vocabulary)
    n = len(arrays["items"])
    rates = []
    for _ in range(settings.epochs):
        started = time.perf_counter()
        order = torch.randperm(n)
        for start in range(0, n, settings.batch_size):
            rows = order[start: start + settings.batch_size]
            loss = objective(arrays["items"][rows], arrays["hours"][rows], arrays["weekdays"][rows], catalog.content, ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(objective.parameters(), 5.0)
            optimizer.step()
            update_average(averaged, model, settings.ema_decay)
        rates.append(n / (time.perf_counter() - started))
    return statistics.median(rates[1:]), n


def ray_train(root: str, sessions: str, settings: TrainSettings, workers: int) -> float:
    """Median epoch time of rank 0; with N workers each epoch covers 1/N of the sessions per worker."""
    settings = TrainSettings(**{**settings.__dict__, "workers": workers})
    result = run_train("lstm", root, sessions, settings=settings, run_id=f"bench-{workers}w-{os.getpid()}")
    return statistics.median(h["epoch_seconds"] for h in result.history[1:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="workspace")
    parser.add_argument("--sessions", default="demo/sessions_train.parquet")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    args = parser.parse_args(argv)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, max_failures=0)

    import ray

    plain, n = plain_loop(args.root, args.sessions, settings)
    print(f"{n} training sessions, batch size {settings.batch_size}, {os.cpu_count()} cores")
    print(f"plain PyTorch loop, 1 thread:   {plain:8.1f} sessions/s")
    ray.init(include_dashboard=False, log_to_driver=False)
    rates = {}
    for workers in (1, 2):
        rates[workers] = n / ray_train(args.root, args.sessions, settings, workers)
        print(f"Ray Train, {workers} worker(s):        {rates[workers]:8.1f} sessions/s")
    print(f"ray x1 / plain = {rates[1] / plain:.2f}   (target >= 0.85)")
    print(f"ray x2 / ray x1 = {rates[2] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
