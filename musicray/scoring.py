"""Turning a trained recommender into catalog-wide scores, for evaluation and serving."""

from __future__ import annotations

import torch
from torch import nn

from musicray.content import TrackCatalog


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
        queries = self.model(self.track_vectors[items.clamp(min=0)], items >= 0, next_hours, weekdays)
        return queries[rows, lengths - 1] @ self.track_vectors.T / self.model.temperature
