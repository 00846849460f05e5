"""Listening logs: loading, validation, sessions, and the padded arrays training reads."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from musicray import storage

REQUIRED_COLUMNS = ("user_id", "track_id", "ts")
SESSION_GAP = pd.Timedelta(minutes=30)


def load_log(uri: str) -> pd.DataFrame:
    """A listening log with ``user_id, session_id, track_id, ts`` (UTC), ordered by session and time.

    ``ts`` may be a timestamp or epoch seconds. Without ``session_id``, a user's plays are cut
    into sessions at gaps over 30 minutes.
    """
    if not storage.exists(uri):
        raise FileNotFoundError(f"listening log not found: {uri}")
    try:
        log = pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pandas()
    except Exception as error:
        raise ValueError(f"cannot read listening log {uri} as Parquet: {error}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in log.columns]
    if missing:
        raise ValueError(f"listening log {uri} lacks required column(s) {missing}; it has {list(log.columns)}")
    if log.empty:
        raise ValueError(f"listening log {uri} is empty")
    log = log.dropna(subset=list(REQUIRED_COLUMNS))
    log["user_id"] = log["user_id"].astype(str)
    log["track_id"] = log["track_id"].astype(str)
    ts = log["ts"]
    numeric = pd.api.types.is_numeric_dtype(ts)  # epoch seconds
    log["ts"] = pd.to_datetime(ts, unit="s", utc=True) if numeric else pd.to_datetime(ts, utc=True)
    if "session_id" not in log.columns:
        log = log.sort_values(["user_id", "ts"], kind="stable")
        new_session = (log["user_id"] != log["user_id"].shift()) | (log["ts"].diff() > SESSION_GAP)
        log["session_id"] = log["user_id"] + ":" + new_session.cumsum().astype(str)
    log["session_id"] = log["session_id"].astype(str)
    return log.sort_values(["session_id", "ts"], kind="stable").reset_index(drop=True)


def split_by_time(log: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The latest ``fraction`` of sessions (by start time) apart from the rest: a validation split."""
    starts = log.groupby("session_id")["ts"].min().sort_values(kind="stable")
    held_out = set(starts.index[int(len(starts) * (1 - fraction)):])
    is_held = log["session_id"].isin(held_out)
    return log[~is_held].reset_index(drop=True), log[is_held].reset_index(drop=True)


def session_arrays(log: pd.DataFrame, index: dict[str, int], max_len: int = 50) -> dict[str, np.ndarray]:
    """Sessions as padded rows (-1): ``items`` (catalog indices), ``hours``, ``weekdays``.

    Plays of tracks outside ``index`` are dropped; sessions longer than ``max_len`` are cut
    into consecutive windows that overlap by one play so no transition is lost.
    """
    known = log[log["track_id"].isin(index.keys())]
    items, hours, weekdays = [], [], []
    for _, session in known.groupby("session_id", sort=False):
        ids = session["track_id"].map(index).to_numpy()
        hour = session["ts"].dt.hour.to_numpy()
        day = session["ts"].dt.day_of_week.to_numpy()
        for start in range(0, max(1, len(ids) - 1), max_len - 1):
            window = slice(start, start + max_len)
            if len(ids[window]) >= 2:
                items.append(ids[window]), hours.append(hour[window]), weekdays.append(day[window])
    return {name: _pad(rows, max_len) for name, rows in (("items", items), ("hours", hours), ("weekdays", weekdays))}


def _pad(rows: list[np.ndarray], width: int) -> np.ndarray:
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out
