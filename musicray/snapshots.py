"""Embedding snapshots: ``<root>/embeddings/<snapshot>/`` and the ``LATEST`` pointer beside them.

A snapshot holds every catalog track's vector under each model, as one immutable folder:

    vectors/*.parquet        track_id, one float32 vector column per model, <model>_run; with a
                             trained tagger, tags_<column> (predicted tags) and tagger_run
    index/<model>.voy        a nearest-neighbour index per model (musicray.index)
    manifest.json            counts, model runs, the tagger run and its columns, catalog fingerprint, files, created_at

It is written data first, manifest second, verified, and only then named by ``LATEST``; so a
reader that follows ``LATEST`` never sees a half-written snapshot, whatever stopped the writer.

Concurrent writers: snapshot ids sort by their start time; a writer does not move ``LATEST``
back past a newer complete snapshot, and pruning never touches a snapshot newer than the one
``LATEST`` names (it may still be being written), nor an incomplete one younger than a day.
After publishing, a writer re-reads ``LATEST`` and, should it name a snapshot that a concurrent
pruner removed, points it at the newest complete one again. Readers load through
``load_latest``, which follows ``LATEST`` again if a prune removes what they were reading.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, TypeVar

import pyarrow as pa
import pyarrow.dataset as pads

from musicray import storage, workspace
from musicray.index import TrackIndex

MANIFEST = "manifest.json"
ID_TIME_FORMAT = "%Y%m%dT%H%M%S%f"
T = TypeVar("T")
STALE_AFTER = timedelta(days=1)  # an incomplete snapshot this old belongs to a run that died


class SnapshotError(RuntimeError):
    """A snapshot is missing, incomplete or inconsistent; the message names it."""


def vectors_dir(root: str, snapshot_id: str) -> str:
    return storage.join(workspace.snapshot_dir(root, snapshot_id), "vectors")


def index_file(root: str, snapshot_id: str, model: str) -> str:
    return storage.join(workspace.snapshot_dir(root, snapshot_id), "index", f"{model}.voy")


def new_snapshot_id(now: datetime | None = None) -> str:
    """Sorts by start time (to the microsecond); the suffix keeps simultaneous starts apart."""
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime(ID_TIME_FORMAT)}-{uuid.uuid4().hex[:6]}"


def snapshot_time(snapshot_id: str) -> datetime | None:
    try:
        return datetime.strptime(snapshot_id.split("-")[0], ID_TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None  # not a snapshot folder of ours


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class Snapshot:
    root: str
    id: str
    manifest: dict

    @property
    def uri(self) -> str:
        return workspace.snapshot_dir(self.root, self.id)

    @property
    def models(self) -> list[str]:
        return list(self.manifest["models"])

    def vectors(self, columns: list[str] | None = None) -> pa.Table:
        """The Parquet rows of the snapshot (the files the manifest lists), sorted by track id."""
        table = self._vector_files().to_table(columns=columns)
        return table.sort_by("track_id") if "track_id" in table.column_names else table

    def vector_columns(self) -> list[str]:
        return self._vector_files().schema.names

    def _vector_files(self) -> pads.Dataset:
        files = [storage.join(self.uri, f) for f in self.manifest["files"]]
        fs, _ = storage.resolve(files[0])
        return pads.dataset([storage.resolve(f)[1] for f in files], filesystem=fs, format="parquet")

    def index(self, model: str) -> TrackIndex:
        if model not in self.manifest["models"]:
            raise KeyError(f"snapshot {self.id} has no model {model!r}; it has {', '.join(self.models)}")
        return TrackIndex.load(index_file(self.root, self.id, model))


def open_snapshot(root: str, snapshot_id: str) -> Snapshot:
    uri = storage.join(workspace.snapshot_dir(root, snapshot_id), MANIFEST)
    if not storage.exists(uri):
        raise SnapshotError(f"snapshot {snapshot_id} in {root} is missing or incomplete (no {MANIFEST})")
    return Snapshot(root, snapshot_id, json.loads(storage.read_text(uri)))


def latest_snapshot(root: str) -> Snapshot | None:
    """The snapshot ``LATEST`` names, or None before the first refresh."""
    snapshot_id = storage.read_pointer(workspace.snapshot_pointer(root))
    return None if snapshot_id is None else open_snapshot(root, snapshot_id)


def load_latest(root: str, load: Callable[[Snapshot], T]) -> tuple[Snapshot, T] | None:
    """``(snapshot, load(snapshot))`` for the snapshot ``LATEST`` names; None before the first refresh.

    A refresh that publishes while ``load`` runs may prune the snapshot being read (with
    ``--keep 1``): then ``LATEST`` has moved on, and the newer snapshot is loaded instead.
    Each retry needs a new publish, so this cannot spin.
    """
    while True:
        snapshot = latest_snapshot(root)
        if snapshot is None:
            return None
        try:
            return snapshot, load(snapshot)
        except (OSError, SnapshotError):
            if storage.read_pointer(workspace.snapshot_pointer(root)) == snapshot.id:
                raise  # not a prune race: the published snapshot itself is broken


def complete_snapshots(root: str) -> list[str]:
    """Ids of the snapshots whose manifest is written, oldest first."""
    return [s for s in storage.list_dirs(workspace.embeddings_dir(root))
            if snapshot_time(s) and storage.exists(storage.join(workspace.snapshot_dir(root, s), MANIFEST))]


# ---------------------------------------------------------------------------------------------
# Writing


def write_manifest(root: str, snapshot_id: str, manifest: dict) -> None:
    storage.write_text(storage.join(workspace.snapshot_dir(root, snapshot_id), MANIFEST), json.dumps(manifest, indent=2))


def write_index(root: str, snapshot_id: str, model: str, files: list[str], metric: str,
                num_threads: int = 1) -> dict:
    """Build and save one model's index from the snapshot's vectors; returns its manifest entry."""
    began = time.perf_counter()
    table = Snapshot(root, snapshot_id, {"files": files}).vectors(["track_id", model])
    column = table.column(model).combine_chunks()
    vectors = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
    index = TrackIndex.build(table.column("track_id").to_pylist(), vectors, metric, num_threads=num_threads)
    index.save(index_file(root, snapshot_id, model))
    return {**index.stats(), "index": f"index/{model}.voy", "build_seconds": round(time.perf_counter() - began, 3),
            "recall_at_10": index.sample_recall(vectors, k=10)}


def verify(root: str, snapshot_id: str, expected_tracks: int) -> Snapshot:
    """Load the snapshot as a reader would and check every count against the manifest.

    On any mismatch the manifest is removed (so the folder is not taken for complete) and
    ``SnapshotError`` names what disagrees.
    """
    snapshot = open_snapshot(root, snapshot_id)
    problems = []
    try:
        ids = snapshot.vectors(["track_id"]).column("track_id")
        if len(ids) != expected_tracks or snapshot.manifest["tracks"] != expected_tracks:
            problems.append(f"{len(ids)} rows and {snapshot.manifest['tracks']} in the manifest "
                            f"for {expected_tracks} tracks")
        if len(set(ids.to_pylist())) != len(ids):
            problems.append("duplicate track ids in the vectors")
        for model in snapshot.models:
            index = snapshot.index(model)
            if len(index) != len(ids) or sorted(index.track_ids) != ids.to_pylist():
                problems.append(f"index {model} holds {len(index)} tracks that differ from the vectors")
        tagger = snapshot.manifest.get("tagger")
        missing = [c["field"] for c in (tagger or {}).get("columns", {}).values()
                   if c["field"] not in snapshot.vector_columns()]
        if missing:
            problems.append(f"the tagger's predicted tag column(s) {missing} are missing from the vectors")
    except Exception as error:
        problems.append(f"does not load: {error}")
    if problems:
        storage.delete(storage.join(snapshot.uri, MANIFEST))
        raise SnapshotError(f"snapshot {snapshot_id} failed verification: {'; '.join(problems)}")
    return snapshot


def publish(root: str, snapshot_id: str) -> bool:
    """Point ``LATEST`` at a verified snapshot, unless a newer complete one is already published.

    Returns whether ``LATEST`` names ``snapshot_id`` afterwards.
    """
    pointer = workspace.snapshot_pointer(root)
    current = storage.read_pointer(pointer)
    if current and current > snapshot_id and current in complete_snapshots(root):
        return False
    storage.publish(pointer, snapshot_id)
    # A concurrent pruner may have removed what LATEST names between our read and our write.
    current = storage.read_pointer(pointer)
    if current and current not in complete_snapshots(root):
        newest = complete_snapshots(root)
        if newest:
            storage.publish(pointer, newest[-1])
    return storage.read_pointer(pointer) == snapshot_id


def prune(root: str, keep: int, now: datetime | None = None) -> list[str]:
    """Remove the snapshots older than the newest ``keep`` complete ones; returns the removed ids.

    The one ``LATEST`` names and anything newer than it are never removed; incomplete folders
    go only when older than both ``LATEST`` and ``STALE_AFTER`` (runs that died).
    """
    if keep < 1:
        raise ValueError(f"--keep must be >= 1, got {keep}")
    current = storage.read_pointer(workspace.snapshot_pointer(root))
    if current is None:
        return []
    now = now or datetime.now(timezone.utc)
    complete = complete_snapshots(root)
    kept = set(complete[-keep:]) | {current}
    removed = []
    for snapshot_id in storage.list_dirs(workspace.embeddings_dir(root)):
        started = snapshot_time(snapshot_id)
        if started is None or snapshot_id in kept or snapshot_id >= current:
            continue
        if snapshot_id in complete or now - started > STALE_AFTER:
            storage.delete(workspace.snapshot_dir(root, snapshot_id))
            removed.append(snapshot_id)
    return removed
