"""The local quickstart: the demo catalog, then every stage of musicray, on an embedded Ray.

    musicray quickstart [--full] [--demo ./demo] [--root ./workspace] [--verbose] [--tracks N ...]

The demo catalog is written, its features extracted, the audio encoder trained (every track
embedded), the four recommenders trained on those embeddings and the summary statistics (the
tagger beside them, on the demo's labels), a small
LSTM search run (ASHA), the music generator trained and a clip generated, everything
evaluated against the baselines, the first embedding snapshot published, and the snapshot
served with Ray Serve: one recommendation and one generation request, answers printed.
By default a brief version (about five minutes on two cores); ``--full`` runs the longer one
(more tracks, listeners and epochs: closer figures, about a quarter of an hour).

The console shows one progress bar per stage and the figures that matter; Ray's own output
(the driver's, and the workers' it forwards) goes to a log file named at the end, ``--verbose``
keeps it on the console instead. Re-running reuses the demo catalog and the workspace made with
the same arguments (extracted features are kept; a search picks up where it stopped); a
workspace made from another catalog is refused, with what to do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from musicray import storage, workspace

# The brief run and --full; explicit flags override either.
PROFILES = {
    "quick": dict(tracks=128, users=200, seconds=20.0, audio_epochs=4, epochs=5, tagger_epochs=10, tune_samples=2, tune_epochs=2,
                  generator_epochs=2, generator_crops=1, generation_tracks=4),
    "full": dict(tracks=300, users=500, seconds=30.0, audio_epochs=8, epochs=12, tagger_epochs=30, tune_samples=4, tune_epochs=2,
                 generator_epochs=3, generator_crops=2, generation_tracks=16),
}
MARKER = "quickstart.json"  # in the demo folder and in the workspace: the arguments they were made with


class WorkspaceInUse(Exception):
    """The workspace holds data the quickstart did not make with these arguments."""


# ---------------------------------------------------------------------------------------------
# The console: one bar per stage and a few lines; the rest goes to the log


class Console:
    def __init__(self, terminal, log_path: Path | None):
        self.terminal, self.log_path = terminal, log_path
        self.bar = None

    def say(self, line: str = "") -> None:
        """A line for the user (above the bar, if one is drawn), and in the log."""
        from tqdm import tqdm

        tqdm.write(line, file=self.terminal)
        if self.log_path:
            print(line, flush=True)

    @contextmanager
    def stage(self, title: str, total: int, unit: str, progress):
        """A bar that follows ``progress`` (a ``ray_jobs.common.Progress``) until the stage returns.
        None with ``--verbose``, where it would be lost among Ray's lines; where the console is not
        a terminal (CI, a pipe) the stage's title stands in for it, as redrawing is not possible there."""
        from tqdm import tqdm

        progress.reset()
        if self.log_path is None or not self.terminal.isatty():
            self.say(f"{title} ...")
            yield
            return
        bar = tqdm(total=total, unit=f" {unit}", desc=title, file=self.terminal, dynamic_ncols=True,
                   bar_format="{desc:<16} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{unit} [{elapsed}<{remaining}]",
                   mininterval=0.5)
        finished = threading.Event()

        def follow():
            while not finished.wait(0.5):
                bar.n = min(progress.value(), total)
                bar.refresh()

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        try:
            yield
            finished.set()
            follower.join()
            bar.n = total  # a stage that returned is complete (an ASHA-stopped trial leaves epochs undone)
        finally:
            finished.set()
            bar.close()


@contextmanager
def console_and_log(log_path: Path | None):
    """Everything written to file descriptors 1 and 2 (Ray's driver, the workers' lines it forwards,
    C++ and child processes' output) goes to ``log_path``; the console keeps a handle of its own."""
    if log_path is None:
        yield Console(sys.stdout, None)
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    with open(log_path, "w", buffering=1) as log:  # this run's output only
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
        try:
            yield Console(terminal, log_path)
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


# ---------------------------------------------------------------------------------------------
# Reuse, or refuse: the demo folder and the workspace remember the arguments they were made with


