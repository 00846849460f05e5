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
import torch

from musicray import storage, workspace
from musicray.checkpoints import load_trained

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


class EmbeddingLookup:
    """A run's embeddings by feature row (track_id, extracted_at), held in memory for lookups."""

    def __init__(self, root: str, run_id: str):
        self.root, self.run_id = root, run_id
        table = read_embeddings(root, run_id)
        keys = zip(table.column("track_id").to_pylist(), table.column("extracted_at").cast(pa.int64()).to_pylist())
        self.position = {key: i for i, key in enumerate(keys)}  # a re-embedded row: the last one wins
        column = table.column("embedding").combine_chunks()
        self.vectors = column.flatten().to_numpy().reshape(len(column), column.type.list_size)

    def rows(self, rows: pa.Table) -> np.ndarray:
        """(len(rows), dim) float32: the embedding of each feature row (track_id, extracted_at).

        A row the run has not embedded is an error naming the run and the first such tracks.
        """
        stamps = rows.column("extracted_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
        wanted = list(zip(rows.column("track_id").to_pylist(), stamps))
        found = [self.position.get(key) for key in wanted]
        missing = [key[0] for key, i in zip(wanted, found) if i is None]
        if missing:
            raise FileNotFoundError(f"audio encoder run {self.run_id} in {self.root} has not embedded {len(missing)} "
                                    f"of {len(wanted)} tracks (e.g. {missing[:3]}): run `musicray extract` again, "
                                    f"which embeds new and changed tracks")
        return np.ascontiguousarray(self.vectors[np.asarray(found, dtype=np.int64)], dtype=np.float32)


def embedding_matrix(root: str, run_id: str, rows: pa.Table) -> np.ndarray:
    """(len(rows), dim) float32: the run's embedding of each feature row (see ``EmbeddingLookup.rows``)."""
    return EmbeddingLookup(root, run_id).rows(rows)


class TrackAudioEmbedder:
    """Feature rows (Arrow: track_id, extracted_at, crop_frames, logmel) -> their embedding rows.

    Run by the extract job on a Ray Data actor pool, so each actor loads the encoder once.
    """

    def __init__(self, root: str, run_id: str, device: str = "cpu"):
        if device == "cpu":
            torch.set_num_threads(1)  # one actor per core
        self.device = torch.device(device)
        self.encoder = load_trained(root, MODEL_NAME, run_id, map_location=device).model.to(self.device).eval()
        self.schema = embeddings_schema(self.encoder.config.dim)

    def __call__(self, batch: pa.Table) -> pa.Table:
        n_mels = self.encoder.config.n_mels
        n = batch.num_rows
        flat = batch.column("logmel").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        logmel = torch.from_numpy(flat.astype(np.float32).reshape(n, n_mels, -1)).to(self.device)
        lengths = torch.tensor(batch.column("crop_frames").to_pylist(), dtype=torch.long)
        vectors = self.encoder.track_embeddings(logmel, lengths).cpu().numpy()
        if not np.isfinite(vectors).all():
            raise ValueError(f"the audio encoder gave non-finite embeddings for tracks "
                             f"{batch.column('track_id').to_pylist()[:3]}...")
        return pa.Table.from_arrays(
            [batch.column("track_id"), batch.column("extracted_at").cast(self.schema.field("extracted_at").type),
             pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])],
            schema=self.schema)
