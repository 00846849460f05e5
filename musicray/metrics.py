"""Ranking metrics of next-track recommenders, and label precision of track spaces.

Protocol (design doc): at every position t >= 1 of every held-out session, a ``Scorer`` sees the
prefix (``musicray.sessions.Examples``: the last ``MAX_PREFIX`` plays) and scores the **whole
catalog**, no sampled negatives. The rank of the true next track gives HR@K, MRR@K and NDCG@K
(K = 10, 20), over all positions and over the positions whose target is a cold track.

Ties are ranked pessimistically: rank = 1 + #(items scored above the target) + #(other items
scored equal to it) = #(items scored >= the target). A scorer that says nothing (constant scores)
ranks every target last, so ties never earn credit.

Content embeddings are judged by ``label_precision_at_k`` (share of cosine nearest neighbours
with the item's label), against the MFCC-statistics space of ``musicray.baselines.mfcc_baseline_vectors``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from musicray.sessions import Examples

KS = (10, 20)


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, batch: Examples) -> torch.Tensor:
        """(len(batch), n_catalog) float scores, higher = better."""


def rank_of_targets(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target among all catalog items, ties pessimistic.

    rank = 1 + #(score > target's) + #(other items with score == target's) = #(score >= target's),
    so a scorer gains nothing from ties: constant scores rank every target last.
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2 or not scores.is_floating_point():
        raise ValueError(f"scores must be a 2-D float tensor (batch, n_catalog), got "
                         f"{getattr(scores, 'dtype', type(scores).__name__)} of shape "
                         f"{tuple(getattr(scores, 'shape', ()))}")
    if not isinstance(targets, torch.Tensor) or targets.shape != (scores.shape[0],):
        raise ValueError(f"targets must be a tensor of shape ({scores.shape[0]},), one per row of "
                         f"scores, got shape {tuple(getattr(targets, 'shape', ()))}")
    if len(targets) and (targets.min() < 0 or targets.max() >= scores.shape[1]):
        raise ValueError(f"targets must be catalog indices in [0, {scores.shape[1]}), "
                         f"got values in [{int(targets.min())}, {int(targets.max())}]")
    # the sum is NaN whenever a score is (or +inf meets -inf): a cheap test before the full scan
    if torch.isnan(scores.sum()) and torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    target_scores = scores.gather(1, targets[:, None].long())
    return (scores >= target_scores).sum(1, dtype=torch.int32).long()  # int32: faster on CPU


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """HR@K, MRR@K and NDCG@K averaged over targets, with one relevant item per target:
    HR = [rank <= K], MRR = 1/rank and NDCG = 1/log2(rank + 1) when rank <= K, else 0."""
    ranks = torch.as_tensor(ranks)
    if ranks.ndim != 1 or len(ranks) == 0:
        raise ValueError(f"ranks must be a non-empty 1-D tensor, got shape {tuple(ranks.shape)}")
    if ranks.min() < 1:
        raise ValueError(f"ranks are 1-based, got a rank of {int(ranks.min())}")
    _check_ks(ks)
    return {f"{kind}@{k}": per_target(ranks, f"{kind}@{k}").mean().item() for k in ks for kind in ("HR", "MRR", "NDCG")}


def per_target(ranks: torch.Tensor, metric: str) -> torch.Tensor:
    """Each target's share of a metric such as "MRR@20": the metric is the mean of these."""
    kind, _, k = metric.partition("@")
    ranks = torch.as_tensor(ranks).double()
    hit = ranks <= int(k)
    values = {"HR": hit.double(), "MRR": torch.where(hit, 1 / ranks, 0),
              "NDCG": torch.where(hit, 1 / torch.log2(ranks + 1), 0)}
    if kind not in values:
        raise ValueError(f"metric must be HR@K, MRR@K or NDCG@K, got {metric!r}")
    return values[kind]


