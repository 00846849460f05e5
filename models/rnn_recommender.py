"""RNN recommender in the style of GRU4Rec (Hidasi et al., 2016): a GRU (or a vanilla RNN)
over the session's track vectors predicts the next track; no context features.

    track vectors ─> GRU | RNN ─> Linear ─┐
    track vector(t) ─> Linear ────────────┴─ + ─> query(t)      (a first-order transition path)

The output is scored against every track vector (``TrackEncoder``: audio + ID) instead of
GRU4Rec's per-item output weights, so tracks that nobody has played can be recommended.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.modules import TrackEncoder, with_bias_slot


@dataclass
class RNNConfig:
    content_dim: int = 316
    n_ids: int = 0  # training vocabulary size; set from the data
    dim: int = 128
    content_hidden: int = 256
    id_dropout: float = 0.1
    cell: str = "gru"  # "gru" or "rnn" (tanh)
    hidden: int = 128
    layers: int = 1
    dropout: float = 0.5  # on the demo's validation split 0.5 beat 0.1 and 0.3 (MRR@20 +0.01)


# Hyperparameter search (``musicray tune --model rnn``), as in lstm_recommender.py.
SEARCH_SPACE = {
    "model": {
        "cell": ("choice", ["gru", "rnn"]),
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


class RNNRecommender(nn.Module):
    Config = RNNConfig
    temperature = 1.0

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = c = config
        cells = {"gru": nn.GRU, "rnn": nn.RNN}
        if c.cell not in cells:
            raise ValueError(f"RNNConfig.cell must be one of {sorted(cells)}, got {c.cell!r}")
        self.tracks = TrackEncoder(c.content_dim, c.n_ids, c.dim, c.content_hidden, c.id_dropout)
        self.rnn = cells[c.cell](c.dim + 1, c.hidden, c.layers, batch_first=True,
                                 dropout=c.dropout if c.layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.hidden, c.dim))
        self.transition = nn.Linear(c.dim + 1, c.dim, bias=False)  # first-order path, as in the LSTM

    def track_vectors(self, content: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.tracks(content, ids)

    def auxiliary_loss(self, content: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.tracks.mapping_loss(content, ids)

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor, next_hours: torch.Tensor,
                next_weekdays: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(item_vectors)
        return with_bias_slot(self.head(hidden) + self.transition(item_vectors))
