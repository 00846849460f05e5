"""``generate``: the demo folder written end to end.

It checks the arguments, plans the catalog, synthesises the tracks (in worker processes), then
writes the manifest, the listening sessions and the cold-track list (the layout is in the
package docstring).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from musicray.demo.listeners import _listening_sessions
from musicray.demo.plan import STYLES, _catalog_table, _plan_catalog
from musicray.demo.render import _write_track


@dataclass(frozen=True)
class DemoCatalog:
    """Where ``generate`` wrote the demo; ``cold_tracks`` are played in test sessions only."""

    root: Path
    manifest: Path
    sessions_train: Path
    sessions_test: Path
    cold_tracks: tuple[str, ...]


def generate(out: str | Path, tracks: int = 300, users: int = 500, seed: int = 0,
             seconds: float = 30.0, workers: int | None = None,
             progress: Callable[[str], None] | None = None,
             on_track: Callable[[int], None] | None = None) -> DemoCatalog:
    """Write the demo catalog, its audio and the listening sessions into ``out`` (see the package doc).

    Args:
        out: the folder to write into; created if missing. Files of an earlier run are replaced.
        tracks: catalog size, at least two per style.
        users: number of listeners in the sessions.
        seed: everything written is a function of the arguments; ``workers`` changes nothing.
        seconds: length of every track.
        workers: processes synthesising audio; default ``min(2, os.cpu_count())``.
        progress: called with a line of text now and then.
        on_track: called with the number of tracks written so far, after each (a progress bar).

    Raises:
        ValueError: an argument is out of range; the message names it.
        RuntimeError: libsndfile cannot write MP3 or Ogg Vorbis.
    """
    _check_int("tracks", tracks, 2 * len(STYLES), "two per style")
    _check_int("users", users, 1)
    _check_int("seed", seed, 0)
    if workers is not None:
        _check_int("workers", workers, 1)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    _check_encoders()
    report = progress or (lambda message: None)

    root = Path(out).resolve()
    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    specs = _plan_catalog(tracks, seed, float(seconds))
    _remove_stale_audio(audio_dir, {Path(spec.uri).name for spec in specs})

    workers = workers or min(2, os.cpu_count() or 1)
    report(f"synthesising {tracks} tracks of {seconds:g} s with {workers} worker(s) into {audio_dir}")
    step = math.ceil(tracks / 10)  # about ten progress lines
    for done, _ in enumerate(_map(_write_track, [(spec, root) for spec in specs], workers), start=1):
        if on_track:
            on_track(done)
        if done % step == 0 or done == tracks:
            report(f"audio: {done}/{tracks} tracks")

    manifest = root / "catalog.parquet"
    pq.write_table(_catalog_table(specs), manifest)
    train, test, cold = _listening_sessions(specs, users, seed)
    sessions_train, sessions_test = root / "sessions_train.parquet", root / "sessions_test.parquet"
    pq.write_table(train, sessions_train)
    pq.write_table(test, sessions_test)
    (root / "cold_tracks.txt").write_text("".join(f"{track_id}\n" for track_id in cold))
    report(f"sessions: {train.num_rows} train plays, {test.num_rows} test plays, "
           f"{len(cold)} cold tracks, {users} users")
    return DemoCatalog(root, manifest, sessions_train, sessions_test, cold)


def _check_int(name: str, value, minimum: int, reason: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        reason = f" ({reason})" if reason else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{reason}, got {value!r}")


def _check_encoders() -> None:
    formats = sf.available_formats()
    if "MP3" not in formats or "VORBIS" not in sf.available_subtypes("OGG"):
        raise RuntimeError(f"the demo writes MP3 and Ogg Vorbis files, but libsndfile "
                           f"{sf.__libsndfile_version__} lacks one of them; install soundfile >= 0.12.1, "
                           f"whose wheels bundle libsndfile >= 1.1 with both")


def _map(function, items: list, workers: int):
    """``map`` in this process for one worker, else in a process pool.

    Forked workers start at once and need no ``__main__`` guard in the caller's script, but forking
    a process that runs threads (Ray, a web server) can deadlock; such callers get spawned workers.
    """
    if workers == 1:
        yield from map(function, items)
        return
    fork = "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork" if fork else "spawn")) as pool:
        yield from pool.map(function, items)


_AUDIO_NAME = re.compile(r"trk\d+\.(flac|mp3|ogg|wav)")


def _remove_stale_audio(audio_dir: Path, keep: set[str]) -> None:
    """Drop demo tracks left by an earlier run with other arguments, so the folder matches the manifest."""
    for path in audio_dir.iterdir():
        if _AUDIO_NAME.fullmatch(path.name) and path.name not in keep:
            path.unlink()
