"""The audio encoder's embedding of every track, stored beside the features.

    <root>/audio_embeddings/<run>/*.parquet     track_id, extracted_at, embedding (float32 x dim)

One folder per encoder run, one row per feature row it embedded: a row is current while the
track's feature row (``extracted_at``) is, so extraction embeds only new or changed tracks. A
recommender or tagger records the encoder run whose embeddings are part of its content input
and keeps reading that run's folder after the encoder is retrained. (A separate table for now: the
features table is Parquet, where adding a column rewrites every part file.)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from musicray import storage, workspace

MODEL_NAME = "audio"


def embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("extracted_at", pa.timestamp("us", tz="UTC"), nullable=False),  # of the feature row embedded
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
    ])


def latest_audio_run(root: str) -> str | None:
    """The encoder run ``<root>/models/audio/LATEST`` names, or None before one is trained."""
    return storage.read_pointer(workspace.model_pointer(root, MODEL_NAME))


def read_embeddings(root: str, run_id: str) -> pa.Table:
    """Every row the run embedded (track_id, extracted_at, embedding); older rows of a track included."""
    directory = workspace.audio_embeddings_dir(root, run_id)
    files = storage.list_files(directory, suffixes=(".parquet",)) if storage.exists(directory) else []
    if not files:
        return embeddings_schema(1).empty_table()
    fs, _ = storage.resolve(files[0].uri)
    return pads.dataset([storage.resolve(f.uri)[1] for f in files], filesystem=fs, format="parquet").to_table()


def embedding_matrix(root: str, run_id: str, rows: pa.Table) -> np.ndarray:
    """(len(rows), dim) float32: the run's embedding of each feature row (track_id, extracted_at).

    A row the run has not embedded is an error naming the run and the first such tracks.
    """
    table = read_embeddings(root, run_id)
    key = rows.select(["track_id", "extracted_at"]).cast(embeddings_schema(1).remove(2))
    position = {(t, s): i for i, (t, s) in enumerate(zip(table.column("track_id").to_pylist(),
                                                        table.column("extracted_at").cast(pa.int64()).to_pylist()))}
    wanted = list(zip(key.column("track_id").to_pylist(), key.column("extracted_at").cast(pa.int64()).to_pylist()))
    found = [position.get(k) for k in wanted]
    missing = [k[0] for k, i in zip(wanted, found) if i is None]
    if missing:
        raise FileNotFoundError(f"audio encoder run {run_id} in {root} has not embedded {len(missing)} of "
                                f"{len(wanted)} tracks (e.g. {missing[:3]}): run `musicray extract` again, "
                                f"which embeds new and changed tracks")
    column = table.column("embedding").combine_chunks()
    matrix = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
    return np.ascontiguousarray(matrix[np.asarray(found, dtype=np.int64)], dtype=np.float32)
