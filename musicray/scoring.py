"""Turning a trained recommender into catalog-wide scores, for evaluation and serving."""

from __future__ import annotations

import torch
from torch import nn

from musicray.content import TrackCatalog
from musicray.sessions import EncodedHistories


def session_queries(model: nn.Module, track_vectors: torch.Tensor, histories: EncodedHistories) -> torch.Tensor:
    """The query after each history's last play: (B, dim + 1), scored as ``query @ track_vectors.T``.

    ``track_vectors`` (N, dim + 1) of the catalog; ``histories`` from ``musicray.sessions.encode_histories``.
    Evaluation and serving both ask the model through this one function.
    """
    queries = model(track_vectors[histories.items], histories.mask, histories.hours, histories.weekdays)
    return queries[torch.arange(len(queries), device=queries.device), histories.lengths - 1]


class ModelScorer:
    """Scores every catalog track for a batch of histories (``musicray.sessions.Examples``)."""

    def __init__(self, name: str, model: nn.Module, catalog: TrackCatalog, vocabulary: list[str],
                 device: str = "cpu"):
        self.name = name
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.catalog_content = catalog.content.to(self.device)
        with torch.no_grad():
            ids = catalog.vocabulary_ids(vocabulary).to(self.device)
            self.track_vectors = self.model.track_vectors(self.catalog_content, ids)

    @torch.no_grad()
    def score(self, batch) -> torch.Tensor:
        queries = session_queries(self.model, self.track_vectors, batch.histories().to(self.device))
        return queries @ self.track_vectors.T / self.model.temperature
