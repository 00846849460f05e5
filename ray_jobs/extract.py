"""Feature extraction: catalog -> ``<root>/features/`` (+ ``<root>/errors/``), streaming on Ray Data.

    python -m ray_jobs.extract --catalog CATALOG --root ROOT [--gpu] [--max-failure-rate 0.05]

The pipeline, one streaming pass, nothing materialised:

    catalog rows -> [read bytes, sha256, skip if unchanged, decode, mono, resample, crop]
                 -> [one STFT per track -> log-mel, MFCC, chroma, spectral stats, tempo]  (actor pool)
                 -> FeatureSink: features part files + error rows, counts per status

On CPU both steps run in one actor (no waveform crosses the object store); with ``--gpu``
decoding runs as CPU tasks feeding a pool of GPU actors. A track is skipped without
decoding when its content hash and extractor version match its existing row; with a
listed S3 prefix the ETag stands in for the hash, so unchanged objects are not even read.
Every track ends as done, skipped or failed; failures are rows in ``<root>/errors/``.

Once an audio encoder is trained (``musicray train --model audio``), the job then embeds every
track whose current feature row the encoder's LATEST run has not embedded yet
(``embed_audio``: an actor pool over the stored log-mel crops, GPU actors with ``--gpu``), into
``<root>/audio_embeddings/<run>/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ActorPoolStrategy
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from musicray import storage, workspace
from musicray.audio import AudioError, decode
from musicray.audio_embeddings import TrackAudioEmbedder, latest_audio_run, read_embeddings
from musicray.catalog import CatalogError, load_catalog
from musicray.features import FeatureConfig, FeatureExtractor, pad_batch
from musicray.schemas import (ERRORS_SCHEMA, current_feature_rows, features_schema, parquet_files, read_features,
                              rows_matching)
from ray_jobs.common import cluster_resources, init_ray

DONE, SKIPPED, FAILED = "done", "skipped", "failed"
BATCH_SIZE = 16  # tracks per feature batch: ~0.7 GB of working memory per actor at 30 s crops


@dataclass
class ExtractReport:
    run_id: str
    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    audio_embedded: int = 0  # tracks the audio encoder embedded in this run (0 without an encoder)

    @property
    def failure_rate(self) -> float:
        return self.failed / self.total if self.total else 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.failures_by_kind.items()))
        return (f"{self.total} in = {self.done} done + {self.skipped} skipped + {self.failed} failed"
                + (f" ({kinds})" if kinds else ""))


# ---------------------------------------------------------------------------------------------
# Step 1: bytes -> waveform (CPU)


def decode_batch(batch: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """Read, hash and decode each track of a batch; never raises for a bad track."""
    rows = []
    for track in batch.itertuples(index=False):
        row = {"track_id": track.track_id, "uri": track.uri, "content_hash": track.listing_hash or None,
               "status": DONE, "error_kind": None, "message": None, "samples": b"",
               "sample_rate": None, "channels": None, "duration_s": None}
        try:
            data = storage.read_bytes(track.uri)
        except FileNotFoundError:
            rows.append({**row, "status": FAILED, "error_kind": "missing", "message": "file not found"})
            continue
        except Exception as error:
            rows.append({**row, "status": FAILED, "error_kind": "read_error", "message": str(error)[:500]})
            continue
        content_hash = track.listing_hash or "sha256:" + hashlib.sha256(data).hexdigest()
        row["content_hash"] = content_hash
        if content_hash == track.known_hash:
            rows.append({**row, "status": SKIPPED})
            continue
        try:
            clip = decode(data, config.sample_rate, config.crop_seconds)
        except AudioError as error:
            rows.append({**row, "status": FAILED, "error_kind": error.kind, "message": str(error)})
            continue
        rows.append({**row, "samples": clip.samples.tobytes(), "sample_rate": clip.source_sample_rate,
                     "channels": clip.source_channels, "duration_s": clip.duration_s})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Step 2: waveform -> features (an actor holds the filterbanks, on CPU or GPU)


class ComputeFeatures:
    def __init__(self, config: FeatureConfig, device: str, decode_inline: bool, extracted_at: datetime,
                 progress=None):
        if device == "cpu":
            torch.set_num_threads(1)  # one actor per core; more threads only contend
        self.config = config
        self.extractor = FeatureExtractor(config, device)
        self.decode_inline = decode_inline
        self.extracted_at = extracted_at
        self.schema = pipeline_schema(config)
        self.progress = progress  # a ray_jobs.common.Progress, counting tracks

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        if self.decode_inline:
            batch = decode_batch(batch, self.config)
        batch = batch.reset_index(drop=True)
        ready = (batch["status"] == DONE).to_numpy()
        columns = {name: batch[name].tolist() for name in PASSED_THROUGH}
        columns["extractor_version"] = [self.config.version] * len(batch)
        columns["extracted_at"] = [self.extracted_at] * len(batch)
        features = {}
        if ready.any():
            clips = [np.frombuffer(b, dtype=np.float32) for b in batch.loc[ready, "samples"]]
            waveforms, lengths = pad_batch(clips, self.config.n_samples)
            features = {k: v.float().cpu().numpy() for k, v in self.extractor(waveforms, lengths).items()}
            features["logmel"] = features["logmel"].astype(np.float16)
            features["crop_frames"] = (1 + lengths // self.config.hop_length).clamp(max=self.config.n_frames).numpy()
        arrays = []
        for column in self.schema:
            if column.name in columns:
                arrays.append(pa.array([None if pd.isna(v) else v for v in columns[column.name]], type=column.type))
            else:
                arrays.append(_scatter(features.get(column.name), ready, column.type))
        if self.progress:
            self.progress.add(len(batch))
        return pa.Table.from_arrays(arrays, schema=self.schema)


PASSED_THROUGH = ("track_id", "uri", "content_hash", "status", "error_kind", "message",
                  "sample_rate", "channels", "duration_s")


def _scatter(values: np.ndarray | None, ready: np.ndarray, type: pa.DataType) -> pa.Array:
    """An Arrow column holding ``values`` at the ``ready`` rows and nulls elsewhere, built in one go."""
    n = len(ready)
    if values is None:
        return pa.nulls(n, type)
    full = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
    full[ready] = values
    if pa.types.is_fixed_size_list(type):
        flat = pa.array(full.reshape(-1), type=type.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, type.list_size, mask=pa.array(~ready))
    return pa.array(full.astype(type.to_pandas_dtype()), type=type, mask=~ready)


def pipeline_schema(config: FeatureConfig) -> pa.Schema:
    """The features schema, all nullable, plus each row's outcome."""
    fields = [f.with_nullable(True) for f in features_schema(config)]
    return pa.schema(fields + [pa.field("status", pa.string()), pa.field("error_kind", pa.string()),
                               pa.field("message", pa.string())])