def paired_difference(ranks_a: torch.Tensor, ranks_b: torch.Tensor, metric: str, samples: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """The difference of ``metric`` (a - b) over the same targets, with its 95% paired-bootstrap interval.

    A lead whose interval straddles 0 is a tie at this test set's size, not a win.
    """
    if len(ranks_a) != len(ranks_b) or len(ranks_a) == 0:
        raise ValueError(f"need the ranks of the same non-empty targets, got {len(ranks_a)} and {len(ranks_b)}")
    differences = per_target(ranks_a, metric) - per_target(ranks_b, metric)
    generator = torch.Generator().manual_seed(seed)
    resampled = torch.randint(len(differences), (samples, len(differences)), generator=generator)
    means = differences[resampled].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=means.dtype)).tolist()
    return differences.mean().item(), low, high


def _check_ks(ks: Sequence[int]) -> None:
    if len(ks) == 0 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")


def evaluate(scorer: Scorer, examples: Examples, ks: Sequence[int] = KS,
             batch_size: int = 512) -> dict:
    """Rank every target of ``examples`` with ``scorer``.

    Returns {"all": metrics, "cold": metrics on the cold targets ({} if none), "n", "n_cold",
    "seconds", "ranks"} where metrics is ``metrics_from_ranks``' dict and "ranks" each target's rank.
    """
    if not isinstance(examples, Examples) or len(examples) == 0:
        raise ValueError("examples must be a non-empty Examples")
    check_positive_int("batch_size", batch_size)
    _check_ks(ks)
    name = getattr(scorer, "name", type(scorer).__name__)

    started = time.perf_counter()
    ranks, n_catalog = [], None
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples.batch(start, start + batch_size)
            scores = scorer.score(batch)
            if not isinstance(scores, torch.Tensor) or scores.ndim != 2 or scores.shape[0] != len(batch):
                raise ValueError(f"scorer {name!r} returned scores of shape "
                                 f"{tuple(getattr(scores, 'shape', ()))} for a batch of {len(batch)}, "
                                 f"expected ({len(batch)}, n_catalog)")
            if n_catalog is not None and scores.shape[1] != n_catalog:
                raise ValueError(f"scorer {name!r} returned {scores.shape[1]} scores per row, "
                                 f"then {n_catalog} for an earlier batch")
            n_catalog = scores.shape[1]
            ranks.append(rank_of_targets(scores, batch.targets.to(scores.device)).cpu())
    ranks = torch.cat(ranks)
    seconds = time.perf_counter() - started

    cold = examples.cold
    n_cold = int(cold.sum())
    return {"all": metrics_from_ranks(ranks, ks),
            "cold": metrics_from_ranks(ranks[cold], ks) if n_cold else {},
            "n": len(ranks), "n_cold": n_cold, "seconds": seconds, "ranks": ranks}



# ---------------------------------------------------------------------------------------------
# Content embeddings

_NEIGHBOUR_CHUNK = 1024  # rows of the similarity matrix held at once: 1024 x 10k floats = 40 MB


def label_precision_at_k(vectors: torch.Tensor | np.ndarray, labels: Sequence, k: int = 10) -> float:
    """Mean over items of the share of their k cosine nearest neighbours (the item itself
    excluded) that have the item's label. Chance level is about sum_label share(label)**2."""
    if not isinstance(vectors, torch.Tensor):
        vectors = torch.from_numpy(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (items, dims), got shape {tuple(vectors.shape)}")
    vectors = vectors.detach().float().cpu()
    n = len(vectors)
    check_positive_int("k", k)
    if n <= k:
        raise ValueError(f"vectors has {n} items: needs more than k = {k} to find k neighbours")
    if not torch.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinite values")
    labels = pd.Series(list(labels), dtype=object)
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries, vectors has {n} rows")
    if labels.isna().any():
        raise ValueError("labels has missing values")
    codes = torch.from_numpy(pd.factorize(labels)[0])

    unit = F.normalize(vectors, dim=1)
    shared = 0.0
    for start in range(0, n, _NEIGHBOUR_CHUNK):
        stop = min(start + _NEIGHBOUR_CHUNK, n)
        similarity = unit[start:stop] @ unit.T
        similarity[torch.arange(stop - start), torch.arange(start, stop)] = -math.inf  # not itself
        neighbours = similarity.topk(k, dim=1).indices
        shared += (codes[neighbours] == codes[start:stop, None]).float().mean(1).sum().item()
    return shared / n


def check_positive_int(name: str, value) -> None:
    """A clear error naming ``name`` unless ``value`` is an integer >= 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
