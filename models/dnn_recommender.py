"""Deep two-tower recommender (in the style of YouTube DNN, Covington et al., 2016).

    user tower:  recency-weighted mean of history vectors ┐
                 the latest track's vector                ├─ concat ─> MLP ─> user vector
                 context (hour of day, day of week)       ┘
    track tower: TrackEncoder (audio features + ID)                     ─> track vector

score = user vector · track vector (the last coordinate carries the track's bias). The user is described by what they played and when,
not by a user id, so a new user with a short history gets recommendations straight away.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.modules import ContextEmbedding, TrackEncoder, recency_pool, with_bias_slot


@dataclass
class DNNConfig:
    content_dim: int = 316
    n_ids: int = 0  # training vocabulary size; set from the data
    dim: int = 64
    content_hidden: int = 256
    id_dropout: float = 0.25
    hidden: int = 256
    recency_decay: float = 0.8  # weight of a play k steps back: decay ** k
    dropout: float = 0.1


# Hyperparameter search (``musicray tune --model dnn``), as in lstm_recommender.py.
SEARCH_SPACE = {
    "model": {
        "dim": ("choice", [32, 64, 128]),
        "hidden": ("choice", [128, 256, 512]),
        "recency_decay": ("uniform", 0.5, 0.95),
        "dropout": ("uniform", 0.0, 0.4),
        "id_dropout": ("uniform", 0.1, 0.4),
    },
    "train": {
        "lr": ("loguniform", 5e-4, 1e-2),
        "batch_size": ("choice", [32, 64, 128]),
        "weight_decay": ("loguniform", 1e-6, 1e-3),
    },
}


class DNNRecommender(nn.Module):
    Config = DNNConfig
    temperature = 1.0

    def __init__(self, config: DNNConfig):
        super().__init__()
        self.config = c = config
        self.tracks = TrackEncoder(c.content_dim, c.n_ids, c.dim, c.content_hidden, c.id_dropout)
        self.context = ContextEmbedding(c.dim)
        self.user = nn.Sequential(
            nn.Linear(3 * c.dim + 2, c.hidden), nn.GELU(), nn.Dropout(c.dropout),
            nn.Linear(c.hidden, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.dim),
        )

    def track_vectors(self, content: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.tracks(content, ids)

    def auxiliary_loss(self, content: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.tracks.mapping_loss(content, ids)

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor, next_hours: torch.Tensor,
                next_weekdays: torch.Tensor) -> torch.Tensor:
        history = recency_pool(item_vectors, mask, self.config.recency_decay)
        context = self.context(next_hours, next_weekdays)
        return with_bias_slot(self.user(torch.cat([history, item_vectors, context], dim=-1)))
