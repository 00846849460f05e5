"""Turning a trained recommender into catalog-wide scores, for evaluation and serving."""

from __future__ import annotations

import torch
from torch import nn

from musicray.content import TrackCatalog


def session_queries(model: nn.Module, history: torch.Tensor, lengths: torch.Tensor, next_hours: torch.Tensor,
                    weekdays: torch.Tensor) -> torch.Tensor:
    """The query vector after each history's last play: (B, dim + 1), scored as ``query @ track_vectors.T``.

    ``history`` (B, L, dim + 1) holds the track vectors of each history, oldest first, padded after
    its ``lengths``; ``next_hours`` and ``weekdays`` (B, L) the context of the play each step predicts
    (-1 = unknown). Evaluation and serving both ask the model through this one function.
    """
    steps = torch.arange(history.shape[1], device=history.device)
    mask = steps[None, :] < lengths[:, None]
    queries = model(history, mask, next_hours, weekdays)
    return queries[torch.arange(len(history), device=history.device), lengths - 1]


class ModelScorer:
    """Scores every catalog track for a batch of histories (``musicray.evaluation.Examples``)."""

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
        items = batch.items.to(self.device)
        lengths = batch.lengths.to(self.device)
        rows = torch.arange(len(items), device=self.device)
        # Step t predicts play t+1: its context is the next play's hour, and the target's at the end.
        next_hours = torch.roll(batch.hours.to(self.device), shifts=-1, dims=1)
        next_hours[rows, lengths - 1] = batch.target_hour.to(self.device)
        weekdays = batch.target_weekday.to(self.device)[:, None].expand_as(items)
        queries = session_queries(self.model, self.track_vectors[items.clamp(min=0)], lengths, next_hours, weekdays)
        return queries @ self.track_vectors.T / self.model.temperature
