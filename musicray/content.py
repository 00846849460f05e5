"""The catalog as model input: each track's compact audio-content vector.

The vector concatenates the per-track summaries of the features table (per-band log-mel
mean and spread, MFCC mean/std, chroma, spectral statistics, tempo) and, once an audio encoder
is trained, the track's audio embedding (``musicray.audio_embeddings``); models standardise it
themselves. Reading only these columns keeps it cheap for millions of tracks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from musicray.audio_embeddings import embedding_matrix, latest_audio_run
from musicray.features import SCALAR_FEATURES
from musicray.schemas import read_features

VECTOR_COLUMNS = ("logmel_mean", "logmel_std", "mfcc_mean", "mfcc_std", "chroma_mean")
CONTENT_COLUMNS = (*VECTOR_COLUMNS, *SCALAR_FEATURES)
LATEST = "latest"  # TrackCatalog.from_workspace: the audio encoder run LATEST names, if any


def content_matrix(table: pa.Table) -> np.ndarray:
    parts = [np.stack(table.column(c).to_numpy(zero_copy_only=False)).astype(np.float32) for c in VECTOR_COLUMNS]
    parts += [table.column(c).to_numpy(zero_copy_only=False).astype(np.float32)[:, None] for c in SCALAR_FEATURES]
    return np.nan_to_num(np.concatenate(parts, axis=1))


@dataclass
class TrackCatalog:
    track_ids: list[str]
    content: torch.Tensor  # (N, content_dim) float32
    audio_run: str | None = None  # the encoder run whose embeddings end each content vector

    def __post_init__(self):
        self.index = {track_id: i for i, track_id in enumerate(self.track_ids)}

    def __len__(self) -> int:
        return len(self.track_ids)

    @classmethod
    def from_workspace(cls, root: str, audio_run: str | None = LATEST) -> "TrackCatalog":
        """Every track's content vector. ``audio_run``: the audio encoder run whose embeddings the
        vectors end with; ``LATEST`` (training a new model) takes the one LATEST names, if any, and
        a trained model passes the run it recorded (None: summary statistics alone)."""
        table = read_features(root, columns=["track_id", "extracted_at", *CONTENT_COLUMNS])
        if table.num_rows == 0:
            raise ValueError(f"the workspace {root} has no features yet: run `musicray extract` first")
        if audio_run == LATEST:
            audio_run = latest_audio_run(root)
        content = content_matrix(table)
        if audio_run:
            content = np.concatenate([content, embedding_matrix(root, audio_run, table)], axis=1)
        return cls(table.column("track_id").to_pylist(), torch.from_numpy(content), audio_run)

    def vocabulary_ids(self, vocabulary: list[str]) -> torch.Tensor:
        return vocabulary_ids(self.track_ids, vocabulary_positions(vocabulary))


def vocabulary_positions(vocabulary: list[str]) -> dict[str, int]:
    """A model's training vocabulary as track id -> id-embedding row (1-based; row 0 = unplayed)."""
    return {track_id: i + 1 for i, track_id in enumerate(vocabulary)}


def vocabulary_ids(track_ids: list[str], positions: dict[str, int]) -> torch.Tensor:
    """Each track's id-embedding row, 0 for a track the model never saw played (audio only)."""
    return torch.tensor([positions.get(t, 0) for t in track_ids], dtype=torch.long)
