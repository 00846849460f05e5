"""Nightly refresh: a full refresh, then an incremental one after 5% of the tracks changed.

    python -m benchmarks.refresh --catalog demo/catalog.parquet --models-from workspace [--repeat 3] [--cpus 2]

Both refreshes run in one process on one local Ray (started once, so neither pays its start-up),
into a fresh workspace holding a copy of the trained models of ``--models-from``:
  full         an empty workspace: every track is decoded and extracted, then embedded and indexed;
  incremental  ``--change`` (5%) of the tracks get new audio: only those are decoded again, every
               unchanged file is still read and hashed (a local manifest has no ETags; an S3
               prefix skips them unread), the feature files holding replaced rows are rewritten,
               only the changed tracks are embedded (the others keep the previous snapshot's
               vectors: same models), and every index is built again.
Prints both times per stage and the ratio; target: incremental <= 20% of full.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from musicray.catalog import load_catalog


def changed_catalog(manifest: str, share: float, folder: Path, seed: int = 0) -> tuple[str, int]:
    """A copy of the catalog in which ``share`` of the tracks point at new audio (new tones)."""
    tracks = pd.read_parquet(manifest)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(tracks), size=max(1, round(share * len(tracks))), replace=False)
    t = np.arange(22050 * 30) / 22050
    for row in picked:
        path = folder / f"changed-{row}.wav"
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(110, 880) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
        sf.write(path, wave.astype(np.float32), 22050)
        tracks.loc[tracks.index[row], "uri"] = str(path)
    out = folder / "catalog-changed.parquet"
    tracks.to_parquet(out, index=False)
    return str(out), len(picked)


def repeated_catalog(manifest: str, repeat: int, folder: Path) -> str:
    """The catalog listed ``repeat`` times (new track ids, same files): a larger catalog, no synthesis."""
    tracks = load_catalog(manifest).drop(columns="listing_hash")
    out = folder / "catalog.parquet"
    pd.concat([tracks.assign(track_id=tracks["track_id"] + f"#{i}") for i in range(repeat)]).to_parquet(out, index=False)
    return str(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", default="demo/catalog.parquet")
    parser.add_argument("--models-from", default="workspace", help="a local workspace with trained models")
    parser.add_argument("--repeat", type=int, default=3, help="list the catalog this many times over")
    parser.add_argument("--change", type=float, default=0.05, help="share of tracks that change (default 0.05)")
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args(argv)
    if not (Path(args.models_from) / "models").is_dir():
        parser.error(f"{args.models_from} has no models/: train first (`make quickstart` or `musicray train`)")

    import ray
    from ray.data import DataContext

    from ray_jobs.refresh import run_refresh

    with tempfile.TemporaryDirectory(prefix="musicray-bench-refresh-") as tmp:
        folder = Path(tmp)
        root = str(folder / "ws")
        shutil.copytree(Path(args.models_from) / "models", Path(root) / "models")
        catalog = repeated_catalog(args.catalog, args.repeat, folder)
        changed, n_changed = changed_catalog(catalog, args.change, folder)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        DataContext.get_current().enable_progress_bars = False
        results = {}
        for name, source in (("full", catalog), ("incremental", changed)):
            began = time.perf_counter()
            report = run_refresh(source, root)
            results[name] = (time.perf_counter() - began, report)
            print(f"{name}: {time.perf_counter() - began:.1f} s  {report.summary()}", flush=True)
        ray.shutdown()

    stages = list(results["full"][1].timings)
    table = pd.DataFrame({name: {**{s: r.timings[s] for s in stages}, "total": seconds}
                          for name, (seconds, r) in results.items()}).round(1)
    print(f"\n{results['full'][1].tracks} tracks, {n_changed} changed ({args.change:.0%}), {args.cpus} CPUs")
    print(table.to_string())
    ratio = results["incremental"][0] / results["full"][0]
    print(f"\nincremental / full = {ratio:.2f} (target <= 0.20): {'met' if ratio <= 0.2 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
