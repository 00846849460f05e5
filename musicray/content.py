"""The catalog as model input: each track's compact audio-content vector.

The vector concatenates the per-track summaries of the features table (per-band log-mel
mean and spread, MFCC mean/std, chroma, spectral statistics, tempo); models standardise it
themselves. Reading only these columns keeps it cheap for millions of tracks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from musicray.features import SCALAR_FEATURES
from musicray.schemas import read_features

VECTOR_COLUMNS = ("logmel_mean", "logmel_std", "mfcc_mean", "mfcc_std", "chroma_mean")
CONTENT_COLUMNS = (*VECTOR_COLUMNS, *SCALAR_FEATURES)


def content_matrix(table: pa.Table) -> np.ndarray:
    parts = [np.stack(table.column(c).to_numpy(zero_copy_only=False)).astype(np.float32) for c in VECTOR_COLUMNS]
    parts += [table.column(c).to_numpy(zero_copy_only=False).astype(np.float32)[:, None] for c in SCALAR_FEATURES]
    return np.nan_to_num(np.concatenate(parts, axis=1))


@dataclass
class TrackCatalog:
    track_ids: list[str]
    content: torch.Tensor  # (N, content_dim) float32

    def __post_init__(self):
        self.index = {track_id: i for i, track_id in enumerate(self.track_ids)}

    def __len__(self) -> int:
        return len(self.track_ids)

    @classmethod
    def from_workspace(cls, root: str) -> "TrackCatalog":
        table = read_features(root, columns=["track_id", *CONTENT_COLUMNS])
        if table.num_rows == 0:
            raise ValueError(f"the workspace {root} has no features yet: run `musicray extract` first")
        return cls(table.column("track_id").to_pylist(), torch.from_numpy(content_matrix(table)))

    def vocabulary_ids(self, vocabulary: list[str]) -> torch.Tensor:
        return vocabulary_ids(self.track_ids, vocabulary_positions(vocabulary))


def vocabulary_positions(vocabulary: list[str]) -> dict[str, int]:
    """A model's training vocabulary as track id -> id-embedding row (1-based; row 0 = unplayed)."""
    return {track_id: i + 1 for i, track_id in enumerate(vocabulary)}


def vocabulary_ids(track_ids: list[str], positions: dict[str, int]) -> torch.Tensor:
    """Each track's id-embedding row, 0 for a track the model never saw played (audio only)."""
    return torch.tensor([positions.get(t, 0) for t in track_ids], dtype=torch.long)
