"""Listening logs -> sessions -> the history tensors every recommender reads.

A log is loaded and cut into sessions (``load_log``); training reads them as padded windows
(``session_arrays``), evaluation as every (prefix -> next track) position (``make_examples``),
and training, evaluation and serving all turn a history into what a model reads through one
rule, ``encode_histories``:

    each step's context is the hour and weekday of the play that step predicts,

so step t reads play t + 1's, and the last step of a history reads those of the play asked
for (the evaluation target, the serving request). Hours are UTC, weekdays 0 = Monday, and -1
is unknown (it embeds to zero).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from models.modules import step_context
from musicray import storage

REQUIRED_COLUMNS = ("user_id", "track_id", "ts")
SESSION_COLUMNS = ("user_id", "session_id", "track_id", "ts")
SESSION_GAP = pd.Timedelta(minutes=30)
MAX_PREFIX = 50  # the most plays of a history a model reads: training windows, evaluation prefixes, requests


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


def session_arrays(log: pd.DataFrame, index: dict[str, int], max_len: int = MAX_PREFIX) -> dict[str, np.ndarray]:
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
    return {name: pad(rows, max_len) for name, rows in (("items", items), ("hours", hours), ("weekdays", weekdays))}


def pad(rows: Sequence[Sequence[int]], width: int) -> np.ndarray:
    """Rows of up to ``width`` values as one (len(rows), width) int64 array, -1 after each row."""
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation examples: every (prefix -> next track) position of a set of sessions


@dataclass
class Examples:
    """Every (prefix -> next track) position of a set of sessions, as tensors."""

    items: torch.Tensor  # (n, MAX_PREFIX) int64 catalog indices of the prefix, oldest first, -1 padded
    lengths: torch.Tensor  # (n,) int64 real prefix length, 1..MAX_PREFIX
    hours: torch.Tensor  # (n, MAX_PREFIX) int64 hour of day (UTC) of each prefix play, -1 padded
    weekdays: torch.Tensor  # (n, MAX_PREFIX) int64 weekday of each prefix play, 0 = Monday, -1 padded
    target_hour: torch.Tensor  # (n,) int64 hour of day (UTC) of the target play
    target_weekday: torch.Tensor  # (n,) int64 weekday of the target play, 0 = Monday
    targets: torch.Tensor  # (n,) int64 catalog index of the next track
    cold: torch.Tensor  # (n,) bool: the target is a cold track
    user_ids: list[str]  # (n,)
    dropped: int = 0  # plays dropped by make_examples because their track is not in the catalog

    def __post_init__(self):
        n = len(self.targets)
        shapes = {"items": (n, MAX_PREFIX), "hours": (n, MAX_PREFIX), "weekdays": (n, MAX_PREFIX), "lengths": (n,),
                  "target_hour": (n,), "target_weekday": (n,), "cold": (n,)}
        for field, shape in shapes.items():
            if tuple(getattr(self, field).shape) != shape:
                raise ValueError(f"Examples.{field} has shape {tuple(getattr(self, field).shape)}, "
                                 f"expected {shape} for {n} targets")
        if len(self.user_ids) != n:
            raise ValueError(f"Examples.user_ids has {len(self.user_ids)} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, start: int, stop: int) -> Examples:
        """Positions start..stop-1 (``dropped`` stays the count of the whole set)."""
        part = slice(start, stop)
        return Examples(self.items[part], self.lengths[part], self.hours[part], self.weekdays[part],
                        self.target_hour[part], self.target_weekday[part], self.targets[part], self.cold[part],
                        self.user_ids[part], self.dropped)

    def histories(self) -> EncodedHistories:
        """Each prefix as the model reads it, its last step in the target's context."""
        return encode_histories(self.items, self.hours, self.weekdays, self.target_hour, self.target_weekday)


