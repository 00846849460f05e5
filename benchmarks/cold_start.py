"""Cold start and all-target ranking on a catalog, with and without the audio encoder, in one run.

    python -m benchmarks.cold_start --catalog DIR [--root ROOT] [--epochs 10] [--audio-epochs 8]

``DIR`` holds catalog.parquet, sessions_train.parquet and sessions_test.parquet, as the demo and
``python -m benchmarks.catalogs.real_music`` write them. On the workspace ``ROOT`` (default
``DIR/workspace``; its features are reused when present), in order:

  1. the four recommenders on the summary statistics alone (``audio_embeddings=False``);
  2. the audio encoder on the catalog's training tracks (contrastive + co-listening + labels);
  3. the four recommenders again, their content ending with the encoder's embeddings;
  4. every model of 1 and 3 and the baselines ranked over the whole catalog at every position of
     the test sessions: HR@20 and MRR@20 on all targets and on cold targets (never played in
     training), and cold HR@20 / all HR@20, the issue's target being >= 0.5 for the best model.

Nothing here looks at the test sessions before step 4: each run picks its checkpoint on its own
validation split, with the default settings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from models import RECOMMENDERS
from musicray import storage
from musicray.baselines import baselines
from musicray.checkpoints import load_trained
from musicray.content import TrackCatalog
from musicray.metrics import evaluate
from musicray.scoring import ModelScorer
from musicray.sessions import cold_tracks, load_log, make_examples
from ray_jobs.common import init_ray
from ray_jobs.extract import run_extract
from ray_jobs.tasks.audio import AudioSettings
from ray_jobs.tasks.recommender import RecommenderSettings
from ray_jobs.train import run_train, run_trains


def train_recommenders(root: str, sessions: str, epochs: int, audio: bool, tag: str) -> dict[str, str]:
    jobs = {name: (RecommenderSettings(epochs=epochs, audio_embeddings=audio), {}) for name in RECOMMENDERS}
    results = run_trains(jobs, root, sessions, run_id=f"bench-{tag}")
    return {r.model: r.run_id for r in results}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", required=True, help="folder with catalog.parquet and the two session logs")
    parser.add_argument("--root", help="workspace (default CATALOG/workspace)")
    parser.add_argument("--epochs", type=int, default=RecommenderSettings.epochs, help="epochs per recommender")
    parser.add_argument("--audio-epochs", type=int, default=AudioSettings.epochs, help="audio encoder epochs")
    args = parser.parse_args(argv)
    folder = Path(args.catalog)
    missing = [n for n in ("catalog.parquet", "sessions_train.parquet", "sessions_test.parquet") if not (folder / n).is_file()]
    if missing:
        parser.error(f"--catalog {folder} lacks {', '.join(missing)}")
    root = storage.normalize(args.root or str(folder / "workspace"))
    train_log, test_log = str(folder / "sessions_train.parquet"), str(folder / "sessions_test.parquet")
    init_ray()
    timings = {}

    started = time.perf_counter()
    report = run_extract(str(folder / "catalog.parquet"), root)
    timings["extract"] = time.perf_counter() - started
    print(f"extract: {report.summary()} ({timings['extract']:.0f} s)")

    started = time.perf_counter()
    statistics_runs = train_recommenders(root, train_log, args.epochs, audio=False, tag="statistics")
    timings["recommenders on statistics"] = time.perf_counter() - started
    started = time.perf_counter()
    audio = run_train("audio", root, train_log, settings=AudioSettings(epochs=args.audio_epochs), run_id="bench-audio")
    timings["audio encoder + embedding"] = time.perf_counter() - started
    print(f"audio encoder: best epoch {audio.best['epoch']}, val loss {audio.best['val_loss']:.3f}")
    started = time.perf_counter()
    audio_runs = train_recommenders(root, train_log, args.epochs, audio=True, tag="audio")
    timings["recommenders on statistics + audio"] = time.perf_counter() - started

    catalog = TrackCatalog.from_workspace(root, audio_run=None)
    train, test = load_log(train_log), load_log(test_log)
    cold = cold_tracks(train, catalog.track_ids)
    examples = make_examples(test, catalog.track_ids, cold)
    print(f"\n{len(catalog)} tracks ({len(cold)} cold), {len(examples)} test positions "
          f"({int(examples.cold.sum())} with a cold target)")
    scorers = [(s.name, "", s) for s in baselines(train, catalog.track_ids)]
    for variant, runs in (("statistics", statistics_runs), ("statistics + audio", audio_runs)):
        for name, run in runs.items():
            trained = load_trained(root, name, run)
            content = TrackCatalog.from_workspace(root, audio_run=trained.audio_run)
            scorers.append((name, variant, ModelScorer(name, trained.model, content, trained.vocabulary)))

    print(f"\n{'scorer':<18} {'content':<19} {'HR@20':>7} {'MRR@20':>7} {'cold HR@20':>11} {'cold MRR@20':>12} "
          f"{'cold/all HR@20':>15}")
    best = None
    for name, variant, scorer in scorers:
        result = evaluate(scorer, examples)
        every, cold_part = result["all"], result["cold"]
        ratio = cold_part.get("HR@20", 0.0) / every["HR@20"] if every["HR@20"] else 0.0
        print(f"{name:<18} {variant:<19} {every['HR@20']:7.4f} {every['MRR@20']:7.4f} {cold_part.get('HR@20', 0):11.4f} "
              f"{cold_part.get('MRR@20', 0):12.4f} {ratio:15.2f}")
        if variant == "statistics + audio" and (best is None or every["MRR@20"] > best[1]):
            best = (name, every["MRR@20"], ratio)
    print(f"\nbest model with audio by MRR@20: {best[0]}, cold/all HR@20 = {best[2]:.2f} (target >= 0.5)")
    print("times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


if __name__ == "__main__":
    main()