# ---------------------------------------------------------------------------------------------
# Step 3: write. Each write task splits its rows by outcome; the driver adds up the counts.


class FeatureSink(Datasink):
    def __init__(self, root: str, run_id: str, config: FeatureConfig, rows_per_file: int):
        self.root, self.run_id, self.config = root, run_id, config
        self.rows_per_file = rows_per_file
        self.counts: dict | None = None

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks, ctx) -> dict:
        table = pa.concat_tables([BlockAccessor.for_block(b).to_arrow() for b in blocks])
        status = table.column("status")
        done = table.filter(pc.equal(status, DONE))
        failed = table.filter(pc.equal(status, FAILED))
        name = f"part-{self.run_id}-{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}.parquet"
        if done.num_rows:
            done = done.select(features_schema(self.config).names).cast(features_schema(self.config))
            _write_parquet(storage.join(workspace.features_dir(self.root), name), done)
        if failed.num_rows:
            errors = pa.table({
                "track_id": failed.column("track_id"), "uri": failed.column("uri"),
                "error_kind": failed.column("error_kind"), "message": failed.column("message"),
                "run_id": pa.array([self.run_id] * failed.num_rows),
                "failed_at": failed.column("extracted_at"),
            }).cast(ERRORS_SCHEMA)
            _write_parquet(storage.join(workspace.errors_dir(self.root), name), errors)
        return {
            "done_ids": done.column("track_id").to_pylist(),
            "skipped_ids": table.filter(pc.equal(status, SKIPPED)).column("track_id").to_pylist(),
            "failed_kinds": failed.column("error_kind").to_pylist(),
            "audio_seconds": float(pc.sum(pc.min_element_wise(
                done.column("duration_s"), pa.scalar(self.config.crop_seconds, pa.float32()))).as_py() or 0.0),
        }

    def on_write_complete(self, write_result) -> None:
        self.counts = {"done_ids": [], "skipped_ids": [], "failed_kinds": [], "audio_seconds": 0.0}
        for part in write_result.write_returns:
            for key in ("done_ids", "skipped_ids", "failed_kinds"):
                self.counts[key].extend(part[key])
            self.counts["audio_seconds"] += part["audio_seconds"]