def make_examples(sessions: pd.DataFrame, catalog_ids: Sequence[str],
                  cold_ids: Iterable[str] = ()) -> Examples:
    """Every next-track position of ``sessions``: positions t = 1..len-1 of each session.

    Plays of tracks missing from the catalog are dropped first (counted in ``Examples.dropped``),
    so a session A, X, B with X unknown gives the example A -> B. Plays are ordered by
    (session_id, ts); a session left with fewer than 2 plays gives no example.
    """
    catalog = catalog_index(catalog_ids)
    if isinstance(cold_ids, str):
        raise ValueError("cold_ids must be a collection of track ids, not a single string")
    plays, dropped = known_plays(sessions, "sessions", catalog)
    plays = plays.sort_values(["session_id", "ts"], kind="stable")

    items = plays["item"].to_numpy()
    hours = plays["ts"].dt.hour.to_numpy()
    weekdays = plays["ts"].dt.day_of_week.to_numpy()
    session = pd.factorize(plays["session_id"])[0]

    # Each play but the first of its session is a target; its prefix is the up to MAX_PREFIX
    # plays before it in its session, gathered at once through a (targets, MAX_PREFIX) index grid.
    index = np.arange(len(items))
    first_of_session = np.r_[True, session[1:] != session[:-1]]
    session_start = np.maximum.accumulate(np.where(first_of_session, index, 0))
    target = index[~first_of_session]
    prefix_start = np.maximum(session_start[target], target - MAX_PREFIX)
    lengths = target - prefix_start
    slots = np.arange(MAX_PREFIX)
    filled = slots < lengths[:, None]
    source = np.minimum(prefix_start[:, None] + slots, len(items) - 1)

    def prefix(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.where(filled, values[source], -1).astype(np.int64))

    cold_catalog = _catalog_mask(catalog, cold_ids)
    return Examples(
        items=prefix(items),
        lengths=torch.from_numpy(lengths.astype(np.int64)),
        hours=prefix(hours),
        weekdays=prefix(weekdays),
        target_hour=torch.from_numpy(hours[target].astype(np.int64)),
        target_weekday=torch.from_numpy(weekdays[target].astype(np.int64)),
        targets=torch.from_numpy(items[target].astype(np.int64)),
        cold=torch.from_numpy(cold_catalog[items[target]]),
        user_ids=plays["user_id"].to_numpy()[target].astype(str).tolist(),
        dropped=dropped,
    )


def cold_tracks(train: pd.DataFrame, catalog_ids: Sequence[str]) -> set[str]:
    """The catalog tracks never played in ``train``."""
    catalog = catalog_index(catalog_ids)
    require_frame(train, "train", ("track_id",))
    return set(catalog[~_catalog_mask(catalog, train["track_id"].unique())])


def catalog_index(catalog_ids: Sequence[str]) -> pd.Index:
    """The catalog's track ids as an index (position = catalog index), checked unique and non-empty."""
    if isinstance(catalog_ids, str):
        raise ValueError("catalog_ids must be a sequence of track ids, not a single string")
    catalog = pd.Index(list(catalog_ids))
    if len(catalog) == 0:
        raise ValueError("catalog_ids is empty")
    if not catalog.is_unique:
        duplicates = catalog[catalog.duplicated()].unique()[:5].tolist()
        raise ValueError(f"catalog_ids has duplicate track ids, e.g. {duplicates}")
    return catalog


def _catalog_mask(catalog: pd.Index, track_ids: Iterable[str]) -> np.ndarray:
    """(n_catalog,) bool: the catalog tracks among ``track_ids`` (ids outside the catalog ignored)."""
    mask = np.zeros(len(catalog), dtype=bool)
    indices = catalog.get_indexer(pd.Index(list(track_ids)).unique())
    mask[indices[indices >= 0]] = True
    return mask


