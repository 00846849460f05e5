"""Audio embedding throughput next to feature extraction: tracks per second per core (and per GPU).

    python -m benchmarks.audio_encoder [--root ROOT] [--tracks 160] [--cpus 2] [--gpu]

On the stored 30 s crops of a workspace (default ``./workspace``, as ``musicray quickstart --full``
leaves it), in one run:
  (a) the encoder alone, in process, one thread: ``TrackAudioEmbedder`` on batches of 32 feature rows;
  (b) the extract job's embedding stage (``ray_jobs.extract.embed_audio``) on a local Ray with
      ``--cpus`` CPUs, end to end (start-up included), on a copy of the workspace;
  (c) feature extraction of the same tracks, in process, one thread (decode + every feature), the
      cost the embedding adds to;
  (d) with ``--gpu`` and a CUDA device: (a) on the GPU.
The encoder is the workspace's LATEST audio run, or an untrained one of the default size (its
throughput does not depend on its weights).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from benchmarks.extract import tight_loop  # noqa: E402
from models import build  # noqa: E402
from musicray import storage, workspace  # noqa: E402
from musicray.audio_embeddings import MODEL_NAME, TrackAudioEmbedder, latest_audio_run  # noqa: E402
from musicray.checkpoints import write_model_files  # noqa: E402
from musicray.generation import workspace_layout  # noqa: E402
from musicray.schemas import read_features  # noqa: E402

BATCH = 32


def encoder_run(root: str) -> str:
    """The LATEST audio run, or an untrained encoder published as run ``benchmark`` in ``root``."""
    run = latest_audio_run(root)
    if run:
        return run
    torch.manual_seed(0)
    model = build(MODEL_NAME, n_mels=workspace_layout(root)["n_mels"])
    with tempfile.TemporaryDirectory() as local:
        write_model_files(local, MODEL_NAME, model.eval(), [])
        for path in Path(local).iterdir():
            storage.write_bytes(storage.join(workspace.model_dir(root, MODEL_NAME, "benchmark"), path.name),
                                path.read_bytes())
    storage.publish(workspace.model_pointer(root, MODEL_NAME), "benchmark")
    return "benchmark"


def in_process(root: str, run: str, rows, device: str) -> float:
    """Tracks per second of the encoder alone on ``rows`` (feature rows with their crops)."""
    torch.set_num_threads(1)
    embedder = TrackAudioEmbedder(root, run, device)
    embedder(rows.slice(0, BATCH))  # warm-up: first-call allocations, CUDA kernels
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, rows.num_rows, BATCH):
        embedder(rows.slice(start, BATCH))
    if device == "cuda":
        torch.cuda.synchronize()
    return rows.num_rows / (time.perf_counter() - started)


def ray_stage(root: str, run: str, cpus: int) -> tuple[float, int]:
    """(tracks per second per core, tracks) of ``embed_audio`` end to end on a fresh local Ray."""
    import ray
    from ray.data import DataContext

    from ray_jobs.extract import embed_audio

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    storage.delete(workspace.audio_embeddings_dir(root, run))
    started = time.perf_counter()
    embedded = embed_audio(root, run)
    seconds = time.perf_counter() - started
    ray.shutdown()
    return embedded / seconds / cpus, embedded


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="workspace", help="a workspace with extracted features (default ./workspace)")
    parser.add_argument("--tracks", type=int, default=160, help="tracks timed in process (a) and (c)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs for the Ray stage (b)")
    parser.add_argument("--gpu", action="store_true", help="also time the encoder on the CUDA device (d)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = str(Path(tmp) / "ws")
        shutil.copytree(args.root, root, ignore=shutil.ignore_patterns("embeddings", "tune", "reports"))
        run = encoder_run(root)
        rows = read_features(root, columns=["track_id", "extracted_at", "crop_frames", "logmel", "uri"])
        rows = rows.slice(0, args.tracks)
        seconds = sum(rows.column("crop_frames").to_pylist()) * workspace_layout(root)["hop_length"] / \
            workspace_layout(root)["sample_rate"]
        print(f"{rows.num_rows} tracks, {seconds / rows.num_rows:.1f} s crops on average; encoder run {run}; "
              f"this machine has {os.cpu_count()} cores")
        encoder = in_process(root, run, rows, "cpu")
        print(f"(a) encoder alone, 1 core:              {encoder:8.1f} tracks/s per core")
        pipeline, embedded = ray_stage(root, run, args.cpus)
        print(f"(b) embed_audio on Ray, {args.cpus} CPUs, {embedded} tracks: {pipeline:8.1f} tracks/s per core (end to end)")
        extraction = tight_loop(rows.column("uri").to_pylist()) / (seconds / rows.num_rows)
        print(f"(c) feature extraction, 1 core:         {extraction:8.1f} tracks/s per core")
        if args.gpu:
            if not torch.cuda.is_available():
                raise SystemExit("--gpu: no CUDA device here")
            print(f"(d) encoder alone, 1 GPU ({torch.cuda.get_device_name()}): "
                  f"{in_process(root, run, rows, 'cuda'):8.1f} tracks/s per GPU")
    print(f"embedding / extraction time per track = {extraction / encoder:.2f} (encoder alone), "
          f"{extraction / pipeline:.2f} (on Ray, end to end)")


if __name__ == "__main__":
    main()