def _write_parquet(uri: str, table: pa.Table) -> None:
    # Dictionaries and min/max statistics help only scalar columns; on the log-mel lists they
    # cost more time than the compression itself.
    scalar = [f.name for f in table.schema if not pa.types.is_list(f.type) and not pa.types.is_fixed_size_list(f.type)]
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd", use_dictionary=scalar, write_statistics=scalar)
    storage.write_bytes(uri, buffer.getvalue().to_pybytes())


# ---------------------------------------------------------------------------------------------
# The job


def run_extract(catalog: str, root: str, *, config: FeatureConfig = FeatureConfig(), gpu: bool = False,
                batch_size: int = BATCH_SIZE, rows_per_file: int = 256, run_id: str | None = None,
                progress=None) -> ExtractReport:
    """Extract features for every new or changed track of ``catalog`` into the workspace ``root``.
    ``progress`` (a ``ray_jobs.common.Progress``) counts the tracks read, whatever their outcome."""
    started = time.perf_counter()
    tracks = load_catalog(catalog)  # every input check happens before any work
    root = storage.normalize(root)
    run_id = run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    report = ExtractReport(run_id=run_id, total=len(tracks))

    existing = read_features(root, columns=["track_id", "content_hash", "extractor_version"]).to_pandas()
    current = existing[existing["extractor_version"] == config.version]
    tracks = tracks.merge(current[["track_id", "content_hash"]].rename(columns={"content_hash": "known_hash"}),
                          on="track_id", how="left")
    tracks["known_hash"] = tracks["known_hash"].fillna("")
    # A listed S3 object whose ETag+size is unchanged is skipped here, without being read.
    unread = (tracks["listing_hash"] != "") & (tracks["listing_hash"] == tracks["known_hash"])
    kept_ids = set(tracks.loc[unread, "track_id"])
    todo = tracks.loc[~unread, ["track_id", "uri", "listing_hash", "known_hash"]]
    old_files = parquet_files(workspace.features_dir(root))
    old_errors = parquet_files(workspace.errors_dir(root))

    if len(todo):
        init_ray()
        sink = FeatureSink(root, run_id, config, rows_per_file)
        # Writing is light next to feature maths; reserving CPU for it would leave it queued behind
        # the actors (which hold every CPU) until they finish, instead of streaming alongside.
        _build_pipeline(todo, config, gpu, batch_size, datetime.now(timezone.utc), progress).write_datasink(
            sink, ray_remote_args={"num_cpus": 0})
        report.done = len(sink.counts["done_ids"])
        report.skipped = len(sink.counts["skipped_ids"])
        report.failed = len(sink.counts["failed_kinds"])
        report.audio_seconds = sink.counts["audio_seconds"]
        report.failures_by_kind = pd.Series(sink.counts["failed_kinds"], dtype=str).value_counts().to_dict()
        kept_ids |= set(sink.counts["skipped_ids"])
    report.skipped += int(unread.sum())
    if report.done + report.skipped + report.failed != report.total:
        raise RuntimeError(f"extract lost tracks: {report.summary()}")

    _retire_replaced_rows(old_files, kept_ids)
    _write_parquet(workspace.catalog_file(root), pa.Table.from_pandas(
        tracks.drop(columns=["listing_hash", "known_hash"]), preserve_index=False))
    for stale in old_errors:  # errors/ holds the failures of the latest run only
        storage.delete(stale)
    audio_run = latest_audio_run(root)
    if audio_run and report.done + report.skipped:
        report.audio_embedded = embed_audio(root, audio_run, gpu=gpu)
    report.wall_seconds = time.perf_counter() - started
    storage.write_text(storage.join(workspace.reports_dir(root, f"extract-{run_id}"), "metrics.json"),
                       json.dumps({**asdict(report), "catalog": str(catalog), "extractor_version": config.version,
                                   "failure_rate": report.failure_rate}, indent=2))
    return report


