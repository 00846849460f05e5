"""Listening logs: timestamps as epoch seconds, sessions cut at 30-minute gaps, padded windows;
histories as the models read them, the same in training, evaluation and serving."""

import pandas as pd
import pytest
import torch

from models import build
from models.losses import NextTrackObjective
from models.modules import fit_standardizers
from musicray.content import TrackCatalog
from musicray.scoring import ModelScorer, session_queries
from musicray.serving.recommend import Context, RecommendRequest, request_histories
from musicray.sessions import MAX_PREFIX, encode_histories, load_log, make_examples, session_arrays, split_by_time


def test_epoch_seconds_and_sessions_cut_at_30_minute_gaps(tmp_path):
    start = 1_767_571_200  # 2026-01-05 00:00 UTC, a Monday
    minutes = [0, 3, 6, 40, 43, 200]  # gaps of 34 and 157 minutes start new sessions
    log = pd.DataFrame({"user_id": ["u1"] * 6 + ["u2"], "track_id": list("abcdefa"),
                        "ts": [start + 60 * m for m in minutes] + [start + 60]})
    log.to_parquet(tmp_path / "log.parquet")
    loaded = load_log(str(tmp_path / "log.parquet"))
    assert str(loaded["ts"].dt.tz) == "UTC" and loaded["ts"].min() == pd.Timestamp("2026-01-05", tz="UTC")
    sessions = loaded.groupby("session_id")["track_id"].apply("".join).sort_values().tolist()
    assert sessions == ["a", "abc", "de", "f"]  # u2's single play is its own session

    arrays = session_arrays(loaded, {t: i for i, t in enumerate("abcdef")}, max_len=3)
    assert arrays["items"].tolist() == [[0, 1, 2], [3, 4, -1]]  # sessions of one play teach nothing
    assert arrays["weekdays"][0, 0] == 0 and arrays["hours"][1, 0] == 0


def test_long_sessions_become_overlapping_windows(tmp_path):
    log = pd.DataFrame({"user_id": "u", "session_id": "s", "track_id": [f"t{i}" for i in range(7)],
                        "ts": pd.date_range("2026-01-05", periods=7, freq="2min", tz="UTC")})
    index = {f"t{i}": i for i in range(7)}
    windows = session_arrays(log, index, max_len=4)["items"].tolist()
    assert windows == [[0, 1, 2, 3], [3, 4, 5, 6]]  # every transition kept once


def test_validation_split_takes_the_latest_sessions():
    log = pd.DataFrame({"user_id": "u", "session_id": [f"s{i}" for i in range(10)], "track_id": "t",
                        "ts": pd.date_range("2026-01-05", periods=10, freq="D", tz="UTC")})
    train, held_out = split_by_time(log, 0.2)
    assert held_out["session_id"].tolist() == ["s8", "s9"] and len(train) == 8


def test_bad_logs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="listening log not found: .*nope.parquet"):
        load_log(str(tmp_path / "nope.parquet"))
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="cannot read listening log .*text.parquet"):
        load_log(str(tmp_path / "text.parquet"))


# ---------------------------------------------------------------------------------------------
# Histories as the models read them


