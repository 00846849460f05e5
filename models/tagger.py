"""Tagger: a track's content vector -> its tags, one head per tag column of the catalog.

    content vector (summary statistics [+ audio embedding]) -> standardise -> dropout
        -> [Linear -> GELU -> dropout] x layers -> one head per tag column:
           categorical  (genre, mood: one value per track)    Linear -> softmax over the values
           multi-label  (instrument: any number of values)   Linear -> a sigmoid per value

Why an MLP over the content vector rather than a network over the log-mel frames (the RNN seed's
genre classifier): the content vector is what every recommender reads, and once an audio encoder
is trained it ends with that encoder's embedding, which has already learned from the frames (with
the catalog's labels among its objectives). A small MLP on top trains in seconds, tags a batch
of feature rows without decoding any audio (the nightly refresh tags millions of tracks), and
needs only the label columns the catalog has, so it is retrained whenever labels change without
retraining the encoder. One trunk shared by the heads lets a sparse column (mood on a few tracks)
borrow what a dense one (genre on most) taught it.

A track without a value in a column is left out of that column's loss (``TaggerObjective``): a
target of -1 (categorical) or a row of -1 (multi-label).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.modules import Standardize

CATEGORICAL, MULTI_LABEL = "categorical", "multi-label"
KINDS = (CATEGORICAL, MULTI_LABEL)


@dataclass
class TaggerConfig:
    content_dim: int = 316  # set from the data
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.3
    input_dropout: float = 0.1  # on the standardised content: no single statistic decides a tag
    # One head per tag column, set from the data: {"column": name, "kind": CATEGORICAL or MULTI_LABEL,
    # "values": the column's vocabulary, in the order of the head's outputs}.
    tags: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if not self.tags:
            raise ValueError("a tagger needs at least one tag column (config field 'tags')")
        for head in self.tags:
            if set(head) != {"column", "kind", "values"}:
                raise ValueError(f"tagger head {head!r} must have exactly the keys column, kind and values")
            if head["kind"] not in KINDS:
                raise ValueError(f"tag column {head['column']!r}: kind must be one of {KINDS}, got {head['kind']!r}")
            if len(head["values"]) < 2:
                raise ValueError(f"tag column {head['column']!r} has {len(head['values'])} value(s); a head needs two")


# Hyperparameter search (``musicray tune --model tagger``), as in lstm_recommender.py.
SEARCH_SPACE = {
    "model": {
        "hidden": ("choice", [64, 128, 256, 512]),
        "layers": ("choice", [1, 2]),
        "dropout": ("uniform", 0.0, 0.5),
        "input_dropout": ("uniform", 0.0, 0.3),
    },
    "train": {
        "lr": ("loguniform", 3e-4, 1e-2),
        "batch_size": ("choice", [16, 32, 64]),
        "weight_decay": ("loguniform", 1e-6, 1e-2),
    },
}


class Tagger(nn.Module):
    Config = TaggerConfig

    def __init__(self, config: TaggerConfig):
        super().__init__()
        self.config = c = config
        self.standardize = Standardize(c.content_dim)
        layers: list[nn.Module] = [nn.Dropout(c.input_dropout)]
        width = c.content_dim
        for _ in range(c.layers):
            layers += [nn.Linear(width, c.hidden), nn.GELU(), nn.Dropout(c.dropout)]
            width = c.hidden
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(width, len(head["values"])) for head in c.tags)

    def forward(self, content: torch.Tensor) -> list[torch.Tensor]:
        """``content`` (N, content_dim) raw content vectors -> each head's logits (N, values)."""
        hidden = self.trunk(self.standardize(content))
        return [head(hidden) for head in self.heads]

    @torch.no_grad()
    def probabilities(self, content: torch.Tensor) -> list[torch.Tensor]:
        """Each head's probabilities (N, values): a distribution for a categorical column, an
        independent probability per value for a multi-label one."""
        return [logits.softmax(-1) if head["kind"] == CATEGORICAL else logits.sigmoid()
                for head, logits in zip(self.config.tags, self(content))]


class TaggerObjective(nn.Module):
    """The training loss DDP wraps: the sum over tag columns of each column's mean loss over the
    tracks that have a value in it (cross-entropy; binary cross-entropy per value for multi-label)."""

    def __init__(self, model: Tagger):
        super().__init__()
        self.model = model

    def forward(self, content: torch.Tensor, *targets: torch.Tensor) -> torch.Tensor:
        """``targets``: one per head, (B,) value index or -1 (categorical), (B, values) 0/1 or a row of
        -1 (multi-label)."""
        total = content.new_zeros(())
        for head, logits, target in zip(self.model.config.tags, self.model(content), targets):
            if head["kind"] == CATEGORICAL:
                known = target >= 0
                loss = F.cross_entropy(logits[known], target[known], reduction="sum")
            else:
                known = target[:, 0] >= 0
                loss = F.binary_cross_entropy_with_logits(logits[known], target[known].float(),
                                                          reduction="sum") / logits.shape[1]
            # A batch without a tagged track adds zero, still through the head (DDP wants every
            # parameter in the graph).
            total = total + loss / known.sum().clamp(min=1) + 0.0 * logits.sum()
        return total
