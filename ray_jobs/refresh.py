"""Nightly catalog-wide refresh: new snapshot of every track's vectors and indexes, published atomically.

    python -m ray_jobs.refresh --catalog CATALOG --root ROOT [--gpu] [--keep 3]

Stages (each prints its duration):

    extract   incremental feature extraction (only new or changed tracks are decoded)
    embed     features -> each model's track vectors, Ray Data on an actor pool -> vectors/*.parquet;
              a track whose feature row and model runs are those of the previous snapshot keeps
              its vectors from there (a vector depends on nothing else), so only changes are embedded
              (with a trained tagger, each row also holds the track's predicted tags)
    index     one nearest-neighbour index per model, built in parallel Ray tasks
    verify    manifest.json written, then the snapshot is loaded back and every count checked
    publish   <root>/embeddings/LATEST names the new snapshot (written last)
    prune     snapshots older than the newest --keep are removed

The models are the runs each ``<root>/models/<model>/LATEST`` names when the job starts. A
failure at any stage leaves LATEST on the previous snapshot; re-running starts a fresh one.
One refresh of a workspace runs at a time on a Ray cluster: a second one waits for the first.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from musicray import snapshots, storage, workspace
from musicray.catalog import CatalogError
from musicray.embedding import INPUT_COLUMNS, TrackEmbedder, audio_runs, index_metric, latest_runs
from musicray.schemas import current_feature_rows, rows_matching
from musicray.tagging import latest_tagger_run, manifest_entry
from ray_jobs.common import cluster_resources, exclusive, init_ray
from ray_jobs.extract import ExtractReport, embed_audio, run_extract

BATCH_SIZE = 1024  # tracks per inference batch: content vectors are ~1.3 KB a track


@dataclass
class RefreshReport:
    snapshot_id: str
    extract: ExtractReport | None = None
    tracks: int = 0
    embedded: int = 0  # tracks = embedded + reused
    reused: int = 0
    models: dict = field(default_factory=dict)
    tagger: dict | None = None  # the tagger run whose predicted tags the snapshot holds, and its columns
    published: bool = False
    pruned: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        e = self.extract
        return (f"{e.total} in = {self.tracks} in the snapshot + {e.failed} failed extraction "
                f"({e.done} extracted, {e.skipped} unchanged; {self.embedded} embedded, {self.reused} vectors "
                f"reused); {len(self.models)} models")


def run_refresh(catalog: str, root: str, *, gpu: bool = False, keep: int = 3, batch_size: int = BATCH_SIZE,
                on_stage: Callable[[str, float], None] | None = None) -> RefreshReport:
    """Refresh the workspace ``root`` from ``catalog``; ``on_stage(name, seconds)`` follows progress."""
    if keep < 1:
        raise ValueError(f"--keep must be >= 1, got {keep}")
    root = storage.normalize(root)
    latest_runs(root)  # before any work: no trained model is a clear error, not a late one
    init_ray()
    with exclusive("refresh", root, on_wait=lambda message: print(f"  {message}", flush=True)):
        return _refresh(catalog, root, gpu, keep, batch_size, on_stage)


def _refresh(catalog: str, root: str, gpu: bool, keep: int, batch_size: int,
             on_stage: Callable[[str, float], None] | None) -> RefreshReport:
    runs = latest_runs(root)  # read under the lock: the models as they are when this run starts
    tagger_run = latest_tagger_run(root)  # None before a tagger is trained: a snapshot without tags
    report = RefreshReport(snapshot_id=snapshots.new_snapshot_id(), tagger=manifest_entry(root, tagger_run))
    sid = report.snapshot_id

    def stage(name: str, began: float) -> float:
        report.timings[name] = time.perf_counter() - began
        if on_stage:
            on_stage(name, report.timings[name])
        return time.perf_counter()

    began = time.perf_counter()
    report.extract = run_extract(catalog, root, gpu=gpu)
    for audio_run in sorted(audio_runs(root, runs)):  # the encoder runs the models read; extract embeds LATEST's
        report.extract.audio_embedded += embed_audio(root, audio_run, gpu=gpu)
    began = stage("extract", began)

    rows = current_feature_rows(root)
    report.tracks = rows.num_rows
    if report.extract.total != report.tracks + report.extract.failed:
        raise RuntimeError(f"refresh would lose tracks: {report.summary()}; was {root} extracted from another "
                           f"catalog at the same time?")
    previous, reusable = _reusable_vectors(root, runs, tagger_run, rows)
    todo = rows.join(reusable, keys=KEY, join_type="left anti")
    report.embedded, report.reused = todo.num_rows, reusable.num_rows
    copies = _carry_over(previous, reusable, snapshots.vectors_dir(root, sid)) if reusable.num_rows else []
    if todo.num_rows:
        _embed(root, sid, runs, tagger_run, todo, gpu, batch_size)
    ray.get(copies)
    began = stage("embed", began)

    files = sorted(f.uri[len(workspace.snapshot_dir(root, sid)) + 1:].replace("\\", "/")
                   for f in storage.list_files(snapshots.vectors_dir(root, sid), suffixes=(".parquet",)))
    threads = max(1, min(8, cluster_resources()[0] // max(1, len(runs))))
    build = ray.remote(num_cpus=threads)(snapshots.write_index)
    report.models = dict(zip(runs, ray.get([
        build.remote(root, sid, name, files, index_metric(name), threads) for name in runs])))
    for name, run in runs.items():
        report.models[name]["run"] = run
    began = stage("index", began)

    snapshots.write_manifest(root, sid, {
        "snapshot": sid, "created_at": datetime.now(timezone.utc).isoformat(), "tracks": report.tracks,
        "files": files, "models": report.models, "tagger": report.tagger,
        "catalog": {"source": str(catalog), "tracks": report.extract.total, "failed": report.extract.failed,
                    "fingerprint": _fingerprint(rows)},
        "extract": {"run_id": report.extract.run_id, "done": report.extract.done,
                    "skipped": report.extract.skipped, "failed": report.extract.failed},
        "embedded": report.embedded, "reused": {"tracks": report.reused, "from": previous.id if previous else None},
    })
    snapshots.verify(root, sid, report.tracks)
    began = stage("verify", began)
    report.published = snapshots.publish(root, sid)
    began = stage("publish", began)
    report.pruned = snapshots.prune(root, keep)
    stage("prune", began)
    return report


KEY = ["track_id", "extracted_at"]  # a feature row; with the model runs, all a track's vectors depend on


def _reusable_vectors(root: str, runs: dict[str, str], tagger_run: str | None,
                      rows: pa.Table) -> tuple[snapshots.Snapshot | None, pa.Table]:
    """The published snapshot and the ``KEY`` of each current row whose vectors it already holds.

    Only a snapshot made by exactly the same model runs (and tagger run) counts; after any retraining every track
    is embedded again.
    """
    none = rows.select(KEY).slice(0, 0)
    try:
        previous = snapshots.latest_snapshot(root)
    except snapshots.SnapshotError:
        return None, none  # a broken publish is what this refresh replaces
    if previous is None or {n: m["run"] for n, m in previous.manifest["models"].items()} != runs:
        return None, none
    if (previous.manifest.get("tagger") or {}).get("run") != tagger_run:
        return None, none  # its rows carry another tagger's tags, or none
    if "extracted_at" not in previous.vector_columns():
        return None, none  # written before vectors carried their feature row's time
    return previous, rows.select(KEY).join(previous.vectors(KEY), keys=KEY, join_type="inner")


def _embed(root: str, sid: str, runs: dict[str, str], tagger_run: str | None, todo: pa.Table, gpu: bool, batch_size: int) -> None:
    cpus, gpus = cluster_resources()
    if gpu and gpus == 0:
        raise RuntimeError("--gpu was given but the Ray cluster has no GPU")
    fs, out = storage.resolve(snapshots.vectors_dir(root, sid))
    # select_columns is pushed down into the read: the log-mel crops are never loaded.
    files = sorted(set(todo.column("file").to_pylist()))
    batches = -(-todo.num_rows // batch_size)  # no more actors (each loads every model) than batches
    dataset = ray.data.read_parquet(files, filesystem=fs, include_paths=True).select_columns([*INPUT_COLUMNS, "path"])
    # Keyed by file too: two extractions can leave the same row, same time, in two files.
    wanted = todo.select(["track_id", "file"]).rename_columns(["track_id", "path"])
    dataset = dataset.map_batches(rows_matching, fn_kwargs={"wanted": wanted}, batch_format="pyarrow")
    resources = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": 1}
    dataset = dataset.map_batches(
        TrackEmbedder, fn_constructor_kwargs={"root": root, "runs": runs, "device": "cuda" if gpu else "cpu",
                                             "tagger_run": tagger_run},
        batch_size=batch_size, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=max(1, min(gpus if gpu else cpus, batches))), **resources)
    dataset.write_parquet(out, filesystem=fs)


def _carry_over(previous: snapshots.Snapshot, reusable: pa.Table, out_dir: str) -> list[ray.ObjectRef]:
    """Copy the ``reusable`` rows of the previous snapshot into the new one, one Ray task per file.

    Plain tasks rather than a Dataset: a filter and a copy, for which a pipeline's start-up
    costs more than the work. Returns the tasks' refs, to wait for.
    """
    copy = ray.remote(num_cpus=1)(_copy_rows)
    wanted = ray.put(reusable)
    return [copy.remote(storage.join(previous.uri, f), storage.join(out_dir, f"reused-{i:05d}.parquet"), wanted)
            for i, f in enumerate(previous.manifest["files"])]


def _copy_rows(source: str, target: str, wanted: pa.Table) -> None:
    fs, path = storage.resolve(source)
    rows = rows_matching(pq.read_table(path, filesystem=fs), wanted)
    if rows.num_rows:
        buffer = pa.BufferOutputStream()
        pq.write_table(rows, buffer)
        storage.write_bytes(target, buffer.getvalue().to_pybytes())


def _fingerprint(rows: pa.Table) -> str:
    """Which audio the snapshot was made from: sha256 over sorted (track_id, content_hash)."""
    digest = hashlib.sha256()
    for track_id, content_hash in zip(rows.column("track_id").to_pylist(), rows.column("content_hash").to_pylist()):
        digest.update(f"{track_id}\t{content_hash}\n".encode())
    return "sha256:" + digest.hexdigest()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="musicray refresh", description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", required=True, help="manifest (.parquet/.csv) or a folder / s3:// prefix")
    parser.add_argument("--root", required=True, help="workspace root: a local folder or s3://bucket/prefix")
    parser.add_argument("--gpu", action="store_true", help="extract and embed on GPU actors")
    parser.add_argument("--keep", type=int, default=3, help="complete snapshots to keep (default 3)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help=f"tracks per inference batch (default {BATCH_SIZE})")
    args = parser.parse_args(argv)
    if args.keep < 1 or args.batch_size < 1:
        parser.error(f"--keep and --batch-size must be >= 1, got {args.keep} and {args.batch_size}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = run_refresh(args.catalog, args.root, gpu=args.gpu, keep=args.keep, batch_size=args.batch_size,
                             on_stage=lambda name, s: print(f"  {name:<8} {s:7.1f} s", flush=True))
    except (CatalogError, FileNotFoundError) as error:
        print(f"musicray refresh: error: {error}", file=sys.stderr)
        return 2
    print(f"refresh {report.snapshot_id}: {report.summary()}")
    for name, info in report.models.items():
        print(f"  {name:<12} run {info['run']}  dim {info['dim']}  {info['metric']}  "
              f"index recall@10 {info['recall_at_10']:.3f}  built in {info['build_seconds']:.1f} s")
    if report.tagger:
        print(f"  tagger       run {report.tagger['run']}  predicted tags: {', '.join(report.tagger['columns'])}")
    root = storage.normalize(args.root)
    if report.published:
        print(f"  published: {workspace.snapshot_pointer(root)} -> {report.snapshot_id}")
    else:
        print(f"  not published: a newer snapshot was published meanwhile ({workspace.snapshot_pointer(root)})")
    if report.pruned:
        print(f"  pruned {len(report.pruned)} old snapshot(s): {', '.join(report.pruned)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
