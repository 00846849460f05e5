"""Building blocks shared by the recommenders.

Every recommender scores tracks by the dot product of a query (from the listening
history) with a track vector, and every track vector comes from ``TrackEncoder``:

    track vector = [ MLP(standardised audio features) + ID embedding ,  bias ]
    bias         = Linear(standardised audio features) + ID bias

The last coordinate is the track's bias, a learned prior (how likely it is to be played at
all); queries carry a constant 1 in that slot (``with_bias_slot``), so a plain dot product
scores query and bias together.

A track outside the training vocabulary (id 0: new releases, tracks nobody has played) has no
learned ID embedding; ``CollaborativeEmbedding`` predicts one from its audio instead (a
content-to-collaborative mapping, as van den Oord et al. 2013 regress latent factors from audio),
so a cold track lands where the listeners of similar-sounding tracks are rather than at the
audio-only origin, where the learned biases of played tracks outrank it. Two signals train the
mapping: a regression onto the learned embeddings of the played tracks in each batch, and, as in
DropoutNet (Volkovs et al. 2017), the ranking loss itself, because training replaces a random
``id_dropout`` share of learned embeddings by their prediction.
"""

from __future__ import annotations

import torch
from torch import nn


class Standardize(nn.Module):
    """z-scores raw audio features; the statistics travel with the weights in the state_dict."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, content: torch.Tensor) -> None:
        self.mean.copy_(content.mean(dim=0))
        self.std.copy_(content.std(dim=0).clamp(min=1e-3))

    def forward(self, content: torch.Tensor) -> torch.Tensor:
        return (content - self.mean) / self.std


def fit_standardizers(model: nn.Module, content: torch.Tensor) -> None:
    """Set every ``Standardize`` of a fresh model from the training catalog's features."""
    for module in model.modules():
        if isinstance(module, Standardize):
            module.fit(content)


class CollaborativeEmbedding(nn.Module):
    """A learned vector per training-vocabulary track; for id 0 (unknown) its prediction from audio.

    In training a random ``dropout`` share of ids is replaced by the prediction, as if the track were cold.
    """

    def __init__(self, content_dim: int, n_ids: int, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.table = nn.Embedding(n_ids + 1, dim, padding_idx=0)
        nn.init.normal_(self.table.weight, std=0.01)
        with torch.no_grad():
            self.table.weight[0].zero_()
        self.mapping = nn.Sequential(nn.Linear(content_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.dropout = dropout

    def forward(self, content: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``content`` (..., content_dim) standardised features; ``ids`` (...) vocabulary ids, 0 = unknown."""
        known = ids > 0
        if self.training and self.dropout > 0:
            known = known & (torch.rand(ids.shape, device=ids.device) >= self.dropout)
        return torch.where(known.unsqueeze(-1), self.table(ids), self.mapping(content))

    def mapping_loss(self, content: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Mean squared distance between the predicted and the learned embedding of each known track."""
        known = ids > 0
        if not known.any():
            return self.mapping(content[:0]).sum()  # zero, with the mapping still in the graph
        return (self.mapping(content[known]) - self.table(ids[known]).detach()).square().sum(-1).mean()


class TrackEncoder(nn.Module):
    """Track vectors of size ``dim + 1``: ``dim`` coordinates plus the bias in the last one."""

    def __init__(self, content_dim: int, n_ids: int, dim: int, hidden: int, id_dropout: float):
        super().__init__()
        self.standardize = Standardize(content_dim)
        self.content = nn.Sequential(nn.Linear(content_dim, hidden), nn.GELU(), nn.Linear(hidden, dim + 1))
        self.ids = CollaborativeEmbedding(content_dim, n_ids, dim + 1, hidden, id_dropout)

    def forward(self, content: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``content`` (..., content_dim) raw features; ``ids`` (...) vocabulary ids, 0 = unknown."""
        features = self.standardize(content)
        return self.content(features) + self.ids(features, ids)

    def mapping_loss(self, content: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.ids.mapping_loss(self.standardize(content), ids)


def with_bias_slot(query: torch.Tensor) -> torch.Tensor:
    """Append the constant 1 that multiplies each track's bias."""
    return torch.nn.functional.pad(query, (0, 1), value=1.0)


class ContextEmbedding(nn.Module):
    """Hour of day and day of week of the play being predicted; -1 (unknown) embeds to zero."""

    def __init__(self, dim: int):
        super().__init__()
        self.hour = nn.Embedding(25, dim, padding_idx=24)
        self.weekday = nn.Embedding(8, dim, padding_idx=7)
        # Start near zero: nn.Embedding's N(0, 1) rows would swamp the queries they are added to
        # (norm ~ sqrt(dim)), and on the demo that cost the LSTM a fifth of its validation MRR.
        for table in (self.hour, self.weekday):
            nn.init.normal_(table.weight, std=0.01)
            with torch.no_grad():
                table.weight[table.padding_idx].zero_()

    def forward(self, hours: torch.Tensor, weekdays: torch.Tensor) -> torch.Tensor:
        hours = torch.where(hours < 0, torch.full_like(hours, 24), hours)
        weekdays = torch.where(weekdays < 0, torch.full_like(weekdays, 7), weekdays)
        return self.hour(hours) + self.weekday(weekdays)


def step_context(hours: torch.Tensor, weekdays: torch.Tensor, lengths: torch.Tensor,
                 next_hour: torch.Tensor | None = None,
                 next_weekday: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The hour and weekday each step of a history is read with: those of the play it predicts.

    ``hours`` and ``weekdays`` (B, L) belong to each history's plays (-1 padded after ``lengths``).
    Step t predicts play t + 1, so it gets play t + 1's context; the last step (``lengths - 1``)
    predicts the play after the history and gets ``next_hour`` / ``next_weekday`` (B,), or -1
    (unknown) without them. Returns (B, L) each, -1 past the last step.

    Training (``NextTrackObjective``), evaluation and serving all go through this one function
    (the latter two by ``musicray.sessions.encode_histories``), so a query at step t means the
    same thing wherever it is computed.
    """
    steps = torch.arange(hours.shape[1], device=hours.device)
    last = steps[None, :] == (lengths - 1)[:, None]  # (B, L); an empty history has no last step

    def shifted(values: torch.Tensor, next_value: torch.Tensor | None) -> torch.Tensor:
        following = torch.cat([values[:, 1:], torch.full_like(values[:, :1], -1)], dim=1)
        after = -1 if next_value is None else next_value.to(values.dtype)[:, None]
        return torch.where(last, after, following)

    return shifted(hours, next_hour), shifted(weekdays, next_weekday)


def recency_pool(vectors: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
    """At every step t, the mean of the vectors at steps <= t weighted by ``decay ** (t - s)``.

    ``vectors`` (B, L, d), ``mask`` (B, L) true at real steps. Returns (B, L, d).
    """
    steps = torch.arange(vectors.shape[1], device=vectors.device)
    age = (steps[:, None] - steps[None, :]).float()  # (t, s)
    weights = torch.where(age >= 0, decay ** age.clamp(min=0), torch.zeros_like(age))
    weights = weights[None] * mask[:, None, :].float()  # (B, t, s)
    return weights @ vectors / weights.sum(-1, keepdim=True).clamp(min=1e-9)
