"""Feature extraction throughput: audio-seconds processed per second per CPU core.

    python -m benchmarks.extract [--tracks 160 | --catalog MANIFEST] [--repeat 3] [--cpus 2]

On the same demo tracks, in one run:
  (a) the Ray Data pipeline (``ray_jobs.extract``) on a local Ray with ``--cpus`` CPUs, end to end
      and at the margin (what each further track costs once the actor pool is running);
  (b) a tight single-process loop of the project's own decode + features, no Ray: the ceiling;
  (c) a naive librosa loop computing the same features the usual way, one call per feature.
(a) and (b) run our code; (b) and (c) use one core (one thread), (a) uses ``--cpus`` cores.
Targets: (a)/(c) >= 3, (a)/(b) >= 0.8.
"""

from __future__ import annotations

import os

# One thread per process everywhere, so "per core" means what it says.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from musicray import storage  # noqa: E402
from musicray.audio import decode  # noqa: E402
from musicray.catalog import load_catalog  # noqa: E402
from musicray.features import FeatureConfig, FeatureExtractor, pad_batch  # noqa: E402
from ray_jobs.extract import BATCH_SIZE  # noqa: E402


def ray_pipeline(manifest: str, cpus: int, repeat: int, folder: str) -> tuple[float, float, float]:
    """(end-to-end rate, marginal rate, start-up seconds), per core.

    The pipeline runs on the catalog and on the catalog listed ``repeat`` times over (each
    file again under new track ids, so as to have a large catalog without synthesising more
    audio), each into a fresh workspace. End to end: the large run's audio over its whole
    time. Marginal: the extra audio over the extra time, i.e. the rate at which a large catalog
    goes through once the pool is up; the fixed start-up (worker processes, imports) is what
    the two runs share.
    """
    import ray
    from ray.data import DataContext

    from ray_jobs.extract import run_extract

    tracks = load_catalog(manifest).drop(columns="listing_hash")  # absolute URIs
    copies = [tracks.assign(track_id=tracks["track_id"] + f"#{i}") for i in range(repeat)]
    large = str(Path(folder) / "repeated.parquet")
    pd.concat(copies).to_parquet(large)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    runs = []
    for catalog_file, name in ((manifest, "once"), (large, "repeated")):
        report = run_extract(catalog_file, str(Path(folder) / f"ws-{name}"))
        assert report.failed == 0 and report.done == report.total, report.summary()
        runs.append(report)
    ray.shutdown()
    small, big = runs
    end_to_end = big.audio_seconds / big.wall_seconds / cpus
    marginal = (big.audio_seconds - small.audio_seconds) / (big.wall_seconds - small.wall_seconds) / cpus
    startup = big.wall_seconds - big.audio_seconds / (marginal * cpus)
    return end_to_end, marginal, startup


def tight_loop(uris: list[str], batch_size: int = BATCH_SIZE) -> float:
    torch.set_num_threads(1)
    config = FeatureConfig()
    extractor = FeatureExtractor(config)
    audio_seconds, started = 0.0, time.perf_counter()
    for i in range(0, len(uris), batch_size):
        clips = [decode(storage.read_bytes(u), config.sample_rate, config.crop_seconds) for u in uris[i: i + batch_size]]
        waveforms, lengths = pad_batch([c.samples for c in clips], config.n_samples)
        features = extractor(waveforms, lengths)
        features["logmel"].to(torch.float16).numpy()
        audio_seconds += float(lengths.sum()) / config.sample_rate
    return audio_seconds / (time.perf_counter() - started)


def librosa_loop(uris: list[str]) -> float:
    import librosa

    audio_seconds, started = 0.0, time.perf_counter()
    for uri in uris:
        y, sr = librosa.load(uri, sr=22050, duration=30.0)
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_mels=128)
        librosa.power_to_db(mel).astype(np.float16)
        librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20)
        librosa.feature.chroma_stft(y=y, sr=sr)
        librosa.feature.spectral_centroid(y=y, sr=sr)
        librosa.feature.spectral_bandwidth(y=y, sr=sr)
        librosa.feature.spectral_rolloff(y=y, sr=sr)
        librosa.feature.spectral_flatness(y=y)
        librosa.feature.rms(y=y)
        onset = librosa.onset.onset_strength(y=y, sr=sr)
        librosa.feature.tempo(onset_envelope=onset, sr=sr)
        audio_seconds += len(y) / sr
    return audio_seconds / (time.perf_counter() - started)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=160, help="demo tracks to generate (30 s each)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs for the Ray pipeline")
    parser.add_argument("--catalog", help="use this manifest instead of generating demo tracks")
    parser.add_argument("--repeat", type=int, default=3, help="list the catalog this many times for the Ray runs")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.catalog:
            manifest = args.catalog
        else:
            from musicray.demo import generate

            manifest = str(generate(Path(tmp) / "demo", tracks=args.tracks, users=20, seed=0).manifest)
        uris = load_catalog(manifest)["uri"].tolist()
        formats = pd.Series([u.rsplit(".", 1)[-1] for u in uris]).value_counts().to_dict()
        print(f"{len(uris)} tracks ({formats}), 30 s crops; this machine has {os.cpu_count()} cores")

        end_to_end, marginal, startup = ray_pipeline(manifest, args.cpus, args.repeat, tmp)
        print(f"(a) Ray Data pipeline, {args.cpus} CPUs, marginal:  {marginal:8.1f} audio-s/s per core")
        print(f"    end to end, {args.repeat}x catalog, {startup:.0f} s start-up: {end_to_end:8.1f} audio-s/s per core")
        tight = tight_loop(uris)
        print(f"(b) tight loop, own code, 1 core:         {tight:8.1f} audio-s/s per core")
        naive = librosa_loop(uris)
        print(f"(c) naive librosa loop, 1 core:           {naive:8.1f} audio-s/s per core")
    print(f"(a)/(c) = {marginal / naive:.2f} marginal, {end_to_end / naive:.2f} end to end   (target >= 3)")
    print(f"(a)/(b) = {marginal / tight:.2f} marginal, {end_to_end / tight:.2f} end to end   (target >= 0.8)")


if __name__ == "__main__":
    main()
