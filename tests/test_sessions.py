"""Listening logs: timestamps as epoch seconds, sessions cut at 30-minute gaps, padded windows."""

import pandas as pd
import pytest

from musicray.sessions import load_log, session_arrays, split_by_time


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