def embed_audio(root: str, run_id: str, *, gpu: bool = False, batch_size: int = 32) -> int:
    """Embed, with the audio encoder run ``run_id``, every current feature row it has not embedded
    yet; returns how many. Reads only those rows' log-mel crops."""
    rows = current_feature_rows(root)
    done = read_embeddings(root, run_id).select(["track_id", "extracted_at"])
    todo = rows.join(done.cast(rows.select(["track_id", "extracted_at"]).schema), keys=["track_id", "extracted_at"],
                     join_type="left anti")
    if todo.num_rows == 0:
        return 0
    init_ray()
    cpus, gpus = cluster_resources()
    if gpu and gpus == 0:
        raise RuntimeError("--gpu was given but the Ray cluster has no GPU")
    fs, out = storage.resolve(workspace.audio_embeddings_dir(root, run_id))
    files = sorted(set(todo.column("file").to_pylist()))
    wanted = todo.select(["track_id", "file"]).rename_columns(["track_id", "path"])
    dataset = ray.data.read_parquet(files, filesystem=fs, include_paths=True).select_columns(
        ["track_id", "extracted_at", "crop_frames", "logmel", "path"])
    dataset = dataset.map_batches(rows_matching, fn_kwargs={"wanted": wanted}, batch_format="pyarrow")
    batches = -(-todo.num_rows // batch_size)  # no more actors (each loads the encoder) than batches
    resources = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": 1}
    dataset.map_batches(
        TrackAudioEmbedder, fn_constructor_kwargs={"root": root, "run_id": run_id, "device": "cuda" if gpu else "cpu"},
        batch_size=batch_size, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=max(1, min(gpus if gpu else cpus, batches))), **resources,
    ).write_parquet(out, filesystem=fs)
    return todo.num_rows


def _build_pipeline(todo: pd.DataFrame, config: FeatureConfig, gpu: bool, batch_size: int,
                    extracted_at: datetime, progress=None) -> ray.data.Dataset:
    # One block per batch, so work spreads over the whole pool from the first batch on.
    blocks = [todo.iloc[i: i + batch_size] for i in range(0, len(todo), batch_size)]
    dataset = ray.data.from_pandas(blocks)
    cpus, gpus = cluster_resources()
    if gpu:
        if gpus == 0:
            raise RuntimeError("--gpu was given but the Ray cluster has no GPU")
        dataset = dataset.map_batches(decode_batch, fn_kwargs={"config": config}, batch_format="pandas",
                                      batch_size=batch_size, num_cpus=1)
        pool, actor_resources = gpus, {"num_gpus": 1, "num_cpus": 1}
    else:
        pool, actor_resources = max(1, cpus), {"num_cpus": 1}
    return dataset.map_batches(
        ComputeFeatures,
        fn_constructor_kwargs={"config": config, "device": "cuda" if gpu else "cpu",
                               "decode_inline": not gpu, "extracted_at": extracted_at, "progress": progress},
        batch_format="pandas", batch_size=batch_size,
        compute=ActorPoolStrategy(size=pool), **actor_resources,
    )