def test_each_step_reads_the_context_of_the_play_it_predicts():
    items = torch.tensor([[4, 7, 9, -1], [3, -1, -1, -1]])
    hours = torch.tensor([[22, 23, 0, -1], [8, -1, -1, -1]])
    weekdays = torch.tensor([[6, 6, 0, -1], [2, -1, -1, -1]])
    asked_hour, asked_weekday = torch.tensor([1, 9]), torch.tensor([0, 2])
    encoded = encode_histories(items, hours, weekdays, asked_hour, asked_weekday)
    assert encoded.items.tolist() == [[4, 7, 9, 0], [3, 0, 0, 0]]  # padding reads row 0, masked out
    assert encoded.mask.tolist() == [[True, True, True, False], [True, False, False, False]]
    assert encoded.lengths.tolist() == [3, 1]
    assert encoded.hours.tolist() == [[23, 0, 1, -1], [9, -1, -1, -1]]
    assert encoded.weekdays.tolist() == [[6, 0, 0, -1], [2, -1, -1, -1]]

    unknown = encode_histories(items, hours, weekdays)  # the play asked for has no known time
    assert unknown.hours.tolist() == [[23, 0, -1, -1], [-1, -1, -1, -1]]
    # a serving request sends track ids only: its plays are taken to be at the requested time
    request = encode_histories(items, next_hour=asked_hour, next_weekday=asked_weekday)
    assert request.hours.tolist() == [[1, 1, 1, -1], [9, -1, -1, -1]]
    assert request.weekdays.tolist() == [[0, 0, 0, -1], [2, -1, -1, -1]]

    with pytest.raises(ValueError, match=f"at most {MAX_PREFIX} plays"):
        encode_histories(torch.zeros(1, MAX_PREFIX + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one play"):
        encode_histories(torch.tensor([[3, -1], [-1, -1]]))


def test_training_windows_are_at_most_max_prefix_plays():
    log = pd.DataFrame({"user_id": "u", "session_id": "s", "track_id": [f"t{i % 5}" for i in range(120)],
                        "ts": pd.date_range("2026-01-05", periods=120, freq="10s", tz="UTC")})
    arrays = session_arrays(log, {f"t{i}": i for i in range(5)})
    assert arrays["items"].shape[1] == MAX_PREFIX


N_TRACKS = 12


def context_model(name: str) -> tuple[torch.nn.Module, TrackCatalog]:
    """A model in eval mode whose context embeddings matter: far from their near-zero start."""
    torch.manual_seed(0)
    catalog = TrackCatalog([f"t{i}" for i in range(N_TRACKS)], torch.randn(N_TRACKS, 8))
    model = build(name, content_dim=8, n_ids=N_TRACKS, dim=16)
    fit_standardizers(model, catalog.content)
    with torch.no_grad():
        for table in (model.context.hour, model.context.weekday):
            table.weight[:-1].normal_()  # the last row is "unknown", kept zero
    return model.eval(), catalog


def session(start: str, tracks: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": "u", "session_id": "s", "track_id": tracks,
                         "ts": pd.date_range(start, periods=len(tracks), freq="6min", tz="UTC")})


def training_queries(model, catalog: TrackCatalog, plays: pd.DataFrame) -> torch.Tensor:
    """(steps, dim + 1): the query ``NextTrackObjective`` asks the model for at each step."""
    arrays = {k: torch.from_numpy(v) for k, v in session_arrays(plays, catalog.index).items()}
    captured = []
    hook = model.register_forward_hook(lambda module, args, output: captured.append(output))
    with torch.no_grad():
        NextTrackObjective(model)(arrays["items"], arrays["hours"], arrays["weekdays"], catalog.content,
                                  catalog.vocabulary_ids(catalog.track_ids))
    hook.remove()
    return captured[0][0, : len(plays) - 1]


@pytest.mark.parametrize("name", ["lstm", "dnn"])  # the recommenders that read the context
def test_training_evaluation_and_serving_ask_the_same_query(name):
    model, catalog = context_model(name)
    scorer = ModelScorer(name, model, catalog, catalog.track_ids)
    vectors = scorer.track_vectors

    # Across midnight (Sunday 23:48 -> Monday 00:18): hour and weekday change within the session,
    # so the query at position t is the training query at step t only if both paths read every
    # step in the context of the play it predicts.
    overnight = session("2026-01-04 23:48", ["t3", "t1", "t4", "t1", "t5", "t9"])
    training = training_queries(model, catalog, overnight)
    examples = make_examples(overnight, catalog.track_ids)
    torch.testing.assert_close(session_queries(model, vectors, examples.histories()), training)
    torch.testing.assert_close(scorer.score(examples), training @ vectors.T / model.temperature)

    # Serving knows the history's tracks and the requested time only; within one hour of one day
    # (Monday 08:00-08:24) it asks the model exactly what training and evaluation ask.
    tracks = ["t2", "t7", "t7", "t0", "t8"]
    training = training_queries(model, catalog, session("2026-01-05 08:00", tracks))
    histories = [[catalog.index[t] for t in tracks[: n + 1]] for n in range(len(tracks) - 1)]

    def served(context: Context) -> torch.Tensor:
        requests = [RecommendRequest(history=tracks[: len(h)], context=context) for h in histories]
        return session_queries(model, vectors, request_histories(histories, requests))

    torch.testing.assert_close(served(Context(hour=8, weekday=0)), training)
    assert not torch.allclose(served(Context(hour=20, weekday=5)), training)  # the context matters
