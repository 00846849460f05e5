"""Next-track loss over the whole catalog, exact or sampled.

Full softmax scores every catalog track for every step: exact, and cheap while the catalog
fits (the default threshold is 200k tracks). Above it, a sampled softmax scores each step's
target against a shared set of negatives drawn from popularity ** 0.75, with the logQ
correction (Bengio & Senécal 2008; Yi et al. 2019) so the estimate stays unbiased towards
popular tracks; memory then grows with batch and sample size, not with the catalog.

Either way the candidates are the tracks played in training (id > 0) only. A track nobody played
in the training period is no evidence against itself (it may not have been released yet); as a
negative in every step, its audio would learn "never played", and every new release that sounds
like it would be ranked last: on the demo that held cold-target HR@20 of the LSTM at 0.04.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.modules import step_context


class NegativeSampler:
    def __init__(self, play_counts: torch.Tensor, n_negatives: int, alpha: float = 0.75):
        probs = play_counts.float().clamp(min=0) ** alpha  # unplayed tracks are never negatives
        self.probs = probs / probs.sum()
        self.n_negatives = n_negatives
        self.log_q = torch.log(n_negatives * self.probs)  # log of each track's expected count in a sample

    def sample(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(negatives (S,), log_q (N,))."""
        negatives = torch.multinomial(self.probs, self.n_negatives, replacement=True)
        return negatives.to(device), self.log_q.to(device)


class NextTrackObjective(nn.Module):
    """The training objective around a recommender.

    A module rather than a function so that DistributedDataParallel, which wraps it, sees
    every parameter use (track vectors and queries) inside one ``forward``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor, hours: torch.Tensor, weekdays: torch.Tensor,
                content: torch.Tensor, ids: torch.Tensor, negatives: torch.Tensor | None = None,
                log_q: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy of every next track of a batch of sessions (teacher forcing).

        ``items`` (B, L) catalog indices of each session's plays, -1 padded; ``hours`` and
        ``weekdays`` (B, L) of each play; ``content`` (N, D) and ``ids`` (N,) describe the
        catalog. With ``negatives`` (S,) and ``log_q`` (N,) the softmax is sampled. Each step
        reads the context of the play it predicts (``step_context``), as in evaluation and serving.
        """
        model = self.model
        inputs, targets = items[:, :-1], items[:, 1:]
        step_hours, step_weekdays = step_context(hours, weekdays, (items >= 0).sum(1))
        step_mask = targets >= 0
        if negatives is None:
            vectors = model.track_vectors(content, ids)
            index = items.clamp(min=0)
        else:
            needed, inverse = torch.unique(torch.cat([items.clamp(min=0).flatten(), negatives]), return_inverse=True)
            vectors = model.track_vectors(content[needed], ids[needed])
            index = inverse[: items.numel()].view_as(items)
        queries = model(vectors[index[:, :-1]], inputs >= 0, step_hours[:, :-1], step_weekdays[:, :-1])[step_mask]
        target_ids = targets[step_mask]

        if negatives is None:
            logits = (queries @ vectors.T / model.temperature).masked_fill(ids[None, :] == 0, float("-inf"))
            loss = F.cross_entropy(logits, target_ids)
        else:
            positive = (queries * vectors[index[:, 1:][step_mask]]).sum(-1) / model.temperature - log_q[target_ids]
            candidates = vectors[inverse[items.numel():]]
            negative = queries @ candidates.T / model.temperature - log_q[negatives][None, :]
            negative = negative.masked_fill(negatives[None, :] == target_ids[:, None], float("-inf"))  # accidental hits
            logits = torch.cat([positive[:, None], negative], dim=1)
            loss = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

        played = items[items >= 0].unique()  # the batch's tracks: reconstruction, cold-start mapping
        return loss + model.auxiliary_loss(content[played], ids[played])