def made_with(args) -> dict:
    return {"tracks": args.tracks, "users": args.users, "seed": args.seed, "seconds": args.seconds}


def check_workspace(args) -> None:
    """Raise ``WorkspaceInUse`` unless ``args.root`` is new, or the quickstart's with these arguments."""
    marker = storage.join(args.root, MARKER)
    if storage.exists(marker):
        found = json.loads(storage.read_text(marker))
        if found != made_with(args):
            differ = ", ".join(f"{k} {found.get(k)} (now {v})" for k, v in made_with(args).items() if found.get(k) != v)
            raise WorkspaceInUse(f"{args.root} holds a quickstart made with other arguments ({differ}); "
                                 f"remove it (rm -rf {args.root} {args.demo}) or pass --root and --demo to new folders")
        return
    held = sorted({"features", "models", "embeddings", "tune"} & set(storage.list_dirs(args.root)))
    if held:
        raise WorkspaceInUse(f"{args.root} already holds a workspace the quickstart did not make ({', '.join(held)}); "
                             f"pass --root to a new folder, or remove it (rm -rf {args.root}) if it is expendable")


# ---------------------------------------------------------------------------------------------
# The stages: each returns its line for the summary


def stage_demo_data(args, console, progress) -> str:
    from musicray.demo import generate

    marker = Path(args.demo) / MARKER
    if marker.exists() and json.loads(marker.read_text()) == made_with(args) and (Path(args.demo) / "catalog.parquet").exists():
        progress.add(args.tracks)
        return f"reused {args.demo}/ ({args.tracks} tracks, {args.users} listeners)"
    marker.unlink(missing_ok=True)  # until the new catalog is whole
    demo = generate(args.demo, tracks=args.tracks, users=args.users, seed=args.seed, seconds=args.seconds,
                    progress=print, on_track=lambda done: progress.add(1))
    marker.write_text(json.dumps(made_with(args)))
    return f"{args.tracks} tracks of {args.seconds:g} s, {args.users} listeners, {len(demo.cold_tracks)} never played"


def stage_extract(args, console, progress) -> str:
    from ray_jobs.extract import run_extract

    storage.write_text(storage.join(args.root, MARKER), json.dumps(made_with(args)))
    report = run_extract(_demo_file(args, "catalog.parquet"), args.root, progress=progress)
    return f"{report.summary()}; features in {workspace.features_dir(args.root)}"


def stage_audio(args, console, progress) -> str:
    from ray_jobs.common import EpochProgress
    from ray_jobs.tasks.audio import AudioSettings
    from ray_jobs.train import run_train

    result = run_train("audio", args.root, _demo_file(args, "sessions_train.parquet"),
                       settings=AudioSettings(epochs=args.audio_epochs), callbacks=[EpochProgress(progress)])
    return (f"audio encoder val loss {result.best['val_loss']:.2f}; every track embedded, the recommenders' "
            f"content from here on")


def stage_train(args, console, progress) -> str:
    from models import RECOMMENDERS
    from ray_jobs.common import EpochProgress
    from ray_jobs.tasks.recommender import RecommenderSettings
    from ray_jobs.tasks.tagger import TaggerSettings
    from ray_jobs.train import run_trains

    # The tagger trains beside them on the demo's labels, so the snapshot holds predicted tags.
    jobs = {**{name: (RecommenderSettings(epochs=args.epochs), {}) for name in RECOMMENDERS},
            "tagger": (TaggerSettings(epochs=args.tagger_epochs), {})}
    results = run_trains(jobs, args.root, _demo_file(args, "sessions_train.parquet"),
                         callbacks=[EpochProgress(progress)])
    *recommenders, tagger = results
    return (", ".join(f"{r.model} {r.best['val_MRR@20']:.3f}" for r in recommenders) + " val MRR@20; "
            f"tagger label val macro-F1 {tagger.best['val_macro_F1']:.3f}")


