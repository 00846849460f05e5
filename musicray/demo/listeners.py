"""Listeners and their sessions: who plays what, and when (the ground truth later evaluation relies on).

The model runs over any list of tracks, each described by a ``ListenedTrack``: its style, its
artist and a number that orders a style's tracks for "neighbour" moves (the demo: tempo in bpm).
What differs between catalogs is a ``ListeningStyles``: the styles (their order fixes the random
draws), each style's peak hour, and the share of cold tracks. ``listening_sessions`` draws the log;
the demo calls it with ``DEMO_LISTENING`` (``_listening_sessions``), and
``benchmarks/catalogs/real_music.py`` with its own styles and a 10% cold share.

Time runs over 56 days (8 weeks) from 2026-01-05 00:00 UTC. The *cutoff* is 45 days in
(2026-02-19 00:00 UTC, about 80% of the time): a session belongs to ``sessions_test`` when it
starts at or after the cutoff and to ``sessions_train`` otherwise, so every test session starts
after every train session.

* **Users.** Each user has a *taste*: 1, 2 or 3 favourite styles (probability 0.3 / 0.45 / 0.25,
  fewer only when there are fewer styles) with Dirichlet(2) weights, mixed with a 5% uniform
  background over all styles. Each user listens around an *anchor hour*: the taste-weighted
  circular mean of the favourite styles' peak hours plus N(0, 2 h) noise. An *activity*
  a ~ Gamma(2, 0.5) (mean 1) scales how often.
* **Sessions.** Every user has 1 + Poisson(2.6 a) train sessions and 1 + Poisson(0.25 a) test
  sessions (so every test user also has history), on distinct days of their period. A session
  starts at the anchor hour + N(0, 2.5 h) (a session that would overlap its predecessor is moved
  to 2 h after it ends) and holds 2 + Geometric(0.4) plays, capped at 20 (3-20, mean ~4.5);
  plays are 60-180 s apart. That is ~22 plays per user, about a quarter of them in test.
* **Time of day.** Each style has a peak hour (the demo: ambient 4h, classical 8h,
  folk 12h, chiptune 16h, rock 19h, jazz 21h, techno 23h, lofi 1h) and an affinity
  ``0.05 + exp(2 (cos(2 pi (h - peak) / 24) - 1))`` at hour h (1.05 at the peak, 0.19 six hours
  away, 0.07 at the opposite hour). Whenever a style is drawn for a user at hour h, it is drawn
  with probability proportional to taste(style) x affinity(style, h).
* **Popularity.** Within each style, the tracks that are not cold get a random popularity rank
  r = 1, 2, ... and weight r ** -1.1 (Zipf); "drawing by popularity" samples a style's tracks
  with these weights, so a few hits collect most plays and the rest form a long tail.
* **Within a session.** The first play draws a style (taste x time of day), then a track of it by
  popularity. Every next play, in this order:

  - with probability 0.03, any available track, uniformly (noise);
  - else with probability 0.8 the style stays. Then, with probability 0.3, another track by the
    same artist (by popularity); with probability 0.3, the track next to the current one
    (up or down, equally likely) in the style's neighbour order (the demo: tempo); otherwise a
    track of the style by popularity;
  - else the style switches: a new style (not the current one) by taste x time of day, then a
    track of it by popularity.

  A track never follows itself. In the demo, artists belong to one style and have 2-7 tracks.
* **Cold tracks** ("new releases"). A share of the tracks (the demo: 9%; fewer only when the test
  period holds fewer plays than that), picked round-robin across the styles, are never played in
  train sessions: before the cutoff they are unavailable. In test sessions they are available
  with the popularity of their style's 5th-ranked hit. A cold track that the sessions never
  picked is then written over a play of its own style (else any play) in a test session that
  does not hold its only play of another cold track, so every cold track is played in the
  test period.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from musicray.demo.plan import _SESSIONS_STREAM, STYLES, _TrackSpec


_START = datetime(2026, 1, 5, tzinfo=timezone.utc)
_DAYS = 56
_TRAIN_DAYS = 45

_P_RANDOM = 0.03
_P_STAY_IN_STYLE = 0.8
_P_SAME_ARTIST = 0.3
_P_TEMPO_NEIGHBOUR = 0.3
_ZIPF_EXPONENT = 1.1
_RELEASE_RANK = 5  # cold tracks, once released, are as popular as their style's 5th hit

_SESSIONS_SCHEMA = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("session_id", pa.string(), nullable=False),
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
])


@dataclass(frozen=True)
class ListenedTrack:
    """What the listening model knows of a track."""

    track_id: str
    style: str
    artist: str
    order: float  # sorts the style's tracks for "neighbour" moves (the demo: tempo in bpm)


@dataclass(frozen=True)
class ListeningStyles:
    """What differs between catalogs: the styles (in the order the draws use), their peak hours, the cold share."""

    styles: tuple[str, ...]
    peak_hours: Mapping[str, float]
    cold_share: float = 0.09

    def __post_init__(self):
        if not self.styles or len(set(self.styles)) != len(self.styles):
            raise ValueError(f"styles must be distinct and at least one, got {self.styles!r}")
        missing = [style for style in self.styles if style not in self.peak_hours]
        if missing:
            raise ValueError(f"styles without a peak hour: {', '.join(missing)}")
        if not 0 <= self.cold_share < 1:
            raise ValueError(f"cold_share must be in [0, 1), got {self.cold_share!r}")


DEMO_LISTENING = ListeningStyles(
    STYLES, {"ambient": 4, "classical": 8, "folk": 12, "chiptune": 16, "rock": 19, "jazz": 21, "techno": 23,
             "lofi": 1}, cold_share=0.09)
assert set(DEMO_LISTENING.peak_hours) == set(STYLES)


def _hour_affinity(hour: float, peaks: np.ndarray) -> np.ndarray:
    """How likely each style (peak hours ``peaks``) is at ``hour`` of the day: 1.05 at its peak, 0.07 opposite."""
    return 0.05 + np.exp(2.0 * (np.cos(2 * np.pi * (hour - peaks) / 24) - 1))


@dataclass(frozen=True)
class _Listener:
    taste: np.ndarray  # probability over the styles
    anchor_hour: float
    activity: float


def _draw_listener(rng: np.random.Generator, peaks: np.ndarray) -> _Listener:
    n_styles = len(peaks)
    count = min(int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25])), n_styles)
    favourites = rng.choice(n_styles, count, replace=False)
    weights = rng.dirichlet(np.full(count, 2.0))
    taste = np.full(n_styles, 0.05 / n_styles)
    taste[favourites] += 0.95 * weights
    angles = 2 * np.pi * peaks[favourites] / 24
    mean_angle = math.atan2(weights @ np.sin(angles), weights @ np.cos(angles))
    anchor = (24 * mean_angle / (2 * np.pi) + rng.normal(0, 2.0)) % 24
    return _Listener(taste, anchor, float(rng.gamma(2.0, 0.5)))


@dataclass
class _Session:
    user: int
    start: int  # seconds after _START
    offsets: np.ndarray  # seconds after ``start`` of each play
    tracks: list[int]

    @property
    def is_test(self) -> bool:
        return self.start >= _TRAIN_DAYS * 86400


def _schedule(user: int, listener: _Listener, rng: np.random.Generator) -> list[_Session]:
    """The user's sessions (start times and lengths, tracks still empty), in time order."""
    test_days = _DAYS - _TRAIN_DAYS
    n_train = min(_TRAIN_DAYS, 1 + int(rng.poisson(2.6 * listener.activity)))
    n_test = min(test_days, 1 + int(rng.poisson(0.25 * listener.activity)))
    days = np.concatenate([np.sort(rng.choice(_TRAIN_DAYS, n_train, replace=False)),
                           _TRAIN_DAYS + np.sort(rng.choice(test_days, n_test, replace=False))])
    sessions, free_from = [], 0
    for day in days:
        hour = (listener.anchor_hour + rng.normal(0, 2.5)) % 24
        start = max(int(day * 86400 + hour * 3600), free_from)
        plays = min(20, 2 + int(rng.geometric(0.4)))
        offsets = np.concatenate([[0], np.cumsum(rng.integers(60, 181, plays - 1))])
        sessions.append(_Session(user, start, offsets, []))
        free_from = start + int(offsets[-1]) + 2 * 3600
    return sessions


