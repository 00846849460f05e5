"""Evaluation protocol: examples (sessions.py), ranks and metrics (metrics.py), the five baselines and
the MFCC space (baselines.py), label precision."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from musicray.baselines import (ItemKNN, Markov, Popularity, SequentialRules, SessionKNN, baselines,
                                mfcc_baseline_vectors)
from musicray.metrics import (Scorer, evaluate, label_precision_at_k, metrics_from_ranks, paired_difference,
                              per_target, rank_of_targets)
from musicray.sessions import MAX_PREFIX, cold_tracks, make_examples

START = pd.Timestamp("2026-01-05 08:00", tz="UTC")  # a Monday


def log(sessions: dict[str, list[str]], user: str = "u1") -> pd.DataFrame:
    """A listening log: session id -> its tracks in order, one play every 3 minutes; sessions a day apart."""
    rows = []
    for day, (session_id, tracks) in enumerate(sessions.items()):
        for step, track in enumerate(tracks):
            rows.append((user, session_id, track, START + pd.Timedelta(days=day, minutes=3 * step)))
    return pd.DataFrame(rows, columns=["user_id", "session_id", "track_id", "ts"])


class Oracle:
    """Scores 1 on the target, 0 elsewhere, except on the targets listed as wrong (scored last)."""

    name = "oracle"

    def __init__(self, n_catalog: int, miss: set[int] = frozenset()):
        self.n_catalog, self.miss = n_catalog, miss

    def score(self, batch):
        scores = torch.zeros(len(batch), self.n_catalog)
        for row, target in enumerate(batch.targets.tolist()):
            scores[row, target] = -1.0 if target in self.miss else 1.0
        return scores


class Constant:
    name = "constant"

    def __init__(self, n_catalog: int):
        self.n_catalog = n_catalog

    def score(self, batch):
        return torch.zeros(len(batch), self.n_catalog)


# ---------------------------------------------------------------------------------------------
# metrics and ranks


def test_metrics_of_hand_computed_ranks():
    assert metrics_from_ranks(torch.tensor([1])) == {
        "HR@10": 1.0, "MRR@10": 1.0, "NDCG@10": 1.0, "HR@20": 1.0, "MRR@20": 1.0, "NDCG@20": 1.0}

    third = metrics_from_ranks(torch.tensor([3]))
    assert third["HR@10"] == 1.0
    assert third["MRR@10"] == pytest.approx(1 / 3)
    assert third["NDCG@10"] == pytest.approx(1 / math.log2(4))

    assert all(value == 0.0 for value in metrics_from_ranks(torch.tensor([25])).values())

    mixed = metrics_from_ranks(torch.tensor([1, 3, 15, 25]))
    assert mixed["HR@10"] == pytest.approx(2 / 4)
    assert mixed["HR@20"] == pytest.approx(3 / 4)
    assert mixed["MRR@10"] == pytest.approx((1 + 1 / 3) / 4)
    assert mixed["MRR@20"] == pytest.approx((1 + 1 / 3 + 1 / 15) / 4)
    assert mixed["NDCG@20"] == pytest.approx((1 + 0.5 + 1 / math.log2(16)) / 4)


def test_metrics_reject_bad_ranks():
    with pytest.raises(ValueError, match="non-empty"):
        metrics_from_ranks(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="1-based"):
        metrics_from_ranks(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="ks"):
        metrics_from_ranks(torch.tensor([1]), ks=(0,))


def test_rank_counts_ties_against_the_target():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.3],
                           [1.0, 1.0, 1.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0]])
    ranks = rank_of_targets(scores, torch.tensor([2, 0, 1]))
    # row 0: one better (0.5) and one equal (0.3) -> 3; row 1: two equal -> 3; row 2: all equal -> last
    assert ranks.tolist() == [3, 3, 4]


def test_rank_validates_its_inputs():
    with pytest.raises(ValueError, match="2-D float"):
        rank_of_targets(torch.zeros(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="targets"):
        rank_of_targets(torch.zeros(2, 5), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        rank_of_targets(torch.zeros(2, 5), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="NaN"):
        rank_of_targets(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))


# ---------------------------------------------------------------------------------------------
# examples


CATALOG = [f"t{i}" for i in range(30)]


def test_make_examples_positions_prefixes_and_times():
    sessions = log({"s1": ["t0", "t1", "t2", "t3"], "s2": ["t4"], "s3": ["t5", "unknown", "t6"]})
    sessions = sessions.iloc[::-1]  # the input order does not matter: plays are sorted by (session, ts)
    examples = make_examples(sessions, CATALOG)

    assert len(examples) == 3 + 0 + 1  # s2 has one play; s3 loses its unknown track
    assert examples.dropped == 1
    assert examples.targets.tolist() == [1, 2, 3, 6]
    assert examples.lengths.tolist() == [1, 2, 3, 1]
    assert examples.items[:, :4].tolist() == [[0, -1, -1, -1], [0, 1, -1, -1], [0, 1, 2, -1], [5, -1, -1, -1]]
    assert (examples.items[:, 4:] == -1).all()
    assert examples.hours[2, :4].tolist() == [8, 8, 8, -1]
    assert examples.weekdays[3, :2].tolist() == [2, -1]
    assert examples.target_hour.tolist() == [8, 8, 8, 8]
    assert examples.target_weekday.tolist() == [0, 0, 0, 2]  # s3 is two days later: Wednesday
    assert examples.user_ids == ["u1"] * 4
    assert not examples.cold.any()


def test_make_examples_uses_utc_hours_and_marks_cold_targets():
    sessions = log({"s1": ["t0", "t1", "t2"]})
    sessions["ts"] = sessions["ts"].dt.tz_convert("Asia/Tokyo")  # 17:00 there, 08:00 UTC
    examples = make_examples(sessions, CATALOG, cold_ids={"t2", "not-in-catalog"})
    assert examples.target_hour.tolist() == [8, 8]
    assert examples.cold.tolist() == [False, True]


def test_make_examples_keeps_the_last_max_prefix_plays():
    tracks = [f"t{i % 30}" for i in range(60)]
    examples = make_examples(log({"long": tracks}), CATALOG)
    assert len(examples) == 59
    assert examples.lengths.max() == MAX_PREFIX
    last = examples.batch(58, 59)
    assert last.items[0].tolist() == [i % 30 for i in range(9, 59)]
    assert last.targets.tolist() == [59 % 30]
    assert examples.lengths[MAX_PREFIX - 1] == MAX_PREFIX  # target 50 sees plays 0..49


def test_make_examples_validates_its_inputs():
    good = log({"s1": ["t0", "t1"]})
    with pytest.raises(ValueError, match="lacks the column"):
        make_examples(good.drop(columns="ts"), CATALOG)
    with pytest.raises(ValueError, match="sessions is empty"):
        make_examples(good.iloc[:0], CATALOG)
    with pytest.raises(ValueError, match="duplicate"):
        make_examples(good, ["t0", "t0", "t1"])
    with pytest.raises(ValueError, match="catalog_ids is empty"):
        make_examples(good, [])
    with pytest.raises(ValueError, match="cold_ids"):
        make_examples(good, CATALOG, cold_ids="t1")
    with pytest.raises(ValueError, match="no play of a catalog track"):
        make_examples(good, ["x", "y"])


def test_cold_tracks_are_the_catalog_tracks_never_played():
    train = log({"s1": ["t0", "t1", "elsewhere"]})
    assert cold_tracks(train, ["t0", "t1", "t2", "t3"]) == {"t2", "t3"}


# ---------------------------------------------------------------------------------------------
# evaluate


def examples_of(n_sessions: int, cold: set[str] = frozenset()):
    rng = np.random.default_rng(0)
    sessions = {f"s{i}": [f"t{j}" for j in rng.integers(0, 30, size=5)] for i in range(n_sessions)}
    return make_examples(log(sessions), CATALOG, cold)


def test_evaluate_a_perfect_and_a_constant_scorer():
    examples = examples_of(10)
    perfect = evaluate(Oracle(30), examples, batch_size=7)
    assert perfect["n"] == 40 and perfect["n_cold"] == 0 and perfect["cold"] == {}
    assert all(value == 1.0 for value in perfect["all"].values())
    assert perfect["seconds"] >= 0

    constant = evaluate(Constant(30), examples)
    assert all(value == 0.0 for value in constant["all"].values())  # every target ranks 30th


def test_evaluate_reports_cold_targets_separately():
    examples = examples_of(20, cold={"t0", "t1", "t2"})
    cold = examples.cold
    assert 0 < int(cold.sum()) < len(examples)

    result = evaluate(Oracle(30, miss={0, 1, 2}), examples)
    assert result["n_cold"] == int(cold.sum())
    assert result["all"]["HR@10"] == pytest.approx(1 - cold.float().mean().item())
    assert all(value == 0.0 for value in result["cold"].values())


def test_evaluate_rejects_wrong_scores_and_empty_examples():
    class WrongShape:
        name = "wrong"

        def score(self, batch):
            return torch.zeros(len(batch) + 1, 30)

    examples = examples_of(3)
    with pytest.raises(ValueError, match="'wrong' returned scores of shape"):
        evaluate(WrongShape(), examples)
    with pytest.raises(ValueError, match="non-empty"):
        evaluate(Oracle(30), examples.batch(0, 0))
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(Oracle(30), examples, batch_size=0)


# ---------------------------------------------------------------------------------------------
# baselines

BASELINE_CATALOG = list("abcdefghpqrsxyz")


@pytest.fixture(scope="module")
def train():
    """a -> b -> c five times, d -> e -> f three times; g is the most played track;
    p q r s and x q y once each; z is never played."""
    sessions = {f"abc{i}": ["a", "b", "c"] for i in range(5)}
    sessions |= {f"def{i}": ["d", "e", "f"] for i in range(3)}
    sessions |= {f"gh{i}": ["g", "h"] for i in range(6)}
    sessions |= {f"g{i}": ["g"] for i in range(2)}
    sessions |= {"pqrs": ["p", "q", "r", "s"], "xqy": ["x", "q", "y"]}
    return log(sessions)


def ranks_for(scorer, prefixes: list[list[str]], targets: list[str]) -> list[int]:
    """The rank ``scorer`` gives each target after its whole prefix."""
    sessions = {f"test{i}": prefix + [target] for i, (prefix, target) in enumerate(zip(prefixes, targets))}
    examples = make_examples(log(sessions), BASELINE_CATALOG)
    scores = scorer.score(examples)
    assert scores.shape == (len(examples), len(BASELINE_CATALOG)) and scores.dtype == torch.float32
    last_positions = np.cumsum([len(prefix) for prefix in prefixes]) - 1  # a session's last example
    return rank_of_targets(scores, examples.targets)[last_positions].tolist()


def index(track: str) -> int:
    return BASELINE_CATALOG.index(track)


def test_popularity_ranks_the_most_played_first(train):
    scorer = Popularity(train, BASELINE_CATALOG)
    assert ranks_for(scorer, [["a"], ["d", "e"]], ["g", "g"]) == [1, 1]


@pytest.mark.parametrize("baseline", [Markov, SequentialRules, ItemKNN])
def test_sequence_baselines_follow_the_pattern(train, baseline):
    scorer = baseline(train, BASELINE_CATALOG)
    # after a -> b comes c; after d -> e comes f: item-kNN gets there through the decayed
    # sum over the last items (c is similar to both b and a; a, as b's neighbour, only to b)
    assert ranks_for(scorer, [["a", "b"], ["d", "e"], ["g"]], ["c", "f", "h"]) == [1, 1, 1]


@pytest.mark.parametrize("baseline", [Markov, SequentialRules])
def test_transition_baselines_rank_the_next_track_first(train, baseline):
    assert ranks_for(baseline(train, BASELINE_CATALOG), [["a"], ["d"]], ["b", "e"]) == [1, 1]


@pytest.mark.parametrize("baseline", [Markov, SequentialRules, ItemKNN, SessionKNN])
def test_unknown_context_falls_back_to_popularity(train, baseline):
    """z was never played: every score is 0 but for the popularity tie-breaker."""
    assert ranks_for(baseline(train, BASELINE_CATALOG), [["z"]], ["g"]) == [1]


def test_sequential_rules_weigh_rules_by_distance(train):
    scorer = SequentialRules(train, BASELINE_CATALOG)
    scores = scorer.score(make_examples(log({"t": ["p", "q"]}), BASELINE_CATALOG))[0]
    # from p: q one step later (1), r two steps (1/2), s three steps (1/3)
    assert scores[index("q")] > scores[index("r")] > scores[index("s")] > scores[index("a")]


def test_item_knn_does_not_recommend_the_item_itself(train):
    scorer = ItemKNN(train, BASELINE_CATALOG, history=1)
    scores = scorer.score(make_examples(log({"t": ["g", "h"]}), BASELINE_CATALOG))[0]  # prefix: g
    assert scores.argmax() == index("h")
    assert scores[index("g")] < 1e-5  # only the popularity tie-breaker


def test_session_knn_recovers_the_continuation_of_a_seen_session(train):
    scorer = SessionKNN(train, BASELINE_CATALOG)
    examples = make_examples(log({"t": ["p", "q", "r", "s"]}), BASELINE_CATALOG)
    last = examples.batch(2, 3)  # prefix p q r -> s
    scores = scorer.score(last)[0]
    # pqrs is the most similar session, so its tracks score its similarity (plus xqy's for q);
    # s ties with p and r, pessimistically ranked behind them and q
    assert rank_of_targets(scores[None], last.targets).item() <= 4
    outside = [index(t) for t in "abcdefghxyz"]
    assert scores[index("s")] > scores[outside].max()
    assert scores[index("s")] > scores[index("x")] > scores[index("a")]


def test_session_knn_keeps_k_neighbours_and_the_most_recent_sample(train):
    prefix = make_examples(log({"t": ["q", "a", "b", "c"]}), BASELINE_CATALOG).batch(2, 3)  # q a b
    # the abc sessions share 2 of 3 tracks (cosine 2/3); pqrs and xqy share q (1/sqrt(12), 1/3)
    one_neighbour = SessionKNN(train, BASELINE_CATALOG, k=1).score(prefix)[0]
    assert one_neighbour[index("c")] > 0.99
    assert one_neighbour[index("x")] < 1e-5 and one_neighbour[index("p")] < 1e-5
    # sessions start a day apart in the fixture's order: the most recent holding q, a or b is xqy
    recent = SessionKNN(train, BASELINE_CATALOG, sample_size=1).score(prefix)[0]
    assert recent[index("x")] > 0.99 and recent[index("c")] < 1e-5


def test_baselines_evaluate_together(train):
    scorers = baselines(train, BASELINE_CATALOG)
    assert [s.name for s in scorers] == ["popularity", "item-knn", "session-knn", "sequential-rules", "markov"]
    test = log({"t1": ["a", "b", "c"], "t2": ["d", "e", "f", "z"]})
    examples = make_examples(test, BASELINE_CATALOG, cold_tracks(train, BASELINE_CATALOG))
    for scorer in scorers:
        assert isinstance(scorer, Scorer)
        result = evaluate(scorer, examples)
        assert result["n"] == 5 and result["n_cold"] == 1
        if scorer.name in ("markov", "sequential-rules"):
            assert result["all"]["HR@10"] == pytest.approx(4 / 5)  # all but the cold z


def test_baselines_validate_their_inputs(train):
    with pytest.raises(ValueError, match="train lacks the column"):
        Markov(train.drop(columns="session_id"), BASELINE_CATALOG)
    with pytest.raises(ValueError, match="train is empty"):
        Popularity(train.iloc[:0], BASELINE_CATALOG)
    with pytest.raises(ValueError, match="neighbours"):
        ItemKNN(train, BASELINE_CATALOG, neighbours=0)
    with pytest.raises(ValueError, match="window"):
        SequentialRules(train, BASELINE_CATALOG, window=0)
    examples = make_examples(log({"t": ["a", "b"]}), BASELINE_CATALOG + ["extra"])
    examples.items[0, 0] = len(BASELINE_CATALOG)  # a track of a bigger catalog
    with pytest.raises(ValueError, match="beyond this baseline's catalog"):
        Markov(train, BASELINE_CATALOG).score(examples)


# ---------------------------------------------------------------------------------------------
# content embeddings


def test_label_precision_is_one_on_clustered_vectors():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 300)  # 1200 items: more than one chunk of neighbours
    centres = np.eye(8)[:4] * 10
    vectors = centres[labels] + rng.normal(size=(1200, 8))
    assert label_precision_at_k(vectors, labels.tolist()) == 1.0
    assert label_precision_at_k(torch.from_numpy(vectors), [f"style{i}" for i in labels]) == 1.0


def test_label_precision_is_chance_on_random_vectors():
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(["a", "b", "c", "d"], 500))
    precision = label_precision_at_k(rng.normal(size=(2000, 16)), labels)
    assert precision == pytest.approx(0.25, abs=0.03)


def test_label_precision_excludes_the_item_itself():
    """Twins with different labels: the nearest other item is the twin, never itself."""
    base = np.eye(6) * 5
    vectors = np.repeat(base, 2, axis=0)
    labels = [f"{i}{side}" for i in range(6) for side in "LR"]
    assert label_precision_at_k(vectors, labels, k=1) == 0.0


def test_label_precision_validates_its_inputs():
    with pytest.raises(ValueError, match="labels has 3"):
        label_precision_at_k(np.zeros((20, 2)), ["a"] * 3)
    with pytest.raises(ValueError, match="more than k"):
        label_precision_at_k(np.zeros((5, 2)), ["a"] * 5)
    with pytest.raises(ValueError, match="NaN"):
        label_precision_at_k(np.full((20, 2), np.nan), ["a"] * 20)


def test_mfcc_baseline_vectors_are_z_scored():
    rng = np.random.default_rng(0)
    features = pd.DataFrame({
        "mfcc_mean": list(rng.normal(5, 3, size=(50, 20))),
        "mfcc_std": [np.r_[rng.normal(size=19), 1.0] for _ in range(50)],  # last dimension constant
    })
    vectors = mfcc_baseline_vectors(features)
    assert vectors.shape == (50, 40) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(vectors[:, :39].std(axis=0), 1, atol=1e-5)
    assert (vectors[:, 39] == 0).all()
    with pytest.raises(ValueError, match="lacks the column"):
        mfcc_baseline_vectors(features.drop(columns="mfcc_std"))
    with pytest.raises(ValueError, match="equal-length"):
        mfcc_baseline_vectors(pd.DataFrame({"mfcc_mean": [[1.0, 2.0], [1.0]], "mfcc_std": [[1.0], [1.0]]}))


def test_per_target_values_average_to_the_metrics():
    ranks = torch.tensor([1, 2, 5, 11, 20, 21, 300])
    metrics = metrics_from_ranks(ranks)
    for metric in ("HR@10", "MRR@20", "NDCG@20"):
        assert per_target(ranks, metric).mean().item() == pytest.approx(metrics[metric])
    with pytest.raises(ValueError, match="HR@K, MRR@K or NDCG@K"):
        per_target(ranks, "MAP@10")


def test_paired_difference_separates_a_real_lead_from_a_tie():
    generator = torch.Generator().manual_seed(1)
    base = torch.randint(1, 40, (2000,), generator=generator)
    same = paired_difference(base, base, "MRR@20")
    assert same == (0.0, 0.0, 0.0)

    better = torch.clamp(base - 3, min=1)  # every target ranked up to 3 places higher
    difference, low, high = paired_difference(better, base, "MRR@20")
    assert 0 < low <= difference <= high

    swapped = base.clone()  # the same ranks, two targets exchanged: a lead of ~nothing
    swapped[[0, 1]] = torch.tensor([1, 39])
    difference, low, high = paired_difference(swapped, base, "HR@20")
    assert low <= difference <= high and low <= 0 <= high

    with pytest.raises(ValueError, match="same non-empty targets"):
        paired_difference(base, base[:10], "MRR@20")
