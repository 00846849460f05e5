"""The local quickstart: the demo catalog, then every stage of musicray, on an embedded Ray.

    python -m ray_jobs.quickstart [--demo ./demo] [--root ./workspace] [--tracks 300 --users 500 --seed 0]

A small hyperparameter search (4 LSTM configs, 2 epochs, ASHA) follows the training. The refresh
stage publishes the first embedding snapshot (vectors + indexes) of the demo catalog; the last
stage serves it with Ray Serve, sends one recommendation and one generation request, prints both
answers and shuts the endpoints down.
Each stage prints one line when it starts and its duration when it ends; a summary closes
the run. Re-running reuses the demo catalog (same arguments) and the extracted features.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from musicray import storage
from musicray.schemas import features_dir


def stage_demo_data(args) -> str:
    from musicray.demo import generate

    marker = Path(args.demo) / "quickstart.json"
    wanted = {"tracks": args.tracks, "users": args.users, "seed": args.seed}
    if marker.exists() and json.loads(marker.read_text()) == wanted and (Path(args.demo) / "catalog.parquet").exists():
        return f"reused {args.demo} ({args.tracks} tracks, {args.users} users)"
    demo = generate(args.demo, tracks=args.tracks, users=args.users, seed=args.seed)
    marker.write_text(json.dumps(wanted))
    return f"{args.tracks} tracks, {args.users} users, {len(demo.cold_tracks)} cold tracks in {demo.root}"


def stage_extract(args) -> str:
    from ray_jobs.common import init_ray
    from ray_jobs.extract import run_extract

    init_ray()
    report = run_extract(_demo_file(args, "catalog.parquet"), args.root)
    return f"{report.summary()}; features in {features_dir(args.root)}"


def stage_train(args) -> str:
    from models import RECOMMENDERS
    from ray_jobs.train import TrainSettings, run_train

    settings = TrainSettings(epochs=args.epochs)
    results = [run_train(name, args.root, _demo_file(args, "sessions_train.parquet"), settings=settings)
               for name in RECOMMENDERS]
    return "; ".join(f"{r.model} val MRR@20 {r.best['val_MRR@20']:.3f}" for r in results)


def stage_tune(args) -> str:
    from ray_jobs.tune import run_tune

    # A small search: a few LSTM configs, two epochs each, ASHA stopping the weaker after one.
    # Named, so that a re-run resumes it (nothing left to run) instead of searching again.
    outcome = run_tune("lstm", args.root, _demo_file(args, "sessions_train.parquet"), samples=args.tune_samples,
                       name="quickstart", epochs=args.tune_epochs, seed=args.seed)
    best = outcome.best
    print(f"  best config: {json.dumps({'train': best['train'], 'model_config': best['model_config']})}")
    return (f"{len(outcome.trials)} LSTM trials, {outcome.epochs_spent} trial-epochs; best val MRR@20 "
            f"{best['value']:.3f} (trial {best['trial_id']}); report in {outcome.report_dir}/report.md")


def stage_generate(args) -> str:
    from musicray.generation import held_out_tracks, plot_continuations, write_audio
    from musicray.schemas import read_features
    from ray_jobs.generate import generate_clip
    from ray_jobs.train_generator import GeneratorSettings, run_train_generator, summary

    result = run_train_generator(args.root, settings=GeneratorSettings(epochs=args.generator_epochs))
    print(summary(result))
    # Continue a track the generator never trained on, seed included so the join can be heard.
    track_ids = read_features(args.root, columns=["track_id"]).column("track_id").to_pylist()
    seed_track = held_out_tracks(track_ids)[0]
    waveform, sample_rate, meta = generate_clip(args.root, seconds=10.0, seed_track=seed_track, include_seed=True)
    clip, picture = (storage.join(_report_dir(args), name) for name in ("generated.wav", "generated.png"))
    write_audio(clip, waveform, sample_rate)
    plot_continuations(picture, meta["seed_logmel"], {"generated": meta["logmel"]}, meta["feature_config"],
                       title=f"{meta['seed_source']}: 5 s seed, 10 s generated")
    return f"{meta['seconds']:.0f} s clip (5 s seed of {seed_track} + 10 s generated) in {clip}, spectrogram {picture}"


def stage_evaluate(args) -> str:
    import pandas as pd

    from ray_jobs.evaluate import HEADLINE, run_evaluate

    out = _report_dir(args)
    metrics = run_evaluate(args.root, _demo_file(args, "sessions_test.parquet"), out,
                           generation_tracks=args.generation_tracks)
    table = pd.DataFrame({name: {**{m: r["all"][m] for m in HEADLINE}, "cold HR@20": r["cold"].get("HR@20", 0.0)}
                          for name, r in metrics["ranking"].items()}).T
    print(table.sort_values("MRR@20", ascending=False).round(4).to_string())
    return f"report in {storage.join(out, 'report.md')}"


def stage_refresh(args) -> str:
    from ray_jobs.refresh import run_refresh

    report = run_refresh(_demo_file(args, "catalog.parquet"), args.root)
    for name, index in report.models.items():
        print(f"  index {name:<12} {index['tracks']} tracks x {index['dim']} dims, {index['metric']}, "
              f"M={index['M']} ef={index['ef']}, recall@10 {index['recall_at_10']:.3f}, built in {index['build_seconds']:.2f} s")
    return f"snapshot {report.snapshot_id} ({'published' if report.published else 'not published'}): {report.summary()}"


def stage_serve(args) -> str:
    import pandas as pd
    import requests
    from ray import serve

    from musicray.serving import free_port
    from ray_jobs.common import init_ray
    from ray_jobs.serve import run_local

    init_ray()
    port = free_port()
    run_local(args.root, port=port)
    base = f"http://127.0.0.1:{port}"
    try:
        # The opening of a held-out session: what a listener has just played.
        sessions = pd.read_parquet(_demo_file(args, "sessions_test.parquet")).sort_values(["session_id", "ts"])
        history = sessions[sessions["session_id"] == sessions["session_id"].iloc[0]]["track_id"].head(5).tolist()
        body = {"user_id": "quickstart", "history": history, "k": 5, "context": {"hour": 21, "weekday": 4}}
        print(f"  POST {base}/recommend {body}")
        answer = requests.post(f"{base}/recommend", json=body, timeout=120)
        answer.raise_for_status()
        result = answer.json()
        for rank, track in enumerate(result["tracks"], 1):
            print(f"    {rank}. {track['track_id']}  score {track['score']:.3f}  label {track['label']}"
                  f"{'  (cold: never played)' if track['cold'] else ''}  like {track['closest_in_history']}")
        body = {"seed_track_id": history[-1], "seconds": 5, "seed": 0, "format": "wav"}
        print(f"  POST {base}/generate {body}")
        clip = requests.post(f"{base}/generate", json=body, timeout=300)
        clip.raise_for_status()
        out = storage.join(_report_dir(args), "served.wav")
        storage.write_bytes(out, clip.content)
        print(f"    {clip.headers['content-type']}, {len(clip.content)} bytes, seed {clip.headers['x-seed']}, "
              f"{clip.headers['x-sample-rate']} Hz, generator run {clip.headers['x-generator-run']} -> {out}")
    finally:
        serve.shutdown()
    return (f"served snapshot {result['snapshot']} ({result['model']} run {result['run']}): 5 tracks recommended, "
            f"a 5 s clip generated; endpoints shut down")


def _report_dir(args) -> str:
    return storage.join(args.root, "reports", "quickstart")


def _demo_file(args, name: str) -> str:
    return str(Path(args.demo) / name)


STAGES = [
    ("demo-data", stage_demo_data),
    ("extract", stage_extract),
    ("train", stage_train),
    ("tune", stage_tune),
    ("generate", stage_generate),
    ("evaluate", stage_evaluate),
    ("refresh", stage_refresh),
    ("serve", stage_serve),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="musicray quickstart", description=__doc__.split("\n")[0])
    parser.add_argument("--demo", default="demo", help="folder for the demo catalog (default ./demo)")
    parser.add_argument("--root", default="workspace", help="workspace root (default ./workspace)")
    parser.add_argument("--tracks", type=int, default=300)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12, help="training epochs per recommender (default 12)")
    parser.add_argument("--tune-samples", type=int, default=4, help="trials of the LSTM search (default 4)")
    parser.add_argument("--tune-epochs", type=int, default=2, help="most epochs per search trial (default 2)")
    parser.add_argument("--generator-epochs", type=int, default=3,
                        help="training epochs of the music generator (default 3: a brief run)")
    parser.add_argument("--generation-tracks", type=int, default=16,
                        help="held-out tracks the evaluation continues with the generator (default 16)")
    args = parser.parse_args(argv)
    args.root = storage.normalize(args.root)

    started, timings = time.perf_counter(), []
    for number, (name, stage) in enumerate(STAGES, 1):
        print(f"[{number}/{len(STAGES)}] {name} ...", flush=True)
        began = time.perf_counter()
        result = stage(args)
        timings.append((name, time.perf_counter() - began, result))
        print(f"[{number}/{len(STAGES)}] {name} done in {timings[-1][1]:.1f} s: {result}", flush=True)

    print("\nquickstart summary")
    for name, seconds, result in timings:
        print(f"  {name:<10} {seconds:7.1f} s  {result}")
    print(f"  {'total':<10} {time.perf_counter() - started:7.1f} s   workspace: {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
