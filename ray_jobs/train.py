"""Train a model with Ray Train: DDP workers fed by Ray Data, a checkpoint every epoch.

    python -m ray_jobs.train --model {lstm,rnn,dnn,autoencoder,generator,audio,tagger,all} --root ROOT [--sessions LOG]
                             [--workers N] [--gpu] [--epochs E] [--run-name NAME] [--set FIELD=VALUE]
                             [--lr LR] [--batch-size B] [--weight-decay WD] [--no-best-config] [--tags COLUMN,...]

Every model trains on the one engine (``ray_jobs/training.py``) through its task
(``ray_jobs/tasks/``): the recommenders on a listening log (``--sessions``; ``all`` = the four of
them, side by side), the generator on crops of the features' log-mels, the audio encoder on chunks
of them (with the catalog's labels and, given ``--sessions``, co-listening); once it is published
every track is embedded and the recommenders trained next take the embeddings as content. After every epoch rank 0
validates on a held-out split (MRR@20 of the newest sessions; the generator's loss on held-out
tracks), which picks the best checkpoint. Checkpoints live under ``<root>/models/<model>/<run>/``;
the best one is copied to ``<run>/model/`` and ``<root>/models/<model>/LATEST`` names the run
last. Re-running with the same ``--run-name`` resumes from the run's newest checkpoint.

The tagger (``--model tagger``) learns the catalog's tag columns (``--tags genre,mood``; ``label`` by
default) from each track's content vector, on the tracks' training split; it needs no listening log,
and a catalog with nothing to learn (no such column, or one value only) stops it with one line.

When ``musicray tune`` has written ``<root>/models/<model>/best_config.json``, its training
settings and model config are the defaults; explicit flags override them, ``--no-best-config``
ignores the file, and the job prints which config it used.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

import ray

from models import GENERATORS, MODELS, RECOMMENDERS, TAGGERS, model_class
from musicray import storage, workspace
from ray_jobs import tasks
from ray_jobs.common import init_ray, parse_model_config, read_best_config
from ray_jobs.tasks.generator import GeneratorSettings
from ray_jobs.tasks.recommender import RecommenderSettings
from ray_jobs.training import Settings, TrainResult, fit, new_run_id


def run_train(model: str, root: str, sessions: str | None = None, *, settings: Settings | None = None,
              run_id: str | None = None, model_config: dict | None = None, callbacks: list | None = None,
              hooks=(), progress=print) -> TrainResult:
    """Train one model on the workspace's features (and, for a recommender, a listening log);
    publish its best checkpoint and LATEST. ``callbacks`` are Ray Train callbacks (the
    quickstart's progress bar); ``hooks`` run on the workers after every epoch (tests' faults)."""
    model_class(model)  # an unknown name fails here, before any work
    root = storage.normalize(root)
    run_id = run_id or new_run_id(model)
    prepared = tasks.prepare(model, root, sessions=sessions, settings=settings, model_config=model_config,
                             run_uri=workspace.run_dir(root, model, run_id), progress=progress)
    return fit(prepared, root, run_id, callbacks=callbacks, hooks=hooks)


def run_trains(jobs: dict[str, tuple[Settings, dict]], root: str, sessions: str | None, *,
               run_id: str | None = None, callbacks: list | None = None) -> list[TrainResult]:
    """Train several models at once (``jobs``: model -> (settings, model config)).

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
    parser = argparse.ArgumentParser(prog="musicray train", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, choices=[*MODELS, "all"],
                        help="a model, or all = the four recommenders")
    parser.add_argument("--root", required=True, help="workspace root with extracted features")
    parser.add_argument("--sessions", help="listening log (Parquet: user_id, track_id, ts); required by the "
                                           "recommenders, optional for the audio encoder (co-listening)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--epochs", type=int, help=f"default {RecommenderSettings.epochs} ({GeneratorSettings.epochs} "
                                                   "for the generator)")
    parser.add_argument("--batch-size", type=int, help=f"default {RecommenderSettings.batch_size} "
                                                       f"({GeneratorSettings.batch_size} crops for the generator)")
    parser.add_argument("--lr", type=float, help=f"default {RecommenderSettings.lr} ({GeneratorSettings.lr} for the generator)")
    parser.add_argument("--weight-decay", type=float, help=f"default {RecommenderSettings.weight_decay}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-failures", type=int, default=RecommenderSettings.max_failures)
    parser.add_argument("--full-softmax-max-tracks", type=int, default=RecommenderSettings.full_softmax_max_tracks)
    parser.add_argument("--no-audio-embeddings", action="store_true",
                        help="recommenders: content from the summary statistics alone, even with a trained audio encoder")
    parser.add_argument("--crop-frames", type=int, default=GeneratorSettings.crop_frames,
                        help="generator: training window in log-mel frames (43 per second)")
    parser.add_argument("--tags", default="label", help="tagger: the catalog's tag columns, comma-separated "
                                                       "(default label; the first selects checkpoints)")
    parser.add_argument("--run-name", help="re-use a name to resume that run")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a model config field, e.g. --set dim=128 (repeatable)")
    parser.add_argument("--no-best-config", action="store_true",
                        help="ignore <root>/models/<model>/best_config.json (written by musicray tune)")
    args = parser.parse_args(argv)
    if (args.model in RECOMMENDERS or args.model == "all") and not args.sessions:
        parser.error(f"--sessions is required to train {args.model!r}")
    given = [v for v in (args.epochs, args.batch_size) if v is not None]
    if min([args.workers, args.crop_frames, *given]) < 1:
        parser.error("--workers, --epochs, --batch-size and --crop-frames must be >= 1")
    args.tags = tuple(dict.fromkeys(c.strip() for c in args.tags.split(",") if c.strip()))
    if not args.tags:
        parser.error("--tags names no column")
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
    best = None if args.no_best_config else read_best_config(args.root, model)
    explicit = {name: getattr(args, name) for name in SEARCHABLE_FLAGS if getattr(args, name) is not None}
    common = {"workers": args.workers, "gpu": args.gpu, "max_failures": args.max_failures, "seed": args.seed}
    settings_class = tasks.settings_class(model)
    if model in GENERATORS:
        common["crop_frames"] = args.crop_frames
    elif model in TAGGERS:
        common["tags"] = args.tags
    elif model in RECOMMENDERS:
        common["full_softmax_max_tracks"] = args.full_softmax_max_tracks
        common["audio_embeddings"] = not args.no_audio_embeddings
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
        results = run_trains(jobs, args.root, args.sessions, run_id=args.run_name)
    except (ValueError, FileNotFoundError) as error:
        print(f"musicray train: error: {error}", file=sys.stderr)
        return 2
    for result in results:
        print("\n".join(tasks.summary(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
