"""Which tracks are played near each other: every played track's co-listening vector.

The audio encoder's co-listening objective regresses these vectors from audio (as van den Oord
et al. 2013 regress latent factors), so a track nobody has played lands where the listeners of
similar-sounding tracks are.

    counts(a, b)  = plays of b within ``window`` plays of a in the same session (both directions)
    PPMI(a, b)    = max(0, log(counts(a, b) * total / (counts(a) * counts(b))))
    vectors       = the top ``dim`` singular vectors of PPMI, scaled by sqrt(singular value), unit length

(Levy & Goldberg 2014: factorised PPMI is what word2vec-style co-occurrence embeddings learn.)
Tracks with fewer than ``min_plays`` plays get a zero vector: too few plays to place them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from musicray.baselines import TrainingPlays


def colistening_vectors(train: pd.DataFrame, catalog_ids: Sequence[str], dim: int = 32, window: int = 3,
                        min_plays: int = 2, seed: int = 0) -> np.ndarray:
    """(len(catalog_ids), d) float32 unit vectors (zero rows for rarely played tracks), d <= ``dim``."""
    plays = TrainingPlays.from_frame(train, catalog_ids)
    n = plays.n_items
    rows, cols = [], []
    for distance in range(1, window + 1):
        a, b = plays.pairs(distance)
        rows += [a, b]
        cols += [b, a]
    vectors = np.zeros((n, 0), np.float32)
    if rows and sum(len(r) for r in rows):
        counts = sp.csr_matrix((np.ones(sum(len(r) for r in rows), np.float64),
                                (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        marginal = np.asarray(counts.sum(axis=1)).ravel()
        coo = counts.tocoo()
        pmi = np.log(coo.data * counts.sum() / (marginal[coo.row] * marginal[coo.col]))
        keep = pmi > 0
        ppmi = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n, n))
        rank = min(dim, n - 2)
        if rank >= 1 and ppmi.nnz:
            u, s, _ = svds(ppmi, k=rank, random_state=seed)
            vectors = (u * np.sqrt(s)).astype(np.float32)
    out = np.zeros((n, vectors.shape[1]), np.float32)
    placed = plays.play_counts() >= min_plays
    norms = np.linalg.norm(vectors, axis=1)
    placed &= norms > 0
    out[placed] = vectors[placed] / norms[placed, None]
    return out
