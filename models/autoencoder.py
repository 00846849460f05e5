"""Autoencoder recommender: a latent track vector learned from audio by denoising reconstruction.

    audio features ─> + noise, feature dropout ─> encoder ─> latent z ─> decoder ─> features
    track vector = normalise(z + ID embedding)        (z alone: the audio-only "more like this" space)
    query        = normalise(recency-weighted mean of the history's track vectors)
    score        = cosine(query, track vector) / temperature

Two losses train it: reconstruction of the clean features (so z captures timbre, mood and
style from audio alone) and next-track prediction on the sessions (so neighbourhoods in the
space also reflect what listeners play together). Recommendation is by latent similarity to
the user's recent tracks; ``latent()`` serves style/mood neighbours for any track, played or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.modules import CollaborativeEmbedding, Standardize, recency_pool


@dataclass
class AutoencoderConfig:
    content_dim: int = 316
    n_ids: int = 0  # training vocabulary size; set from the data
    dim: int = 32  # latent size
    hidden: int = 256
    id_dropout: float = 0.25
    noise_std: float = 0.3  # Gaussian noise on standardised features
    feature_dropout: float = 0.2  # fraction of features zeroed in the corrupted input
    reconstruction_weight: float = 1.0
    recency_decay: float = 0.7
    temperature: float = 0.1


# Hyperparameter search (``musicray tune --model autoencoder``), as in lstm_recommender.py.
SEARCH_SPACE = {
    "model": {
        "dim": ("choice", [16, 32, 64]),
        "hidden": ("choice", [128, 256, 512]),
        "noise_std": ("uniform", 0.1, 0.5),
        "feature_dropout": ("uniform", 0.0, 0.4),
        "reconstruction_weight": ("loguniform", 0.1, 3.0),
        "temperature": ("loguniform", 0.05, 0.3),
    },
    "train": {
        "lr": ("loguniform", 5e-4, 1e-2),
        "batch_size": ("choice", [32, 64, 128]),
        "weight_decay": ("loguniform", 1e-6, 1e-3),
    },
}


class AutoencoderRecommender(nn.Module):
    Config = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = c = config
        self.temperature = c.temperature
        self.standardize = Standardize(c.content_dim)
        self.encoder = nn.Sequential(nn.Linear(c.content_dim, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.dim))
        self.decoder = nn.Sequential(nn.Linear(c.dim, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.content_dim))
        self.ids = CollaborativeEmbedding(c.content_dim, c.n_ids, c.dim, c.hidden, c.id_dropout)

    def latent(self, content: torch.Tensor) -> torch.Tensor:
        """The audio-only latent vector of each track."""
        return self.encoder(self.standardize(content))

    def track_vectors(self, content: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.latent(content) + self.ids(self.standardize(content), ids), dim=-1)

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor, next_hours: torch.Tensor,
                next_weekdays: torch.Tensor) -> torch.Tensor:
        return F.normalize(recency_pool(item_vectors, mask, self.config.recency_decay), dim=-1)

    def auxiliary_loss(self, content: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Denoising reconstruction (corrupt the standardised features, reconstruct the clean ones),
        plus the cold-start mapping's regression (``CollaborativeEmbedding``)."""
        c = self.config
        clean = self.standardize(content)
        noisy = clean + c.noise_std * torch.randn_like(clean)
        noisy = noisy * (torch.rand_like(clean) >= c.feature_dropout)
        return c.reconstruction_weight * F.mse_loss(self.decoder(self.encoder(noisy)), clean) + \
            self.ids.mapping_loss(clean, ids)