def _retire_replaced_rows(old_files: list[str], kept_ids: set[str]) -> None:
    """Drop, from the part files that existed before this run, every row not confirmed current.

    A row survives only if its track was skipped as unchanged in this run; rows of tracks
    that were re-extracted, failed or left the catalog go. New rows were written first, so
    a reader never loses a track whose extraction succeeded. Files that keep some rows are
    rewritten in parallel Ray tasks: they carry the log-mel crops, the bulk of the table.
    """
    kept_set = pa.array(sorted(kept_ids), pa.string())
    rewrites = []
    for uri in old_files:
        fs, path = storage.resolve(uri)
        ids = pq.read_table(path, filesystem=fs, columns=["track_id"]).column("track_id")  # not the log-mels
        kept = int(pc.sum(pc.is_in(ids, value_set=kept_set)).as_py() or 0)
        if kept == 0:
            storage.delete(uri)
        elif kept < len(ids):
            rewrites.append(uri)
    if rewrites:
        init_ray()
        rewrite = ray.remote(num_cpus=1)(_keep_rows)
        ray.get([rewrite.remote(uri, kept_set) for uri in rewrites])


def _keep_rows(uri: str, kept_set: pa.Array) -> None:
    """Replace the part file ``uri`` by one holding only its rows of ``kept_set``'s tracks."""
    fs, path = storage.resolve(uri)
    table = pq.read_table(path, filesystem=fs)
    keep = pc.is_in(table.column("track_id"), value_set=kept_set)
    _write_parquet(uri.replace(".parquet", f"-c{uuid.uuid4().hex[:6]}.parquet"), table.filter(keep))
    storage.delete(uri)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="musicray extract", description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", required=True, help="manifest (.parquet/.csv) or a folder / s3:// prefix")
    parser.add_argument("--root", required=True, help="workspace root: a local folder or s3://bucket/prefix")
    parser.add_argument("--gpu", action="store_true", help="compute features on GPU actors")
    parser.add_argument("--max-failure-rate", type=float, default=0.05,
                        help="exit non-zero when more than this fraction of tracks fail (default 0.05)")
    parser.add_argument("--crop-seconds", type=float, default=30.0, help="centre crop length (default 30)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help=f"tracks per feature batch (default {BATCH_SIZE})")
    args = parser.parse_args(argv)
    if not 0.0 <= args.max_failure_rate <= 1.0:
        parser.error(f"--max-failure-rate must be within [0, 1], got {args.max_failure_rate}")
    if args.crop_seconds <= 0 or args.batch_size < 1:
        parser.error("--crop-seconds must be > 0 and --batch-size >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = run_extract(args.catalog, args.root, config=FeatureConfig(crop_seconds=args.crop_seconds),
                             gpu=args.gpu, batch_size=args.batch_size)
    except CatalogError as error:
        print(f"musicray extract: error: {error}", file=sys.stderr)
        return 2
    rate = report.audio_seconds / report.wall_seconds if report.wall_seconds else 0.0
    print(f"extract {report.run_id}: {report.summary()}")
    print(f"  {report.audio_seconds:.0f} audio-seconds in {report.wall_seconds:.1f} s ({rate:.0f}x real time); "
          f"features in {workspace.features_dir(storage.normalize(args.root))}")
    if report.failure_rate > args.max_failure_rate:
        print(f"  failure rate {report.failure_rate:.1%} is above --max-failure-rate {args.max_failure_rate:.1%}; "
              f"see {workspace.errors_dir(storage.normalize(args.root))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
