"""Hyperparameter search with Ray Tune for every model type: Optuna proposes, ASHA stops early.

    python -m ray_jobs.tune --model {lstm,rnn,dnn,autoencoder,generator,tagger} --root ROOT [--sessions LOG]
                            --samples N [--epochs E] [--gpu [--gpu-share F]] [--workers W] [--name NAME]
                            [--seed S] [--set FIELD=VALUE ...] [--tags COLUMN,...]

The model's task is prepared once (``ray_jobs.tasks.prepare``: data, shared inputs, Ray Data
rows); each trial is a function that takes that task with its sampled config (``task.with_config``),
builds the engine's ``TorchTrainer`` (``ray_jobs.training.make_trainer``) and fits it; the Train
run's ``TuneReportCallback`` passes every epoch's metrics to Tune. The search space sits next to
each model's config (``SEARCH_SPACE`` in ``models/<model>.py``): model config fields and training
settings (lr, batch size, weight decay). ASHA stops trials whose validation metric lags at each
rung, the metric the task selects its checkpoints on: val MRR@20 for the recommenders, the
validation loss (nats per frame) for the generator, the validation macro-F1 of the first tag column
(``--tags``, default ``label``) for the tagger.

Resources: a trial's function only drives its Train run, so it reserves memory and no CPU; the
run's workers take one CPU each (and ``--gpu-share`` of a GPU with ``--gpu``), and
``max_concurrent_trials`` is how many such runs the cluster holds at once. So every trial that
starts can place its workers: trial drivers never sit on the CPUs their own workers wait for.

Writes ``<root>/tune/<name>/`` (Tune's experiment, each trial's Train run under ``runs/``),
``<root>/models/<model>/best_config.json`` (which ``musicray train`` then uses), and a report in
``<root>/reports/tune/<name>/``: ``trials.csv``, ``best_config.json``, ``report.md`` and
``curves.png`` (the metric of every trial over its epochs). Running again with the same ``--name``
resumes an interrupted search (``Tuner.restore``): finished trials are kept, unfinished ones
continue from their last checkpoint, and the rest are sampled.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import ray
import ray.tune
from ray.train import ScalingConfig
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from models import MODELS, RECOMMENDERS, SEARCH_SPACES, TAGGERS, model_class
from musicray import plots, storage, workspace
from ray_jobs import tasks
from ray_jobs.common import cluster_resources, init_ray, parse_model_config
from ray_jobs.training import Prepared, make_trainer, run_config

EPOCHS = "epochs_done"  # ASHA's time axis: survives a trial's restart, unlike Tune's training_iteration
TRIAL_DRIVER = {"CPU": 0, "memory": 256 * 2**20}  # a trial's own function only waits on its Train run


# ---------------------------------------------------------------------------------------------
# The search space


def to_tune(space: dict) -> dict:
    """``SEARCH_SPACE`` entries, (kind, *arguments), -> Ray Tune distributions, nesting kept."""
    kinds = {"choice": ray.tune.choice, "uniform": ray.tune.uniform, "loguniform": ray.tune.loguniform,
             "randint": ray.tune.randint}
    converted = {}
    for name, entry in space.items():
        if isinstance(entry, dict):
            converted[name] = to_tune(entry)
        elif entry[0] in kinds:
            converted[name] = kinds[entry[0]](*entry[1:])
        else:
            raise ValueError(f"search space entry {name!r} has unknown kind {entry[0]!r}; use one of {sorted(kinds)}")
    return converted


def param_space(model: str, fixed: dict) -> dict:
    """The model's search space as Tune's ``param_space``; model fields fixed with ``--set`` leave it."""
    space = SEARCH_SPACES[model]
    return to_tune({"model": {k: v for k, v in space["model"].items() if k not in fixed}, "train": space["train"]})


def sample_configs(model: str, fixed: dict, count: int, seed: int) -> list[dict]:
    """``count`` configs drawn at random from the space, the same for the same seed (the benchmark
    runs one list of configs under two schedulers)."""
    rng = np.random.default_rng(seed)
    space = param_space(model, fixed)
    return [{group: {name: plain(domain.sample(random_state=rng)) for name, domain in space[group].items()}
             for group in space} for _ in range(count)]


def plain(value):
    """A numpy scalar as the Python number it holds (configs are written as JSON)."""
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------------------------------
# Trials: what the driver prepares once, and the function every trial runs


class ReportEpochsToTune(TuneReportCallback):
    """Tune sees each epoch's metrics and the number of epochs done, from the train loop's own
    0-based ``epoch``: a trial resumed after an interruption continues its count."""

    def after_report(self, run_context, metrics, checkpoint):
        super().after_report(run_context, [{**m, EPOCHS: m["epoch"] + 1} for m in metrics], checkpoint)


def run_trial(config: dict, *, prepared: Prepared, runs_uri: str, scaling: ScalingConfig, max_failures: int) -> None:
    """One trial: a Ray Train run of the prepared task with the sampled config, named by the trial
    id so that a restored search resumes the run from its newest checkpoint."""
    task = prepared.task.with_config(config["train"], config["model"])
    trial_id = ray.tune.get_context().get_trial_id()
    run_cfg = run_config(runs_uri, trial_id, max_failures, task.metric, task.mode, callbacks=[ReportEpochsToTune()])
    make_trainer(task, prepared.dataset, storage.join(runs_uri, trial_id), run_cfg, scaling).fit()


def trial_concurrency(workers: int, gpu: bool, gpu_share: float) -> int:
    """How many trials' Train runs the cluster holds at once: each takes ``workers`` CPUs (and
    ``workers * gpu_share`` GPUs); the trial functions themselves take no CPU."""
    cpus, gpus = cluster_resources()
    fits = cpus // workers
    if gpu:
        fits = min(fits, math.floor(gpus / (workers * gpu_share) + 1e-9))
    return max(1, fits)


def state_api_available() -> bool:
    from ray.util.state import list_actors
    from ray.util.state.exception import RayStateApiException

    try:
        list_actors(limit=1, timeout=10, raise_on_missing_output=False)
        return True
    except (RayStateApiException, ConnectionError):
        return False


# ---------------------------------------------------------------------------------------------
# The search


@dataclass
class SearchOutcome:
    name: str
    model: str
    metric: str
    mode: str
    trials: list[dict]  # one row per trial: id, status, epochs, best value and epoch, config
    curves: dict[str, list[tuple[int, float]]]  # trial id -> (epochs done, metric) of every epoch
    best: dict  # the best_config.json content
    resumed: bool
    complete: bool  # every trial finished (an interrupted search is not)
    report_dir: str
    epochs_spent: int = field(default=0)  # trial-epochs trained in all


def run_tune(model: str, root: str, sessions: str | None, *, samples: int, name: str | None = None,
             epochs: int = 6, workers: int = 1, gpu: bool = False, gpu_share: float = 1.0, seed: int = 0,
             fixed: dict | None = None, tags: list[str] | None = None, scheduler: str = "asha", grace_period: int = 1, reduction_factor: int = 2,
             configs: list[dict] | None = None, max_concurrent: int | None = None, publish: bool = True,
             callbacks: list | None = None, progress=print) -> SearchOutcome:
    """Run (or resume) a search; write its report and, with ``publish``, the model's best_config.json.

    ``tags`` are the tagger's tag columns (None: its default, ``label``).
    ``configs`` replaces the Optuna search with exactly these configs (the benchmark's fixed list);
    ``callbacks`` are Tune callbacks of a new search (the tests interrupt one with them); Tune keeps them
    with the search, so a restored search runs the ones it started with.
    """
    model_class(model)
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    if min(epochs, workers, grace_period) < 1 or reduction_factor < 2 or not 0 < gpu_share <= 1:
        raise ValueError("--epochs, --workers and --grace-period must be >= 1, --reduction-factor >= 2 "
                         "and --gpu-share in (0, 1]")
    if model in RECOMMENDERS and not sessions:
        raise ValueError(f"a listening log (--sessions) is required to tune {model!r}")
    if tags and model not in TAGGERS:
        raise ValueError(f"--tags names the tagger's tag columns; {model!r} has none")
    root = storage.normalize(root)
    name = name or f"{model}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
    fixed = dict(fixed or {})
    experiment_uri = workspace.tune_dir(root, name)
    fs, experiment_path = storage.resolve(experiment_uri)
    search_file = storage.join(experiment_uri, "search.json")
    arguments = {"model": model, "sessions": sessions, "samples": samples, "epochs": epochs, "seed": seed,
                 "fixed": fixed, "scheduler": scheduler, "grace_period": grace_period,
                 "reduction_factor": reduction_factor, "tags": list(tags) if tags else None,
                 "search": "optuna" if configs is None else f"{len(configs)} given configs"}
    resumed = ray.tune.Tuner.can_restore(experiment_path, storage_filesystem=fs)
    if resumed:  # the search's own arguments apply, so its trials stay comparable
        started = json.loads(storage.read_text(search_file))
        if started["model"] != model:
            raise ValueError(f"search {name!r} in {experiment_uri} tunes {started['model']!r}, not {model!r}; "
                             f"choose another --name")
        changed = [k for k in arguments if k in started and started[k] != arguments[k]]
        if changed:
            progress(f"resuming search {name!r} with the arguments it started with "
                     f"({', '.join(f'{k}={started[k]!r}' for k in changed)})")
        arguments.update(started)
        sessions, samples, epochs, seed, fixed = (arguments[k] for k in ("sessions", "samples", "epochs", "seed",
                                                                          "fixed"))
        tags = arguments.get("tags")
    metric, mode = tasks.metric(model)

    init_ray()
    settings = tasks.settings_class(model)(epochs=epochs, seed=seed, workers=workers, gpu=gpu, max_failures=1,
                                           **({"tags": tuple(tags)} if tags else {}))
    prepared = tasks.prepare(model, root, sessions=sessions, settings=settings, model_config=fixed)
    scaling = ScalingConfig(num_workers=workers, use_gpu=gpu,
                            resources_per_worker={"CPU": 1, "GPU": gpu_share} if gpu else None)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, prepared=prepared, runs_uri=storage.join(experiment_uri, "runs"),
                                 scaling=scaling, max_failures=1),
        TRIAL_DRIVER)
    concurrency = max_concurrent or trial_concurrency(workers, gpu, gpu_share)
    if not state_api_available():
        progress("warning: Ray's State API (the dashboard) is not running: Ray Train frees the workers of a "
                 "trial that ASHA stops through it, so each stopped trial would keep its workers' resources")

    if resumed:
        tuner = ray.tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=True,
                                       storage_filesystem=fs)
        progress(f"resuming search {name!r} from {experiment_uri}")
    else:
        if configs is not None:  # exactly these configs, in this order
            search_alg = BasicVariantGenerator(points_to_evaluate=configs, max_concurrent=concurrency)
            samples = len(configs)
        else:
            search_alg = OptunaSearch(seed=seed)  # TPE; its first draws are seeded random ones
        asha = ASHAScheduler(time_attr=EPOCHS, max_t=epochs, grace_period=grace_period,
                             reduction_factor=reduction_factor)
        tuner = ray.tune.Tuner(
            trainable, param_space=param_space(model, fixed),
            tune_config=ray.tune.TuneConfig(metric=metric, mode=mode, num_samples=samples, search_alg=search_alg,
                                            scheduler=asha if scheduler == "asha" else FIFOScheduler(),
                                            max_concurrent_trials=concurrency),
            run_config=ray.tune.RunConfig(name=name, storage_path=storage.resolve(workspace.tune_dir(root))[1],
                                          storage_filesystem=fs, callbacks=callbacks, verbose=1),
        )
        storage.write_text(search_file, json.dumps(arguments, indent=2))
        progress(f"search {name!r}: {samples} trials of {model}, up to {epochs} epochs each, "
                 f"{concurrency} at a time, {scheduler.upper()} on {metric} ({mode})")
    grid = tuner.fit()
    # Interrupted (Ctrl+C), Tune returns what it has: the search is complete once every sampled trial
    # ended. A trial's status is Tune's own (a pending trial's result reads as an error: no metrics yet).
    statuses = {t.trial_id: t.status for t in
                ray.tune.ExperimentAnalysis(experiment_path, storage_filesystem=fs).trials}
    complete = len(statuses) == arguments["samples"] and all(s in ("TERMINATED", "ERROR")
                                                             for s in statuses.values())
    outcome = summarize(grid, name, model, metric, mode, root, resumed, complete, fixed, statuses)
    write_report(outcome, arguments)
    if publish and complete:  # the report first, the file `musicray train` reads last
        storage.write_text(workspace.best_config_file(root, model), json.dumps(outcome.best, indent=2))
    return outcome


def summarize(grid, name: str, model: str, metric: str, mode: str, root: str, resumed: bool, complete: bool,
              fixed: dict, statuses: dict[str, str]) -> SearchOutcome:
    """The trials table, every trial's curve and the best config, from Tune's results."""
    better = max if mode == "max" else min
    rows, curves, best = [], {}, None
    for result in grid:
        frame = result.metrics_dataframe
        folder = result.path.rstrip("/").rsplit("/", 1)[-1]  # run_trial_<trial id>_<n>_<config>_<time>
        trial_id = (result.metrics or {}).get("trial_id") or next((t for t in statuses if f"_{t}_" in folder), folder)
        config = result.config or {}
        curve = []
        if frame is not None and metric in frame:
            done = frame[[EPOCHS, metric, "epoch"]].dropna().drop_duplicates(EPOCHS, keep="last")
            curve = [(int(e), float(v)) for e, v in zip(done[EPOCHS], done[metric])]
        curves[trial_id] = curve
        value = better(v for _, v in curve) if curve else None
        best_epochs = [e for e, v in curve if v == value]
        status = {"TERMINATED": "done", "ERROR": "error"}.get(statuses.get(trial_id), "unfinished")
        row = {"trial_id": trial_id, "status": status, "epochs": len(curve),
               metric: value, "best_epoch": best_epochs[0] if best_epochs else None,
               **{f"{group}.{k}": v for group in ("model", "train") for k, v in config.get(group, {}).items()}}
        rows.append(row)
        if value is not None and (best is None or (value > best[1] if mode == "max" else value < best[1])):
            best = (row, value, config)
    if best is None:
        errors = "; ".join(str(r.error).splitlines()[0] for r in grid if r.error)[:500]
        raise RuntimeError(f"search {name!r}: no trial reported {metric}" + (f" ({errors})" if errors else ""))
    row, value, config = best
    best_config = {"model": model, "search": name, "trial_id": row["trial_id"], "metric": metric, "mode": mode,
                   "value": value, "best_epoch": row["best_epoch"],
                   "train": {k: plain(v) for k, v in config["train"].items()},
                   "model_config": {**fixed, **{k: plain(v) for k, v in config["model"].items()}},
                   "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return SearchOutcome(name, model, metric, mode, rows, curves, best_config, resumed, complete,
                         workspace.reports_dir(root, "tune", name), sum(len(c) for c in curves.values()))


def write_report(outcome: SearchOutcome, arguments: dict) -> None:
    """trials.csv, best_config.json, curves.png and report.md in ``<root>/reports/tune/<name>/``."""
    out, metric = outcome.report_dir, outcome.metric
    columns = list(dict.fromkeys(k for row in outcome.trials for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(outcome.trials)
    storage.write_text(storage.join(out, "trials.csv"), buffer.getvalue())
    storage.write_text(storage.join(out, "best_config.json"), json.dumps(outcome.best, indent=2))
    plots.search_curves(outcome.curves, metric, outcome.best["trial_id"], storage.join(out, "curves.png"))

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))

    ordered = sorted(outcome.trials, key=lambda r: (r[metric] is None,
                                                    -(r[metric] or 0) if outcome.mode == "max" else (r[metric] or 0)))
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    table += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in ordered]
    best = outcome.best
    full = arguments["samples"] * arguments["epochs"]
    lines = [
        f"# Hyperparameter search {outcome.name}: {outcome.model}", "",
        f"{len(outcome.trials)} trials, up to {arguments['epochs']} epochs each; {arguments['scheduler'].upper()} "
        f"on {metric} ({outcome.mode}, grace period {arguments['grace_period']}, reduction factor "
        f"{arguments['reduction_factor']}); "
        + (f"Optuna TPE, seed {arguments['seed']}." if arguments.get("search", "optuna") == "optuna"
           else f"configs: {arguments['search']}.")
        + (" Resumed after an interruption." if outcome.resumed else "")
        + ("" if outcome.complete else f" **Interrupted: {len(outcome.trials)} of {arguments['samples']} trials "
                                       f"started; run it again with `--name {outcome.name}` to finish it.**"),
        f"Trial-epochs trained: {outcome.epochs_spent} of {full} for every trial run to the end.", "",
        f"## Best: trial {best['trial_id']}, {metric} {best['value']:.4f} at epoch {best['best_epoch']}", "",
        "```json", json.dumps({"train": best["train"], "model_config": best["model_config"]}, indent=2), "```", "",
        "`musicray train` uses it from `<root>/models/<model>/best_config.json` (flags override, "
        "`--no-best-config` ignores it).", "",
        "## Trials (best first)", "", *table, "",
        f"![{metric} of every trial over its epochs](curves.png)", "",
    ]
    storage.write_text(storage.join(out, "report.md"), "\n".join(lines))


# ---------------------------------------------------------------------------------------------
# The command


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="musicray tune", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, choices=list(MODELS))
    parser.add_argument("--root", required=True, help="workspace root with extracted features")
    parser.add_argument("--sessions", help="listening log (Parquet: user_id, track_id, ts); recommenders only")
    parser.add_argument("--samples", type=int, required=True, help="trials (configs) to try")
    parser.add_argument("--epochs", type=int, default=6, help="most epochs a trial trains (default 6)")
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped")
    parser.add_argument("--reduction-factor", type=int, default=2, help="ASHA: 1/this of trials pass each rung")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP) per trial")
    parser.add_argument("--gpu", action="store_true", help="Train workers on GPUs, --gpu-share of one each")
    parser.add_argument("--gpu-share", type=float, default=1.0,
                        help="fraction of a GPU per Train worker (0.25: four trials share a GPU)")
    parser.add_argument("--name", help="the search's name; re-use it to resume an interrupted search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="fix a model config field instead of searching it (repeatable)")
    parser.add_argument("--tags", help="tagger: the catalog's tag columns, comma-separated (default label)")
    args = parser.parse_args(argv)
    args.fixed = parse_model_config(parser, args.set)
    args.tags = [c.strip() for c in args.tags.split(",") if c.strip()] if args.tags else None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        outcome = run_tune(args.model, args.root, args.sessions, samples=args.samples, name=args.name,
                           epochs=args.epochs, workers=args.workers, gpu=args.gpu, gpu_share=args.gpu_share,
                           seed=args.seed, fixed=args.fixed, tags=args.tags, grace_period=args.grace_period,
                           reduction_factor=args.reduction_factor)
    except (ValueError, FileNotFoundError) as error:
        print(f"musicray tune: error: {error}", file=sys.stderr)
        return 2
    best = outcome.best
    print(f"{outcome.model} search {outcome.name}: best {outcome.metric} {best['value']:.4f} "
          f"(trial {best['trial_id']}, epoch {best['best_epoch']}); {len(outcome.trials)} trials, "
          f"{outcome.epochs_spent} trial-epochs")
    print(f"best config: {json.dumps({'train': best['train'], 'model_config': best['model_config']})}")
    print(f"report in {outcome.report_dir}/report.md")
    if not outcome.complete:
        print(f"search interrupted: run again with --name {outcome.name} to finish it (no best config written)")
        return 1
    print(f"best config written to {workspace.best_config_file(args.root, outcome.model)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
