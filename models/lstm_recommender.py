"""LSTM recommender: the next track from the session so far, aware of when it is played.

At every step the LSTM reads the current track's vector together with the context of the
play to predict (hour of day, day of week), so "what comes next at 23:00 on a Sunday" can
differ from the same history at 08:00 on a Monday. The query at step t is scored against
every track vector (``TrackEncoder``: audio + ID), so unplayed tracks can be recommended.

    track vectors ──┐
    context(t+1) ───┴─ concat ─> LSTM ───────────> concat context ─> Linear ─┐
    track vector(t) ─> Linear (first-order transition) ────────────────────────┴─ + ─> query(t)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.modules import ContextEmbedding, TrackEncoder, with_bias_slot


@dataclass
class LSTMConfig:
    content_dim: int = 316
    n_ids: int = 0  # training vocabulary size; set from the data
    dim: int = 128  # track / query vector size
    content_hidden: int = 256
    id_dropout: float = 0.1
    hidden: int = 128
    layers: int = 1
    dropout: float = 0.5  # on the demo's validation split 0.5 beat 0.1 and 0.3 (MRR@20 +0.01)


# Hyperparameter search (``musicray tune --model lstm``): model config fields under "model", training
# settings (RecommenderSettings in ray_jobs/tasks/recommender.py) under "train"; ray_jobs/tune.py turns each
# (kind, *arguments) into a Ray Tune distribution: choice [values], uniform / loguniform lo hi.
SEARCH_SPACE = {
    "model": {
        "dim": ("choice", [64, 128, 256]),
        "hidden": ("choice", [64, 128, 256]),
        "dropout": ("uniform", 0.1, 0.6),
        "id_dropout": ("uniform", 0.0, 0.3),
    },
    "train": {
        "lr": ("loguniform", 5e-4, 1e-2),
        "batch_size": ("choice", [32, 64, 128]),
        "weight_decay": ("loguniform", 1e-6, 1e-3),
    },
}


class LSTMRecommender(nn.Module):
    Config = LSTMConfig
    temperature = 1.0

    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = c = config
        self.tracks = TrackEncoder(c.content_dim, c.n_ids, c.dim, c.content_hidden, c.id_dropout)
        self.context = ContextEmbedding(c.dim)
        self.lstm = nn.LSTM(2 * c.dim + 1, c.hidden, c.layers, batch_first=True,
                            dropout=c.dropout if c.layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.hidden + c.dim, c.dim))
        # A direct path from the current track: a factorised first-order transition (as in FPMC),
        # which the recurrent state would otherwise have to learn slowly.
        self.transition = nn.Linear(c.dim + 1, c.dim, bias=False)

    def track_vectors(self, content: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.tracks(content, ids)

    def auxiliary_loss(self, content: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.tracks.mapping_loss(content, ids)

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor, next_hours: torch.Tensor,
                next_weekdays: torch.Tensor) -> torch.Tensor:
        """(B, L, dim + 1) history vectors -> (B, L, dim + 1) queries; step t sees steps <= t only."""
        context = self.context(next_hours, next_weekdays)
        hidden, _ = self.lstm(torch.cat([item_vectors, context], dim=-1))
        return with_bias_slot(self.head(torch.cat([hidden, context], dim=-1)) + self.transition(item_vectors))