def stage_tune(args, console, progress) -> str:
    import ray.tune

    from ray_jobs.tune import run_tune

    class TrialEpochs(ray.tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            progress.add(1)

    # A small search: a few LSTM configs, ASHA stopping the weaker after one epoch. Named, so
    # that a re-run resumes it (nothing left to run) instead of searching again.
    outcome = run_tune("lstm", args.root, _demo_file(args, "sessions_train.parquet"), samples=args.tune_samples,
                       name="quickstart", epochs=args.tune_epochs, seed=args.seed, callbacks=[TrialEpochs()])
    best = outcome.best
    print(f"  best config: {json.dumps({'train': best['train'], 'model_config': best['model_config']})}")
    return (f"{len(outcome.trials)} LSTM trials, {outcome.epochs_spent} trial-epochs; best val MRR@20 "
            f"{best['value']:.3f}")


def stage_generate(args, console, progress) -> str:
    from musicray import plots
    from musicray.audio import write_audio
    from musicray.generation import generate_clip, held_out_tracks
    from musicray.schemas import read_features
    from ray_jobs.common import EpochProgress
    from ray_jobs.tasks import summary
    from ray_jobs.tasks.generator import GeneratorSettings
    from ray_jobs.train import run_train

    settings = GeneratorSettings(epochs=args.generator_epochs, crops_per_track=args.generator_crops)
    result = run_train("generator", args.root, settings=settings, callbacks=[EpochProgress(progress)])
    print("\n".join(summary(result)))
    # Continue a track the generator never trained on, seed included so the join can be heard.
    track_ids = read_features(args.root, columns=["track_id"]).column("track_id").to_pylist()
    seed_track = held_out_tracks(track_ids)[0]
    waveform, sample_rate, meta = generate_clip(args.root, seconds=10.0, seed_track=seed_track, include_seed=True)
    clip, picture = _report_file(args, "generated.wav"), _report_file(args, "generated.png")
    write_audio(clip, waveform, sample_rate)
    plots.continuations(picture, meta["seed_logmel"], {"generated": meta["logmel"]}, meta["feature_config"],
                        title=f"{meta['seed_source']}: 5 s seed, 10 s generated")
    progress.add(1)
    return (f"val loss {result.best['val_loss']:.2f} nats/frame; 5 s of {seed_track} continued for 10 s")


def stage_evaluate(args, console, progress) -> str:
    import pandas as pd

    from ray_jobs.evaluate import HEADLINE, run_evaluate

    metrics = run_evaluate(args.root, _demo_file(args, "sessions_test.parquet"), _report_file(args),
                           generation_tracks=args.generation_tracks)
    table = pd.DataFrame({name: {**{m: r["all"][m] for m in HEADLINE}, "cold HR@20": r["cold"].get("HR@20", 0.0)}
                          for name, r in metrics["ranking"].items()}).T
    console.say("  " + table.sort_values("MRR@20", ascending=False).round(3).to_string().replace("\n", "\n  "))
    popularity = metrics["ranking"]["popularity"]["all"]["MRR@20"]
    beaten = [name for name in metrics["models"] if metrics["ranking"][name]["all"]["MRR@20"] > popularity]
    return f"{len(beaten)} of {len(metrics['models'])} recommenders beat popularity on MRR@20"


def stage_refresh(args, console, progress) -> str:
    from ray_jobs.refresh import run_refresh

    report = run_refresh(_demo_file(args, "catalog.parquet"), args.root, on_stage=lambda name, seconds: progress.add(1))
    for name, index in report.models.items():
        print(f"  index {name:<12} {index['tracks']} tracks x {index['dim']} dims, {index['metric']}, "
              f"M={index['M']} ef={index['ef']}, recall@10 {index['recall_at_10']:.3f}, built in {index['build_seconds']:.2f} s")
    return f"snapshot {report.snapshot_id} {'published' if report.published else 'NOT published'}, {report.tracks} tracks"


def stage_serve(args, console, progress) -> str:
    import pandas as pd
    import requests
    from ray import serve

    from musicray.serving import free_port
    from ray_jobs.serve import run_local

    port = free_port()
    run_local(args.root, port=port)
    progress.add(1)
    base = f"http://127.0.0.1:{port}"
    try:
        # The opening of a held-out session: what a listener has just played.
        sessions = pd.read_parquet(_demo_file(args, "sessions_test.parquet")).sort_values(["session_id", "ts"])
        history = sessions[sessions["session_id"] == sessions["session_id"].iloc[0]]["track_id"].head(5).tolist()
        body = {"user_id": "quickstart", "history": history, "k": 5, "context": {"hour": 21, "weekday": 4}}
        answer = requests.post(f"{base}/recommend", json=body, timeout=120)
        answer.raise_for_status()
        result = answer.json()
        progress.add(1)
        console.say(f"  POST /recommend {json.dumps(body)}")
        for rank, track in enumerate(result["tracks"], 1):
            console.say(f"    {rank}. {track['track_id']}  {track['label']:<10} score {track['score']:.3f}"
                        f"{'  (never played)' if track['cold'] else ''}  like {track['closest_in_history']}")
        body = {"seed_track_id": history[-1], "seconds": 5, "seed": 0, "format": "wav"}
        clip = requests.post(f"{base}/generate", json=body, timeout=300)
        clip.raise_for_status()
        progress.add(1)
        storage.write_bytes(_report_file(args, "served.wav"), clip.content)
        console.say(f"  POST /generate {json.dumps(body)}")
        console.say(f"    {clip.headers['content-type']}, {len(clip.content):,} bytes at "
                    f"{clip.headers['x-sample-rate']} Hz, generator run {clip.headers['x-generator-run']}")
    finally:
        serve.shutdown()
    return f"snapshot {result['snapshot']} served ({result['model']}); endpoints shut down"


def _report_file(args, *name: str) -> str:
    """``<root>/reports/quickstart[/name]``."""
    return workspace.reports_dir(args.root, "quickstart", *name)


def _demo_file(args, name: str) -> str:
    return str(Path(args.demo) / name)


def stages(args) -> list[tuple[str, object, int, str]]:
    """(name, function, units of its bar, unit) in order."""
    from models import RECOMMENDERS

    return [
        ("demo-data", stage_demo_data, args.tracks, "tracks"),
        ("extract", stage_extract, args.tracks, "tracks"),
        ("audio", stage_audio, args.audio_epochs, "epochs"),
        ("train", stage_train, len(RECOMMENDERS) * args.epochs + args.tagger_epochs, "epochs"),
        ("tune", stage_tune, args.tune_samples * args.tune_epochs, "trial-epochs"),
        ("generate", stage_generate, args.generator_epochs + 1, "steps"),  # the epochs, then the clip
        ("evaluate", stage_evaluate, 1, "report"),
        ("refresh", stage_refresh, 6, "steps"),  # extract, embed, index, verify, publish, prune
        ("serve", stage_serve, 3, "steps"),  # deploy, recommend, generate
    ]


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="musicray quickstart", description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="the longer run: 300 tracks, 500 listeners, 12 epochs per recommender (~15 min)")
    parser.add_argument("--demo", default="demo", help="folder for the demo catalog (default ./demo)")
    parser.add_argument("--root", default="workspace", help="workspace root (default ./workspace)")
    parser.add_argument("--log", help="file for Ray's output (default <root>/reports/quickstart/quickstart.log)")
    parser.add_argument("--verbose", action="store_true", help="Ray's output on the console, no progress bars")
    parser.add_argument("--seed", type=int, default=0)
    quick = PROFILES["quick"]
    parser.add_argument("--tracks", type=int, help=f"demo catalog size (default {quick['tracks']})")
    parser.add_argument("--users", type=int, help=f"listeners in the demo log (default {quick['users']})")
    parser.add_argument("--seconds", type=float, help=f"length of each demo track (default {quick['seconds']:g})")
    parser.add_argument("--audio-epochs", type=int, help=f"training epochs of the audio encoder (default {quick['audio_epochs']})")
    parser.add_argument("--epochs", type=int, help=f"training epochs per recommender (default {quick['epochs']})")
    parser.add_argument("--tagger-epochs", type=int, help=f"training epochs of the tagger (default {quick['tagger_epochs']})")
    parser.add_argument("--tune-samples", type=int, help=f"trials of the LSTM search (default {quick['tune_samples']})")
    parser.add_argument("--tune-epochs", type=int, help=f"most epochs per search trial (default {quick['tune_epochs']})")
    parser.add_argument("--generator-epochs", type=int,
                        help=f"training epochs of the music generator (default {quick['generator_epochs']})")
    parser.add_argument("--generator-crops", type=int,
                        help=f"training windows per track and generator epoch (default {quick['generator_crops']})")
    parser.add_argument("--generation-tracks", type=int,
                        help=f"held-out tracks the evaluation continues (default {quick['generation_tracks']})")
    args = parser.parse_args(argv)
    for key, value in PROFILES["full" if args.full else "quick"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    too_small = [f"--{key.replace('_', '-')} {getattr(args, key)}" for key in PROFILES["quick"]
                 if getattr(args, key) < (0 if key == "generation_tracks" else 1)]
    if too_small:
        parser.error(f"{', '.join(too_small)}: every size and count must be at least 1 (--generation-tracks 0 "
                     f"skips the generation evaluation)")
    args.root = storage.normalize(args.root)
    if args.log is None and not args.verbose:  # a local file: beside the report, unless the workspace is on S3
        args.log = "quickstart.log" if storage.is_s3(args.root) else workspace.reports_dir(args.root, "quickstart", "quickstart.log")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_workspace(args)
    except WorkspaceInUse as error:
        print(f"musicray quickstart: {error}", file=sys.stderr)
        return 2
    log_path = None if args.verbose else Path(args.log).resolve()
    import ray

    starts_ray = not ray.is_initialized()  # a notebook's or a test session's Ray is left running
    with console_and_log(log_path) as console:
        try:
            return run_stages(args, console)
        finally:
            if starts_ray:  # inside the redirect, so the worker lines Ray still forwards go to the log
                ray.shutdown()


def run_stages(args, console: Console) -> int:
    import ray.data

    from ray_jobs.common import Progress, init_ray

    profile = "full" if args.full else "brief"
    console.say(f"musicray quickstart ({profile}): {args.tracks} demo tracks, {args.users} listeners, "
                f"workspace {args.root}" + (f"\nRay's output: {console.log_path}" if console.log_path else ""))
    started, timings = time.perf_counter(), []
    if console.log_path:  # Ray Data's bars would be redrawn into the log; the processes Ray starts inherit this
        os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
        ray.data.DataContext.get_current().enable_progress_bars = False
    init_ray()
    progress = Progress("quickstart")
    plan = stages(args)
    for number, (name, stage, total, unit) in enumerate(plan, 1):
        began = time.perf_counter()
        print(f"\n===== [{number}/{len(plan)}] {name} =====", flush=True)
        try:
            with console.stage(f"[{number}/{len(plan)}] {name}", total, unit, progress):
                result = stage(args, console, progress)
        except KeyboardInterrupt:
            console.say(f"\ninterrupted in {name}: run the same command again to carry on (the demo catalog, "
                        f"features and an unfinished search are kept)")
            return 130
        except Exception as error:  # noqa: BLE001 - one line here, the traceback in the log
            traceback.print_exc()
            console.say(f"\n{name} failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                        + (f"\n  traceback and Ray's output: {console.log_path}" if console.log_path else ""))
            return 1
        timings.append((name, time.perf_counter() - began, result))
        console.say(f"  {name} ({timings[-1][1]:.0f} s): {result}")

    total = time.perf_counter() - started
    console.say(f"\ndone in {total / 60:.1f} min. Open:")
    for label, path in (("report", _report_file(args, "report.md")),
                        ("generated clip", _report_file(args, "generated.wav")),
                        ("its spectrogram", _report_file(args, "generated.png")),
                        ("Ray's output", console.log_path)):
        if path:
            console.say(f"  {label:<16} {path}")
    print("\nquickstart summary")
    for name, seconds, result in timings:
        print(f"  {name:<10} {seconds:7.1f} s  {result}")
    print(f"  {'total':<10} {total:7.1f} s   workspace: {args.root}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