def _pick_cold(style: np.ndarray, n_styles: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` track indices, dealt round-robin over the styles (in random order) so every style has some."""
    by_style = [rng.permutation([int(i) for i in np.flatnonzero(style == k)]).tolist() for k in range(n_styles)]
    dealt = [by_style[k][i] for i in range(max(map(len, by_style))) for k in rng.permutation(n_styles)
             if i < len(by_style[k])]
    return np.array(sorted(dealt[:count]), dtype=int)


class _ListeningModel:
    """Draws tracks by the session rules; ``test`` picks the period (cold tracks are only available in test)."""

    def __init__(self, style: np.ndarray, artist: np.ndarray, order: np.ndarray, peaks: np.ndarray,
                 cold: np.ndarray, rng: np.random.Generator):
        self.rng = rng
        self.style = style  # style index per track
        self.artist = artist  # artist index per track
        self.peaks = peaks
        n_tracks, n_styles = len(style), len(peaks)
        is_cold = np.isin(np.arange(n_tracks), cold)
        self.weight = {False: np.zeros(n_tracks), True: np.zeros(n_tracks)}  # popularity per period
        for k in range(n_styles):
            catalogued = np.flatnonzero((self.style == k) & ~is_cold)
            zipf = (rng.permutation(len(catalogued)) + 1.0) ** -_ZIPF_EXPONENT
            self.weight[False][catalogued] = self.weight[True][catalogued] = zipf
            self.weight[True][(self.style == k) & is_cold] = min(_RELEASE_RANK, len(catalogued)) ** -_ZIPF_EXPONENT
        # Per period and style, the available tracks in neighbour order (the demo: slowest to fastest).
        self.neighbour_order = {test: [np.flatnonzero((self.style == k) & (weight > 0))[
                                           np.argsort(order[(self.style == k) & (weight > 0)], kind="stable")]
                                       for k in range(n_styles)]
                                for test, weight in self.weight.items()}

    def first(self, listener: _Listener, hour: float, test: bool) -> int:
        return self._by_popularity(self._style_for(listener, hour), test)

    def next(self, current: int, listener: _Listener, hour: float, test: bool) -> int:
        rng, weight = self.rng, self.weight[test]
        if rng.random() < _P_RANDOM:
            return self._draw(np.flatnonzero(weight > 0), None, current)
        style = int(self.style[current])
        if rng.random() >= _P_STAY_IN_STYLE:
            return self._by_popularity(self._style_for(listener, hour, exclude=style), test, current)
        move = rng.random()
        if move < _P_SAME_ARTIST:
            same_artist = np.flatnonzero((self.artist == self.artist[current]) & (weight > 0))
            track = self._draw(same_artist, weight[same_artist], current)
            if track is not None:
                return track
        elif move < _P_SAME_ARTIST + _P_TEMPO_NEIGHBOUR:
            order = self.neighbour_order[test][style]
            position = int(np.flatnonzero(order == current)[0])
            step = 1 if rng.random() < 0.5 else -1
            if not 0 <= position + step < len(order):  # at either end of the order: the only neighbour
                step = -step
            if 0 <= position + step < len(order):
                return int(order[position + step])
        return self._by_popularity(style, test, current)

    def _style_for(self, listener: _Listener, hour: float, exclude: int | None = None) -> int | None:
        weights = listener.taste * _hour_affinity(hour, self.peaks)
        if exclude is not None:
            weights[exclude] = 0.0
        return self._draw(np.arange(len(self.peaks)), weights)

    def _by_popularity(self, style: int | None, test: bool, current: int | None = None) -> int:
        members = np.flatnonzero(self.style == style)
        track = self._draw(members, self.weight[test][members], current)
        if track is None:  # the style's only available track is playing: any track, by popularity
            track = self._draw(np.arange(len(self.style)), self.weight[test], current)
        return track

    def _draw(self, candidates: np.ndarray, weights: np.ndarray | None, current: int | None = None) -> int | None:
        """A weighted draw (uniform without weights) that never repeats ``current``; None if nothing is left."""
        weights = np.ones(len(candidates)) if weights is None else np.array(weights, dtype=float)
        weights[candidates == current] = 0.0
        cumulative = np.cumsum(weights)
        if len(cumulative) == 0 or cumulative[-1] <= 0:
            return None
        return int(candidates[np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right")])


def listening_sessions(tracks: Sequence[ListenedTrack], users: int, seed: int,
                       styles: ListeningStyles) -> tuple[pa.Table, pa.Table, tuple[str, ...]]:
    """(sessions_train, sessions_test, cold track ids) for ``users`` listeners of ``tracks`` (module doc).

    A pure function of its arguments, the order of ``tracks`` included. Every style in ``styles``
    needs a track, and every track a style of ``styles``; track ids must be unique, and at least two
    tracks must be left once the cold ones are taken out (a track never follows itself).

    Raises:
        ValueError: naming the track, style or argument that breaks those rules.
    """
    if isinstance(users, bool) or not isinstance(users, (int, np.integer)) or users < 1:
        raise ValueError(f"users must be an integer >= 1, got {users!r}")
    index = {name: k for k, name in enumerate(styles.styles)}
    unknown = sorted({t.style for t in tracks if t.style not in index})
    if unknown:
        raise ValueError(f"tracks of styles that have no peak hour: {', '.join(unknown)}")
    empty = [name for name in styles.styles if not any(t.style == name for t in tracks)]
    if empty:
        raise ValueError(f"styles without tracks: {', '.join(empty)}")
    if len({t.track_id for t in tracks}) != len(tracks):
        raise ValueError("track ids must be unique")
    if len(tracks) - round(styles.cold_share * len(tracks)) < 2:  # a track never follows itself
        raise ValueError(f"tracks: at least two must be available before the cutoff, got {len(tracks)} tracks "
                         f"with a cold share of {styles.cold_share}")

    peaks = np.array([styles.peak_hours[name] for name in styles.styles], dtype=float)
    style = np.array([index[t.style] for t in tracks])
    rng = np.random.default_rng([seed, _SESSIONS_STREAM])
    listeners = [_draw_listener(rng, peaks) for _ in range(users)]
    sessions = [session for user, listener in enumerate(listeners) for session in _schedule(user, listener, rng)]
    test_plays = sum(len(s.offsets) for s in sessions if s.is_test)
    cold = _pick_cold(style, len(peaks), min(round(styles.cold_share * len(tracks)), test_plays), rng)

    artist = np.unique([t.artist for t in tracks], return_inverse=True)[1]
    order = np.array([t.order for t in tracks], dtype=float)
    model = _ListeningModel(style, artist, order, peaks, cold, rng)
    for session in sessions:
        listener = listeners[session.user]
        hours = (session.start + session.offsets) / 3600 % 24
        session.tracks = [model.first(listener, hours[0], session.is_test)]
        for hour in hours[1:]:
            session.tracks.append(model.next(session.tracks[-1], listener, hour, session.is_test))
    _release_unplayed(sessions, cold, model.style, rng)

    width_user, width_session = max(5, len(str(users - 1))), max(6, len(str(len(sessions) - 1)))
    start_us = int(_START.timestamp()) * 1_000_000
    tables = []
    for test in (False, True):
        rows: dict[str, list] = {name: [] for name in _SESSIONS_SCHEMA.names}
        for number, session in enumerate(sessions):  # numbered in (user, start) order across both splits
            if session.is_test != test:
                continue
            rows["user_id"] += [f"usr{session.user:0{width_user}d}"] * len(session.tracks)
            rows["session_id"] += [f"ses{number:0{width_session}d}"] * len(session.tracks)
            rows["track_id"] += [tracks[t].track_id for t in session.tracks]
            rows["ts"] += [start_us + (session.start + int(offset)) * 1_000_000 for offset in session.offsets]
        tables.append(pa.table(rows, schema=_SESSIONS_SCHEMA))
    return tables[0], tables[1], tuple(tracks[i].track_id for i in cold)


def _listening_sessions(specs: list[_TrackSpec], users: int, seed: int) -> tuple[pa.Table, pa.Table, tuple[str, ...]]:
    """The demo's sessions: its planned tracks, neighbours by tempo, ``DEMO_LISTENING``."""
    tracks = [ListenedTrack(s.track_id, s.style, s.artist, s.tempo_bpm) for s in specs]
    return listening_sessions(tracks, users, seed, DEMO_LISTENING)


def _release_unplayed(sessions: list[_Session], cold: np.ndarray, style: np.ndarray, rng: np.random.Generator) -> None:
    """Write every cold track the test sessions never picked over one test play, preferably of its style.

    A play may be overwritten unless it holds the only play of another cold track; the cold share
    is capped by the number of test plays, so a slot always exists.
    """
    test_slots = [(s, i) for s in sessions if s.is_test for i in range(len(s.tracks))]
    plays = {int(c): 0 for c in cold}
    for session, i in test_slots:
        if session.tracks[i] in plays:
            plays[session.tracks[i]] += 1
    for track in [c for c, count in plays.items() if count == 0]:
        free = [(s, i) for s, i in test_slots if plays.get(s.tracks[i], 2) > 1]
        candidates = [(s, i) for s, i in free if style[s.tracks[i]] == style[track]] or free
        session, i = candidates[rng.integers(len(candidates))]
        if session.tracks[i] in plays:
            plays[session.tracks[i]] -= 1
        session.tracks[i] = track
        plays[track] = 1
