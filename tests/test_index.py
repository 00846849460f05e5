"""The nearest-neighbour index: recall against exact search, storage round trips, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from musicray import storage
from musicray.index import IndexInputError, TrackIndex, exact_top_k


def gaussian(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_recall_at_10_against_exact_search(metric):
    vectors, queries = gaussian(4000), gaussian(300, seed=1)
    ids = [f"t{i}" for i in range(len(vectors))]
    index = TrackIndex.build(ids, vectors, metric, num_threads=1)
    found, scores = index.query(queries, k=10, num_threads=1)
    exact = exact_top_k(vectors, queries, 10, metric)
    recall = np.mean([len({ids[p] for p in e} & set(f)) / 10 for f, e in zip(found, exact)])
    assert recall >= 0.95, f"{metric} recall@10 {recall:.3f}"
    assert (np.diff(scores, axis=1) <= 1e-5).all()  # best first
    if metric == "ip":  # scores are the inner products themselves
        assert scores[0, 0] == pytest.approx(queries[0] @ vectors[ids.index(found[0][0])], rel=1e-4)
    assert index.sample_recall(vectors, k=10, sample=100) >= 0.95


def test_query_by_track_id_leaves_the_track_out():
    vectors = gaussian(500, dim=16)
    ids = [f"t{i}" for i in range(500)]
    index = TrackIndex.build(ids, vectors, "cosine")
    neighbours, scores = index.neighbours("t7", k=5)
    assert len(neighbours) == 5 and "t7" not in neighbours
    exact = exact_top_k(vectors, vectors[7:8], 6, "cosine")[0][1:]
    assert len(set(neighbours) & {ids[p] for p in exact}) >= 4
    np.testing.assert_allclose(index.vector("t7"), vectors[7] / np.linalg.norm(vectors[7]), rtol=1e-5)
    # Asking for more than the catalog holds returns the whole catalog.
    assert len(index.query(vectors[0], k=10_000)[0]) == 500


def test_round_trip_local_and_s3(tmp_path, bucket):
    vectors = gaussian(300, dim=8)
    ids = [f"track/{i}" for i in range(300)]
    index = TrackIndex.build(ids, vectors, "ip", ef=64)
    expected = index.query(vectors[:20], k=10)
    for uri in (str(tmp_path / "a.mrx"), f"s3://{bucket}/snap/a.mrx"):
        index.save(uri)
        loaded = TrackIndex.load(uri)
        assert loaded.track_ids == ids and loaded.metric == "ip" and loaded.ef == 64
        assert loaded.stats() == index.stats()
        got = loaded.query(vectors[:20], k=10)
        assert got[0] == expected[0]
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-6)


def test_bad_inputs_give_clear_errors(tmp_path):
    vectors = gaussian(10, dim=4)
    ids = [str(i) for i in range(10)]
    with pytest.raises(IndexInputError, match="unknown metric 'l3'"):
        TrackIndex.build(ids, vectors, "l3")
    with pytest.raises(IndexInputError, match="9 track ids for 10 vectors"):
        TrackIndex.build(ids[:9], vectors)
    with pytest.raises(IndexInputError, match=r"duplicate track ids.*'1'"):
        TrackIndex.build(["1"] * 10, vectors)
    bad = vectors.copy()
    bad[3, 1] = np.nan
    with pytest.raises(IndexInputError, match=r"NaN or infinite.*\[3\]"):
        TrackIndex.build(ids, bad)
    with pytest.raises(IndexInputError, match="non-empty 2-D"):
        TrackIndex.build([], np.zeros((0, 4)))
    with pytest.raises(IndexInputError, match="zero vector"):
        TrackIndex.build(ids, np.zeros((10, 4)), "cosine")
    index = TrackIndex.build(ids, vectors)
    with pytest.raises(IndexInputError, match="5 dimensions; this index has 4"):
        index.query(np.ones(5))
    with pytest.raises(IndexInputError, match="k must be >= 1"):
        index.query(vectors[0], k=0)
    with pytest.raises(KeyError, match="'nope' is not in this index"):
        index.neighbours("nope")
    with pytest.raises(IndexInputError, match="not a musicray index"):
        TrackIndex.from_bytes(b"hello", name="x.mrx")
    with pytest.raises(IndexInputError, match="cut.mrx is truncated or corrupt"):
        TrackIndex.from_bytes(index.to_bytes()[:-40], name="cut.mrx")
    with pytest.raises(FileNotFoundError, match="no index at"):
        TrackIndex.load(storage.join(str(tmp_path), "absent.mrx"))