def require_frame(frame: pd.DataFrame, name: str, columns: Sequence[str]) -> None:
    """A clear error naming ``name`` unless ``frame`` is a non-empty DataFrame with ``columns``."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks the column(s) {missing}; it has {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"{name} is empty")


def known_plays(frame: pd.DataFrame, name: str, catalog: pd.Index,
                columns: Sequence[str] = SESSION_COLUMNS) -> tuple[pd.DataFrame, int]:
    """``columns`` of the plays of catalog tracks, with their catalog index as ``item`` and ``ts``
    in UTC, and how many plays were dropped for a track outside the catalog."""
    require_frame(frame, name, columns)
    for column in ("session_id", "ts"):
        if frame[column].isna().any():
            raise ValueError(f"{name}.{column} has missing values")
    items = catalog.get_indexer(frame["track_id"])
    known = items >= 0
    if not known.any():
        raise ValueError(f"{name} has no play of a catalog track (is it the right catalog?)")
    plays = frame.loc[known, list(columns)].copy()
    plays["item"] = items[known]
    plays["ts"] = pd.to_datetime(plays["ts"], utc=True)  # naive timestamps are taken as UTC
    return plays, int((~known).sum())


# ---------------------------------------------------------------------------------------------
# Histories as the models read them


@dataclass
class EncodedHistories:
    """A batch of histories as a recommender reads them: ``model(vectors[items], mask, hours, weekdays)``."""

    items: torch.Tensor  # (B, L) catalog index of each play, padding as 0 (read through ``mask``)
    mask: torch.Tensor  # (B, L) bool, true at real plays
    lengths: torch.Tensor  # (B,) plays per history; the query is the one at step lengths - 1
    hours: torch.Tensor  # (B, L) hour of the play each step predicts, -1 = unknown or padding
    weekdays: torch.Tensor  # (B, L) weekday of the play each step predicts, -1 = unknown or padding

    def to(self, device: torch.device | str) -> EncodedHistories:
        return EncodedHistories(*(getattr(self, f).to(device) for f in ("items", "mask", "lengths", "hours", "weekdays")))


def encode_histories(items: torch.Tensor, hours: torch.Tensor | None = None, weekdays: torch.Tensor | None = None,
                     next_hour: torch.Tensor | None = None, next_weekday: torch.Tensor | None = None) -> EncodedHistories:
    """Padded histories -> the tensors a recommender reads, each step in the context of the play it predicts.

    ``items`` (B, L <= MAX_PREFIX) catalog indices, oldest first, -1 after each history's plays
    (at least one). ``hours`` / ``weekdays`` (B, L) of each play; ``None`` when the plays' times
    are unknown (a serving request sends track ids only): the plays are then taken to be at the
    time of the play asked for, the listener's current session. ``next_hour`` / ``next_weekday``
    (B,) of the play asked for, -1 or ``None`` = unknown. The shift itself is
    ``models.modules.step_context``, which training uses too.
    """
    if items.ndim != 2 or items.shape[1] > MAX_PREFIX:
        raise ValueError(f"items must be (batch, at most {MAX_PREFIX} plays), got shape {tuple(items.shape)}: "
                         f"keep the last {MAX_PREFIX} plays of a longer history")
    mask = items >= 0
    lengths = mask.sum(1)
    if len(items) and lengths.min() < 1:
        raise ValueError("every history needs at least one play")
    unknown = torch.full((len(items),), -1, dtype=torch.long, device=items.device)
    next_hour = unknown if next_hour is None else next_hour.to(items.device)
    next_weekday = unknown if next_weekday is None else next_weekday.to(items.device)
    if hours is None:
        hours = torch.where(mask, next_hour[:, None], -1)
    if weekdays is None:
        weekdays = torch.where(mask, next_weekday[:, None], -1)
    step_hours, step_weekdays = step_context(hours.to(items.device), weekdays.to(items.device), lengths,
                                             next_hour, next_weekday)
    return EncodedHistories(items.clamp(min=0), mask, lengths, step_hours, step_weekdays)
