"""ASHA against running every trial to the end, on the same sampled configs.

    python -m benchmarks.tune --root ROOT --sessions LOG [--model lstm] [--samples 16] [--epochs 6] [--seed 0]

Draws ``--samples`` configs from the model's search space (seeded), then runs them twice with
``ray_jobs.tune.run_tune``: once with the ASHA scheduler, once FIFO (every trial trains all
``--epochs``). Prints each one's best validation metric and the trial-epochs it spent, and the
ratios (target: ASHA within 2% of the best metric with at most half the epochs). Neither run
writes the workspace's best_config.json; both leave their reports in ``<root>/reports/tune/``.
Needs a workspace with extracted features (``make quickstart`` makes one).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

from ray_jobs.tune import run_tune, sample_configs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="workspace")
    parser.add_argument("--sessions", default="demo/sessions_train.parquet")
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    configs = sample_configs(args.model, {}, args.samples, args.seed)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    outcomes, seconds = {}, {}
    for scheduler in ("asha", "fifo"):
        started = time.perf_counter()
        outcomes[scheduler] = run_tune(args.model, args.root, args.sessions, samples=args.samples,
                                       name=f"bench-{scheduler}-{stamp}", epochs=args.epochs, seed=args.seed,
                                       scheduler=scheduler, grace_period=args.grace_period,
                                       reduction_factor=args.reduction_factor, configs=configs, publish=False)
        seconds[scheduler] = time.perf_counter() - started

    asha, fifo = outcomes["asha"], outcomes["fifo"]
    metric, mode = asha.metric, asha.mode
    print(f"\n{args.model}: {args.samples} configs (seed {args.seed}), up to {args.epochs} epochs each; "
          f"ASHA grace period {args.grace_period}, reduction factor {args.reduction_factor}")
    print(f"{'run':<22} {'best ' + metric:>18} {'trial-epochs':>13} {'seconds':>9}")
    for label, key in (("ASHA", "asha"), ("to completion (FIFO)", "fifo")):
        outcome = outcomes[key]
        print(f"{label:<22} {outcome.best['value']:>18.4f} {outcome.epochs_spent:>13d} {seconds[key]:>9.1f}")
    metric_ratio = asha.best["value"] / fifo.best["value"]
    epoch_ratio = asha.epochs_spent / fifo.epochs_spent
    within = metric_ratio >= 0.98 if mode == "max" else metric_ratio <= 1.02
    print(f"ASHA / completion: best {metric} {metric_ratio:.3f} (target within 2%: {'met' if within else 'missed'}), "
          f"trial-epochs {epoch_ratio:.2f} (target <= 0.5: {'met' if epoch_ratio <= 0.5 else 'missed'}), "
          f"wall time {seconds['asha'] / seconds['fifo']:.2f}")
    same = (asha.best["train"], asha.best["model_config"]) == (fifo.best["train"], fifo.best["model_config"])
    print(f"best config ({'the same config in both runs' if same else 'ASHA'}): {asha.best['train']} "
          f"{asha.best['model_config']}" + ("" if same else f"; FIFO: {fifo.best['train']} {fifo.best['model_config']}"))


if __name__ == "__main__":
    main()
