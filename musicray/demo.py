"""Synthetic demo catalog: procedurally synthesised tracks in distinct styles, plus listening sessions.

``generate(out)`` writes::

    out/
      audio/trk00000.flac ...   one file per track: FLAC, MP3, Ogg Vorbis or WAV in about equal shares,
                                at 22050, 32000, 44100 or 48000 Hz, mono or stereo (drawn per track,
                                independently of the style, so none of them gives the style away)
      catalog.parquet           one row per track, sorted by track_id (columns: ``_CATALOG_SCHEMA``)
      sessions_train.parquet    user_id, session_id, track_id, ts (timestamp[us, UTC]); sorted by
      sessions_test.parquet     user, session, ts; a session_id lives in one file only
      cold_tracks.txt           the cold track ids, one per line

Everything is a pure function of the arguments: a rerun with the same arguments writes the same
audio samples and byte-identical Parquet files (Ogg files may differ in their random stream serial
number only). Each track draws from its own ``np.random.default_rng([seed, 0, track_index])``, so
tracks are reproducible on their own and the number of worker processes changes nothing.

Audio
-----
Every track is ``seconds`` long and synthesised with numpy from a random key, a tempo in its
style's range, a mode from the style's modes, a chord progression over that mode and small
per-track timbre variations. ``tempo_bpm`` in the catalog is the true (mean) tempo.

=========  ========  ====================================================================
style      bpm       sound
=========  ========  ====================================================================
ambient    60-80     slow detuned pads, sparse bell tones, a drone, long reverb; no drums
techno     122-132   four-on-the-floor kick, off-beat and 16th hats, claps, rolling saw bass,
                     filtered chord stabs with echo
rock       100-140   kick/backbeat snare/8th hats, crashes, distorted power chords
                     (double-tracked left/right), driving bass
jazz       110-170   swung ride cymbal with hi-hat on 2 and 4, walking upright bass,
                     syncopated 7th-chord comping on an electric piano, room reverb
chiptune   140-180   pulse-wave lead, fast arpeggios, 4-bit triangle bass, noise drums
lofi       70-90     lazy swung boom-bap drums, warbly (tape wow) electric-piano 7th/9th
                     chords, sub bass, everything low-passed, vinyl crackle and hiss
classical  60-100    piano: melody over Alberti or broken-chord bass, rubato, hall reverb;
                     no drums
folk       90-120    Karplus-Strong acoustic guitar (fingerpicked or strummed), optional
                     tin whistle melody and shaker
=========  ========  ====================================================================

Listening sessions (the ground truth later evaluation relies on)
-------------------------------------------------------------------
Time runs over 56 days (8 weeks) from 2026-01-05 00:00 UTC. The *cutoff* is 45 days in
(2026-02-19 00:00 UTC, about 80% of the time): a session belongs to ``sessions_test`` when it
starts at or after the cutoff and to ``sessions_train`` otherwise, so every test session starts
after every train session.

* **Users.** Each user has a *taste*: 1, 2 or 3 favourite styles (probability 0.3 / 0.45 / 0.25)
  with Dirichlet(2) weights, mixed with a 5% uniform background over all styles. Each user
  listens around an *anchor hour*: the taste-weighted circular mean of the favourite styles'
  peak hours plus N(0, 2 h) noise. An *activity* a ~ Gamma(2, 0.5) (mean 1) scales how often.
* **Sessions.** Every user has 1 + Poisson(2.6 a) train sessions and 1 + Poisson(0.25 a) test
  sessions (so every test user also has history), on distinct days of their period. A session
  starts at the anchor hour + N(0, 2.5 h) (a session that would overlap its predecessor is moved
  to 2 h after it ends) and holds 2 + Geometric(0.4) plays, capped at 20 (3-20, mean ~4.5);
  plays are 60-180 s apart. That is ~22 plays per user, about a quarter of them in test.
* **Time of day.** Each style has a peak hour (ambient 4h, classical 8h,
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
    (up or down, equally likely) in the style's tempo order; otherwise a track of the style by
    popularity;
  - else the style switches: a new style (not the current one) by taste x time of day, then a
    track of it by popularity.

  A track never follows itself. Artists belong to one style and have 2-7 tracks.
* **Cold tracks** ("new releases"). 9% of the tracks (fewer only when the test
  period holds fewer plays than that), picked round-robin across the styles, are never played in
  train sessions: before the cutoff they are unavailable. In test sessions they are available
  with the popularity of their style's 5th-ranked hit. A cold track that the sessions never
  picked is then written over a play of its own style (else any play) in a test session that
  does not hold its only play of another cold track, so every cold track is played in the
  test period.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from scipy import signal

STYLES: tuple[str, ...] = ("ambient", "techno", "rock", "jazz", "chiptune", "lofi", "classical", "folk")

_START = datetime(2026, 1, 5, tzinfo=timezone.utc)
_DAYS = 56
_TRAIN_DAYS = 45
_COLD_SHARE = 0.09

_FORMATS = ("flac", "mp3", "ogg", "wav")
_SAMPLE_RATES = (22050, 32000, 44100, 48000)
_CHANNELS = (1, 2)


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
    """Write the demo catalog, its audio and the listening sessions into ``out`` (see the module doc).

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


# --------------------------------------------------------------------------------------------------
# Catalog plan: which track is what
# --------------------------------------------------------------------------------------------------

_AUDIO_STREAM, _CATALOG_STREAM, _SESSIONS_STREAM = 0, 1, 2  # second word of every rng seed

_KEY_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

_MODES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "major_pentatonic": (0, 2, 4, 7, 9),
    "minor_pentatonic": (0, 3, 5, 7, 10),
    "blues": (0, 3, 5, 6, 7, 10),
}


@dataclass(frozen=True)
class _Style:
    tempo: tuple[float, float]  # bpm range
    modes: tuple[str, ...]
    progressions: tuple[tuple[int, ...], ...]  # chord roots as scale degrees (0 = tonic)


_STYLE_MUSIC: dict[str, _Style] = {
    "ambient": _Style((60, 80), ("lydian", "major", "dorian"), ((0, 3), (0, 5, 3, 4), (0, 2, 3, 0), (5, 3, 0, 4))),
    "techno": _Style((122, 132), ("minor", "phrygian", "dorian"), ((0,), (0, 0, 5, 6), (0, 6), (0, 3))),
    "rock": _Style((100, 140), ("minor", "mixolydian", "minor_pentatonic", "blues", "major"),
                   ((0, 6, 5, 6), (0, 3, 4, 3), (0, 5, 3, 4), (0, 0, 3, 4))),
    "jazz": _Style((110, 170), ("dorian", "mixolydian", "major"),
                   ((1, 4, 0, 0), (1, 4, 0, 5), (0, 5, 1, 4), (2, 5, 1, 4))),
    "chiptune": _Style((140, 180), ("major", "minor", "major_pentatonic", "dorian"),
                       ((0, 5, 3, 4), (0, 4, 5, 3), (0, 3, 0, 4), (5, 3, 4, 0))),
    "lofi": _Style((70, 90), ("dorian", "minor", "major"), ((1, 4, 0, 5), (0, 3), (3, 2, 1, 0), (0, 5, 1, 4))),
    "classical": _Style((60, 100), ("major", "minor", "harmonic_minor"),
                        ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (0, 1, 4, 0))),
    "folk": _Style((90, 120), ("major", "mixolydian", "major_pentatonic"),
                   ((0, 3, 0, 4), (0, 4, 5, 3), (0, 3, 4, 4), (0, 6, 3, 0))),
}
assert set(_STYLE_MUSIC) == set(STYLES)

_ARTIST_WORDS = (
    ("Amber", "Blue", "Crimson", "Distant", "Electric", "Faded", "Golden", "Hollow", "Iron", "Jade", "Kind",
     "Lunar", "Midnight", "Neon", "Olive", "Paper", "Quiet", "Rusty", "Silver", "Tidal", "Velvet", "Wild",
     "Young", "Zero"),
    ("Anchors", "Birds", "Cinema", "Drifters", "Echoes", "Foxes", "Gardens", "Harbour", "Islands", "Jets",
     "Kites", "Lanterns", "Machines", "Nomads", "Orchard", "Pilots", "Quarry", "Rivers", "Signals", "Tigers",
     "Unicorns", "Valleys", "Waves", "Wolves"),
)
_TITLE_WORDS = (
    ("Morning", "Static", "Glass", "Summer", "Northern", "Broken", "Slow", "Silent", "Hidden", "Electric",
     "Last", "Little", "Endless", "Paper", "Winter", "Open"),
    ("Lights", "Dreams", "Roads", "Rain", "Tide", "Hearts", "Lines", "Skies", "Fields", "Motion", "Waltz",
     "Echo", "Garden", "Signal", "Letters", "Harbour"),
)


@dataclass(frozen=True)
class _TrackSpec:
    index: int
    track_id: str
    style: str
    artist: str
    title: str
    mode: str
    tonic: int  # pitch class, 0 = C
    tempo_bpm: float
    format: str
    sample_rate: int
    channels: int
    seconds: float
    seed: int

    @property
    def uri(self) -> str:
        return f"audio/{self.track_id}.{self.format}"

    @property
    def frames(self) -> int:
        return round(self.seconds * self.sample_rate)


def _plan_catalog(tracks: int, seed: int, seconds: float) -> list[_TrackSpec]:
    rng = np.random.default_rng([seed, _CATALOG_STREAM])

    def balanced(options: Sequence, count: int) -> list:
        """``count`` draws from ``options`` in equal shares, shuffled."""
        return [options[i % len(options)] for i in rng.permutation(count)]

    styles = balanced(STYLES, tracks)
    formats = balanced(_FORMATS, tracks)
    sample_rates = balanced(_SAMPLE_RATES, tracks)
    channels = balanced(_CHANNELS, tracks)
    artists = _assign_artists(styles, rng)
    width = max(5, len(str(tracks - 1)))
    specs = []
    for i, style in enumerate(styles):
        music = _STYLE_MUSIC[style]
        specs.append(_TrackSpec(
            index=i, track_id=f"trk{i:0{width}d}", style=style, artist=artists[i],
            title=f"{rng.choice(_TITLE_WORDS[0])} {rng.choice(_TITLE_WORDS[1])}",
            mode=str(rng.choice(music.modes)), tonic=int(rng.integers(12)),
            tempo_bpm=round(float(rng.uniform(*music.tempo)), 2),
            format=formats[i], sample_rate=sample_rates[i], channels=channels[i], seconds=seconds, seed=seed))
    return specs


def _assign_artists(styles: list[str], rng: np.random.Generator) -> list[str]:
    """Group each style's tracks into artists of 2-7 tracks; artist names are unique."""
    adjectives, nouns = _ARTIST_WORDS
    names = [f"{adjective} {noun}" for adjective in adjectives for noun in nouns]
    order = rng.permutation(len(names))
    artist_of = [""] * len(styles)
    artist_number = 0
    for style in STYLES:
        members = rng.permutation([i for i, s in enumerate(styles) if s == style]).tolist()
        groups = []
        while members:
            size = int(rng.integers(2, 7))
            groups.append(members[:size])
            members = members[size:]
        if len(groups) > 1 and len(groups[-1]) == 1:  # nobody releases alone
            single = groups.pop()
            groups[-1] += single
        for group in groups:
            rounds, k = divmod(artist_number, len(names))
            name = names[order[k]] + (f" {rounds + 1}" if rounds else "")  # numbered past the word pairs
            artist_number += 1
            for i in group:
                artist_of[i] = name
    return artist_of


_CATALOG_SCHEMA = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),  # relative to the manifest's folder
    pa.field("label", pa.string(), nullable=False),  # the style
    pa.field("title", pa.string()),
    pa.field("artist", pa.string()),
    pa.field("mode", pa.string()),
    pa.field("key", pa.string()),  # tonic, e.g. "F#"
    pa.field("tempo_bpm", pa.float64()),
    pa.field("format", pa.string()),
    pa.field("sample_rate", pa.int32()),
    pa.field("channels", pa.int32()),
    pa.field("duration_s", pa.float64()),
])


def _catalog_table(specs: list[_TrackSpec]) -> pa.Table:
    columns = {
        "track_id": [s.track_id for s in specs],
        "uri": [s.uri for s in specs],
        "label": [s.style for s in specs],
        "title": [s.title for s in specs],
        "artist": [s.artist for s in specs],
        "mode": [s.mode for s in specs],
        "key": [_KEY_NAMES[s.tonic] for s in specs],
        "tempo_bpm": [s.tempo_bpm for s in specs],
        "format": [s.format for s in specs],
        "sample_rate": [s.sample_rate for s in specs],
        "channels": [s.channels for s in specs],
        "duration_s": [s.frames / s.sample_rate for s in specs],
    }
    return pa.table(columns, schema=_CATALOG_SCHEMA)


_AUDIO_NAME = re.compile(r"trk\d+\.(flac|mp3|ogg|wav)")


def _remove_stale_audio(audio_dir: Path, keep: set[str]) -> None:
    """Drop demo tracks left by an earlier run with other arguments, so the folder matches the manifest."""
    for path in audio_dir.iterdir():
        if _AUDIO_NAME.fullmatch(path.name) and path.name not in keep:
            path.unlink()


# --------------------------------------------------------------------------------------------------
# Synthesis building blocks
# --------------------------------------------------------------------------------------------------

_TABLE_SIZE = 4096  # wavetable length; a power of two so a phase index wraps with a bit mask

# Audio is float32 throughout: half the memory traffic, and numpy's float32 sin/exp are vectorised.
_F32 = np.float32


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


@lru_cache(maxsize=512)
def _harmonic_table(amplitudes: tuple[float, ...]) -> np.ndarray:
    """One period of sum_k a_k sin(2 pi k x), sampled at ``_TABLE_SIZE`` points (an inverse FFT)."""
    spectrum = np.zeros(_TABLE_SIZE // 2 + 1, dtype=complex)
    spectrum[1: len(amplitudes) + 1] = -0.5j * _TABLE_SIZE * np.asarray(amplitudes)
    return np.fft.irfft(spectrum, n=_TABLE_SIZE).astype(_F32)


def _read_table(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """A periodic wavetable read at ``cycles`` (phase in periods); far cheaper than summing partials."""
    index = (cycles * len(table)).astype(np.int64)
    index &= len(table) - 1
    return table[index]


def _table_oscillator(table: np.ndarray, freq: float, n: int, sr: int, phase: float = 0.0) -> np.ndarray:
    cycles = np.arange(n, dtype=np.float64)
    cycles *= freq / sr  # in place: these arrays are long, and fresh ones cost page faults
    cycles += phase
    return _read_table(table, cycles)


def _oscillator(freq: float, n: int, sr: int, amplitudes: Sequence[float], phase: float = 0.0) -> np.ndarray:
    """A band-limited harmonic tone: partials above Nyquist are dropped, so nothing aliases."""
    partials = max(1, min(len(amplitudes), int(sr / 2 / freq)))
    return _table_oscillator(_harmonic_table(tuple(amplitudes[:partials])), freq, n, sr, phase)


def _saw(partials: int = 30, rolloff: float = 1.0) -> list[float]:
    return [rolloff ** (k - 1) / k for k in range(1, partials + 1)]


def _through_lowpass(amplitudes: Sequence[float], freq: float, cutoff: float, order: int = 2) -> list[float]:
    """Harmonic amplitudes of a steady tone heard through a Butterworth low-pass.

    Baking the filter into the wavetable spares filtering the whole rendered part.
    """
    return [a / math.sqrt(1 + (k * freq / cutoff) ** (2 * order)) for k, a in enumerate(amplitudes, start=1)]


def _pulse_table(duty: float) -> np.ndarray:
    """A naive (aliasing, like a game console's) pulse wave; the mean is removed."""
    table = np.where(np.arange(_TABLE_SIZE) < duty * _TABLE_SIZE, 1.0, -1.0)
    return (table - table.mean()).astype(_F32)


# A game console's triangle channel: 16 volume steps up and down.
_CHIP_TRIANGLE = np.repeat(np.concatenate([np.arange(16), np.arange(15, -1, -1)]) / 7.5 - 1.0,
                           _TABLE_SIZE // 32).astype(_F32)


def _decay(n: int, sr: int, seconds: float, attack: float = 0.003) -> np.ndarray:
    """Exponential decay (time constant ``seconds``) after a short linear attack."""
    envelope = np.exp(np.arange(n, dtype=_F32) * _F32(-1.0 / (seconds * sr)))
    ramp = min(n, max(1, int(attack * sr)))
    envelope[:ramp] *= np.linspace(0.0, 1.0, ramp, endpoint=False, dtype=_F32)
    return envelope


def _gate(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    """Linear fade in, hold, linear fade out."""
    return _fade(np.ones(n, dtype=_F32), sr, attack, release)


def _fade(x: np.ndarray, sr: int, fade_in: float, fade_out: float) -> np.ndarray:
    """Linear fades over the first and last seconds of ``x`` (along its last axis), in place."""
    n = x.shape[-1]
    a, r = min(n // 2, int(fade_in * sr)), min(n // 2, int(fade_out * sr))
    x[..., :a] *= np.linspace(0.0, 1.0, a, endpoint=False, dtype=_F32)
    x[..., n - r:] *= np.linspace(1.0, 0.0, r, dtype=_F32)
    return x


def _noise(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=_F32)


def _place(buffer: np.ndarray, start: int, sound: np.ndarray, gain: float = 1.0) -> None:
    """Mix ``sound`` into ``buffer`` from sample ``start`` on, dropping what runs past the end."""
    if start >= len(buffer):
        return
    end = min(len(buffer), start + len(sound))
    buffer[start:end] += gain * sound[: end - start]


def _filter(x: np.ndarray, kind: str, cutoff, sr: int, order: int = 2) -> np.ndarray:
    """Butterworth filter along the last axis; ``cutoff`` is [low, high] for a band-pass."""
    nyquist = sr / 2
    cutoff = np.clip(np.asarray(cutoff, dtype=float), 20.0, 0.95 * nyquist)
    sos = signal.butter(order, cutoff / nyquist, kind, output="sos").astype(_F32)
    return signal.sosfilt(sos, x.astype(_F32, copy=False), axis=-1)


def _karplus_strong(freq: float, n: int, sr: int, rng: np.random.Generator, ring: float = 2.0,
                    damping: float = 3000.0, pick: float = 2000.0) -> np.ndarray:
    """A plucked string (Karplus-Strong): a noise burst circulating in a lossy delay line.

    Each pass through the loop multiplies the burst's spectrum by the loop's response H, so the
    whole note is built at once in the frequency domain: pass p is irfft(X * H**p). Partials ring
    for ``ring`` seconds (to -60 dB), those at ``damping`` Hz half as long, whatever the sample
    rate; the burst is low-passed at ``pick`` Hz (a softer or harder pick). As in the classic
    two-point averaging loop, H delays by half a sample, hence the period of ``sr / freq - 0.5``.
    """
    period = max(2, round(sr / freq - 0.5))
    passes = -(-n // period)
    burst = _filter(rng.uniform(-1, 1, period), "lowpass", pick, sr, order=1)
    spectrum = np.fft.rfft(burst - burst.mean())
    omega = 2 * np.pi * np.arange(len(spectrum)) / period
    partial_ring = ring / (1 + (omega * sr / (2 * np.pi) / damping) ** 2)
    loss = 10.0 ** (-3.0 / (partial_ring * freq))  # per pass: about ``freq`` passes a second
    p = np.arange(passes)[:, None]
    response = loss**p * np.exp(-0.5j * omega * p)
    return np.fft.irfft(spectrum * response, n=period, axis=1).ravel()[:n].astype(_F32)


def _decaying_tone(sr: int, amplitudes: Sequence[float], seconds: float, decay: float,
                   cutoff: float | None = None) -> Callable[[float], np.ndarray]:
    """A ``_Sampler`` voice: a harmonic tone, low-passed at ``cutoff`` if given, fading exponentially."""
    n = int(seconds * sr)

    def voice(freq: float) -> np.ndarray:
        partials = amplitudes if cutoff is None else _through_lowpass(amplitudes, freq, cutoff)
        return _oscillator(freq, n, sr, partials) * _decay(n, sr, decay)

    return voice


class _Sampler:
    """Plays decaying notes of one instrument; each pitch is synthesised once and reused, like a ROM sampler."""

    def __init__(self, voice: Callable[[float], np.ndarray], sr: int, release: float = 0.03):
        self._voice, self._sr = voice, sr
        self._release = np.linspace(1.0, 0.0, max(1, int(release * sr)), dtype=_F32)
        self._notes: dict[float, np.ndarray] = {}

    def play(self, buffer: np.ndarray, start: int, midi: float, seconds: float, velocity: float = 1.0) -> None:
        if start >= len(buffer):
            return
        if midi not in self._notes:
            self._notes[midi] = self._voice(_hz(midi))
        sample = self._notes[midi]
        length = min(len(sample), int(seconds * self._sr) + len(self._release))
        note = sample[:length] * _F32(velocity)
        fade = min(length, len(self._release))
        note[length - fade:] *= self._release[len(self._release) - fade:]  # damped when the key is released
        _place(buffer, start, note)


# -- drum one-shots ---------------------------------------------------------------------------------

def _kick(sr: int, top: float = 160.0, bottom: float = 48.0, sweep: float = 0.035, length: float = 0.45,
          decay: float = 0.18) -> np.ndarray:
    """A sine whose pitch falls exponentially from ``top`` to ``bottom``."""
    t = np.arange(int(length * sr)) / sr
    phase = 2 * np.pi * (bottom * t + (top - bottom) * sweep * (1 - np.exp(-t / sweep)))
    return np.sin(phase).astype(_F32) * _decay(len(t), sr, decay, attack=0.001)


def _noise_hit(sr: int, rng: np.random.Generator, length: float, decay: float,
               band: tuple[float, float | None]) -> np.ndarray:
    """Filtered noise burst: high-pass when the band has no top, else band-pass."""
    n = int(length * sr)
    low, high = band
    noise = (_filter(_noise(rng, n), "highpass", low, sr) if high is None
             else _filter(_noise(rng, n), "bandpass", [low, high], sr))
    return noise * _decay(n, sr, decay, attack=0.0005)


def _snare(sr: int, rng: np.random.Generator, tone: float = 190.0, snappy: float = 0.14) -> np.ndarray:
    n = int(0.3 * sr)
    body = _oscillator(tone, n, sr, [1.0]) * _decay(n, sr, 0.05, attack=0.001)
    return 0.6 * body + _noise_hit(sr, rng, 0.3, snappy, (1500.0, 9000.0))


def _clap(sr: int, rng: np.random.Generator) -> np.ndarray:
    burst = _noise_hit(sr, rng, 0.25, 0.08, (900.0, 4000.0))
    clap = burst.copy()
    for delay in (0.011, 0.022):  # a clap is a few hands slightly apart
        _place(clap, int(delay * sr), burst, 0.7)
    return clap


def _ride(sr: int, rng: np.random.Generator, decay: float = 0.9) -> np.ndarray:
    """Metallic: inharmonic square partials (like an analogue drum machine's cymbal) plus noise."""
    n = int(2.5 * sr)
    square = _pulse_table(0.5)
    partials = sum(_table_oscillator(square, f, n, sr) for f in rng.uniform(300, 900, 6))
    tone = _filter(partials / 6 + 0.5 * _noise(rng, n), "bandpass", [2500.0, 9000.0], sr)
    return tone * _decay(n, sr, decay, attack=0.001)


def _chip_noise(sr: int, rng: np.random.Generator, length: float, decay: float, rate: float) -> np.ndarray:
    """A game console's noise channel: random levels held for ``sr / rate`` samples."""
    n = int(length * sr)
    hold = max(1, int(sr / rate))
    levels = rng.choice(np.array([-1.0, 1.0], dtype=_F32), size=-(-n // hold))
    return np.repeat(levels, hold)[:n] * _decay(n, sr, decay, attack=0.0005)


# -- effects ----------------------------------------------------------------------------------------

def _reverb(x: np.ndarray, sr: int, rng: np.random.Generator, seconds: float, wet: float,
            damping: float = 4500.0) -> np.ndarray:
    """Convolution with decaying noise; each channel gets its own tail, which also widens the image.

    The tail is dark, so it is computed from a mono send at a quarter (a half, at 22050 and
    32000 Hz) of the sample rate, which makes the long convolution several times cheaper.
    """
    factor = sr // 11025  # every rate in _SAMPLE_RATES is at least 22050
    window = signal.firwin(6 * factor + 1, 1 / factor, window="hann").astype(_F32)  # plenty for a reverb
    send = signal.resample_poly(x.mean(axis=0), 1, factor, window=window)
    low_sr = sr / factor
    n_tail = int(seconds * low_sr)
    tails = _noise(rng, 2, n_tail) * np.exp(np.arange(n_tail, dtype=_F32) * _F32(-6.9 / n_tail))  # -60 dB
    tails = _filter(tails, "lowpass", min(damping, 0.4 * low_sr), low_sr, order=1)
    tails /= np.sqrt((tails**2).sum(axis=1, keepdims=True))
    tail = signal.fftconvolve(send[None, :], tails, axes=1)[:, : len(send)]
    return x + wet * signal.resample_poly(tail, factor, 1, axis=1, window=window)[:, : x.shape[1]]


def _vinyl(n: int, sr: int, rng: np.random.Generator, cutoff: float) -> np.ndarray:
    """Crackle (sparse clicks of random size) over hiss; one second of hiss, looped, sounds like any other."""
    hiss = _filter(_noise(rng, sr), "lowpass", cutoff, sr) * _F32(0.004)
    noise = np.tile(hiss, -(-n // sr))[:n]
    click = _filter(signal.unit_impulse(int(0.004 * sr)), "bandpass", [1000.0, 6000.0], sr)
    count = rng.poisson(rng.uniform(8, 20) * n / sr)
    for start, size in zip(rng.integers(0, n, count), rng.pareto(3.0, count)):
        _place(noise, int(start), click, float(rng.choice([-1, 1]) * min(size, 4.0)))
    return noise


# --------------------------------------------------------------------------------------------------
# Songs and arrangements
# --------------------------------------------------------------------------------------------------

@dataclass
class _Song:
    """The musical frame a style arranges notes in; positions are in beats from the start."""

    sr: int
    n: int  # samples
    bpm: float
    tonic: int  # MIDI number of the tonic in octave 3 (C3 = 48)
    scale: tuple[int, ...]  # semitones above the tonic
    progression: tuple[int, ...]  # chord roots as scale degrees, one per chord slot
    rng: np.random.Generator
    swing: float = 0.5  # where an off-beat 8th falls within the beat (0.5 = straight, 2/3 = triplet swing)
    rubato: float = 0.0  # +- fraction by which the beat length breathes over a phrase
    phrase_beats: float = 16.0

    @property
    def beat(self) -> float:
        return 60.0 / self.bpm

    @property
    def bars(self) -> int:
        return math.ceil(self.n / self.sr / (4 * self.beat)) + 1

    def silence(self) -> np.ndarray:
        return np.zeros(self.n, dtype=_F32)

    def pitch(self, degree: int, octave: int = 0) -> int:
        steps = len(self.scale)
        return self.tonic + 12 * (octave + degree // steps) + self.scale[degree % steps]

    def root(self, slot: int) -> int:
        return self.progression[slot % len(self.progression)]

    def chord(self, slot: int, size: int = 3, octave: int = 0) -> list[int]:
        """Stack every other scale note on the slot's root: triads, 7ths (size 4), 9ths (size 5)."""
        return [self.pitch(self.root(slot) + 2 * k, octave) for k in range(size)]

    def seconds(self, beats: float) -> float:
        """When beat position ``beats`` sounds, after swing and rubato."""
        whole, within = divmod(beats, 1.0)
        within = (within / 0.5 * self.swing if within < 0.5
                  else self.swing + (within - 0.5) / 0.5 * (1 - self.swing))
        position = whole + within
        # Rubato: the beat lengthens towards phrase boundaries and hurries mid-phrase; the mean tempo holds.
        breathing = self.rubato * self.phrase_beats / (2 * np.pi) * math.sin(2 * np.pi * position / self.phrase_beats)
        return (position + breathing) * self.beat

    def at(self, beats: float) -> int:
        """The sample where a note at ``beats`` starts."""
        return round(self.seconds(beats) * self.sr)

    def duration(self, beats: float) -> float:
        return beats * self.beat

    def melody(self, count: int, low: int, high: int, leap: float = 0.2) -> list[int]:
        """A random walk over scale degrees, mostly by step, kept within [low, high]."""
        degree = int(self.rng.integers(low, high + 1))
        notes = []
        for _ in range(count):
            notes.append(degree)
            size = int(self.rng.integers(2, 5)) if self.rng.random() < leap else 1
            degree = int(np.clip(degree + size * self.rng.choice([-1, 1]), low, high))
        return notes

    def hits(self, sample: np.ndarray, positions: Sequence[float], velocities: Sequence[float] | None = None,
             jitter: float = 0.0, into: np.ndarray | None = None) -> np.ndarray:
        """A one-shot at each position (in beats within the bar) of every bar; ``jitter`` humanises velocity."""
        buffer = self.silence() if into is None else into
        velocities = velocities or [1.0] * len(positions)
        for bar in range(self.bars):
            for position, velocity in zip(positions, velocities):
                _place(buffer, self.at(4 * bar + position), sample, velocity * (1 + jitter * (self.rng.random() - 0.5)))
        return buffer


class _Mix:
    """A stereo bus; mono parts are panned with a constant-power law."""

    def __init__(self, n: int):
        self.out = np.zeros((2, n), dtype=_F32)
        self._scratch = np.empty(n, dtype=_F32)  # reused: fresh temporaries this long cost page faults

    def add(self, part: np.ndarray, gain: float = 1.0, pan: float = 0.0) -> None:
        angle = (pan + 1) * np.pi / 4
        for channel, channel_gain in enumerate((math.cos(angle), math.sin(angle))):
            np.multiply(part, _F32(gain * channel_gain), out=self._scratch)
            self.out[channel] += self._scratch

    def add_stereo(self, left: np.ndarray, right: np.ndarray) -> None:
        self.out[0] += left
        self.out[1] += right


def _ambient(song: _Song, mix: _Mix) -> None:
    rng, sr, n = song.rng, song.sr, song.n
    bars_per_chord = 2
    tone, cutoff = _saw(12, rng.uniform(0.35, 0.65)), rng.uniform(700, 1500)
    detune = rng.uniform(0.002, 0.006)
    attack, release = rng.uniform(1.0, 2.5), rng.uniform(1.5, 3.0)
    pad = np.zeros((2, n), dtype=_F32)  # chord notes alternate between a left- and a right-leaning voice
    for slot, bar in enumerate(range(0, song.bars, bars_per_chord)):
        length = int((song.duration(4 * bars_per_chord) + release) * sr)  # rings into the next chord
        envelope = _gate(length, sr, attack, release)
        for k, note in enumerate(song.chord(slot, size=4, octave=1)):
            f = _hz(note) * (1 + detune * rng.uniform(-1, 1))  # detuned notes beat slowly against each other
            tone_through = _through_lowpass(tone, f, cutoff)
            _place(pad[k % 2], song.at(4 * bar), _oscillator(f, length, sr, tone_through, rng.random()) * envelope)
    mix.add_stereo(0.22 * pad[0] + 0.08 * pad[1], 0.08 * pad[0] + 0.22 * pad[1])
    mix.add(_fade(_oscillator(_hz(song.tonic - 12), n, sr, [1.0, 0.3]), sr, 3.0, 3.0), 0.25)  # drone

    ratio = rng.uniform(2.7, 3.0)  # bells: an inharmonic upper partial
    ring = int(3 * sr)
    bell = _Sampler(lambda f: _oscillator(f, ring, sr, [1.0]) * _decay(ring, sr, 1.2)
                    + 0.3 * _oscillator(f * ratio, ring, sr, [1.0]) * _decay(ring, sr, 0.4), sr, release=0.5)
    bells = song.silence()
    beats = np.flatnonzero(rng.random(4 * song.bars) < rng.uniform(0.15, 0.35))
    for beat, degree in zip(beats, song.melody(len(beats), 7, 14)):
        bell.play(bells, song.at(beat), song.pitch(degree, 1), 2.5, rng.uniform(0.5, 1.0))
    mix.add(bells, 0.12, pan=rng.uniform(-0.6, 0.6))
    mix.out = _reverb(mix.out, sr, rng, seconds=rng.uniform(2.5, 3.5), wet=0.7, damping=3000.0)


def _techno(song: _Song, mix: _Mix) -> None:
    rng, sr = song.rng, song.sr
    mix.add(song.hits(_kick(sr, top=rng.uniform(130, 180), decay=rng.uniform(0.15, 0.25)), [0, 1, 2, 3]), 0.9)
    hat = _noise_hit(sr, rng, 0.1, rng.uniform(0.015, 0.035), (rng.uniform(6000, 8000), None))
    hats = song.hits(hat, [0.5, 1.5, 2.5, 3.5])
    if rng.random() < 0.6:
        song.hits(hat, [beat + q for beat in range(4) for q in (0.25, 0.75)], [0.35] * 8, jitter=0.3, into=hats)
    mix.add(hats, 0.5, pan=rng.uniform(-0.3, 0.3))
    if rng.random() < 0.7:
        mix.add(song.hits(_clap(sr, rng), [1, 3]), 0.35, pan=0.1)

    bass = _Sampler(_decaying_tone(sr, _saw(20, rng.uniform(0.8, 1.0)), 0.5, 0.12, cutoff=rng.uniform(400, 1200)), sr)
    line = song.silence()
    offsets = (0.25, 0.5, 0.75) if rng.random() < 0.6 else (0.5,)  # rolling 16ths, else off-beat bass
    for bar in range(song.bars):
        for position in (beat + offset for beat in range(4) for offset in offsets):
            note = song.pitch(song.root(bar // 2), -1) + (12 if rng.random() < 0.15 else 0)
            bass.play(line, song.at(4 * bar + position), note, song.duration(0.2))
    mix.add(line, 0.45)

    stab = _Sampler(_decaying_tone(sr, _saw(25), 0.6, 0.12, cutoff=rng.uniform(1500, 3500)), sr)
    stabs = song.silence()
    rhythm = np.flatnonzero(rng.random(32) < 0.15) / 4  # a two-bar 16th-note pattern
    for bar in range(0, song.bars, 2):
        for position in rhythm:
            for note in song.chord(bar // 2, size=4, octave=1):
                stab.play(stabs, song.at(4 * bar + position), note, song.duration(0.25), 0.5)
    echo = song.silence()  # a dotted-8th echo, mostly on the other side
    _place(echo, int(song.duration(0.75) * sr), stabs, 0.45)
    mix.add_stereo(0.3 * stabs + 0.1 * echo, 0.1 * stabs + 0.3 * echo)


def _rock(song: _Song, mix: _Mix) -> None:
    rng, sr = song.rng, song.sr
    kicks = [0, 2] + ([2.5] if rng.random() < 0.5 else [])
    mix.add(song.hits(_kick(sr, top=rng.uniform(110, 140), decay=0.12), kicks), 0.8)
    mix.add(song.hits(_snare(sr, rng, snappy=rng.uniform(0.12, 0.2)), [1, 3], jitter=0.1), 0.6, pan=0.05)
    hat = _noise_hit(sr, rng, 0.1, 0.04, (7000.0, None))
    mix.add(song.hits(hat, [k / 2 for k in range(8)], [1.0, 0.6] * 4, jitter=0.2), 0.3, pan=-0.2)
    crashes = song.silence()
    crash = _noise_hit(sr, rng, 2.0, 0.8, (4000.0, None))
    for bar in range(0, song.bars, 4):
        _place(crashes, song.at(4 * bar), crash)
    mix.add(crashes, 0.2, pan=0.4)

    sustained = rng.random() < 0.4  # open ringing chords, else palm-muted 8th-note chugs
    tone, ring, length = _saw(40, rng.uniform(0.9, 1.0)), (1.2 if sustained else 0.09), int(2 * sr)
    drive, cabinet = rng.uniform(4, 12), rng.uniform(3000, 5000)

    def power_chord(f: float) -> np.ndarray:  # root, fifth and octave, two slightly detuned strings each
        strings = sum(_oscillator(f * ratio * detune, length, sr, tone, phase)
                      for ratio in (1.0, 1.4983, 2.0) for detune, phase in ((1.0, 0.0), (1.004, 0.3)))
        distorted = np.tanh(drive / 6 * strings * _decay(length, sr, ring)) / _F32(np.tanh(drive))
        return _filter(_filter(distorted, "lowpass", cabinet, sr), "highpass", 90.0, sr)

    guitar, strings = _Sampler(power_chord, sr), song.silence()
    lowest = 40  # a guitar's low E
    for bar in range(song.bars):
        root = song.pitch(song.root(bar), -1)
        root += 12 * math.ceil((lowest - root) / 12) if root < lowest else 0
        strokes = [(0.0, 4.0)] if sustained else [(k / 2, 0.5) for k in range(8)]
        for position, beats in strokes:
            guitar.play(strings, song.at(4 * bar + position), root, song.duration(beats))
    double = song.silence()  # the same part a few milliseconds later on the other side: double-tracking
    _place(double, int(rng.uniform(0.012, 0.025) * sr), strings)
    mix.add_stereo(0.35 * strings + 0.1 * double, 0.1 * strings + 0.35 * double)

    bass = _Sampler(_decaying_tone(sr, _saw(15, 0.7), 1.0, 0.25, cutoff=900.0), sr)
    line = song.silence()
    for bar in range(song.bars):
        for k in range(8):
            bass.play(line, song.at(4 * bar + k / 2), song.pitch(song.root(bar), -2), song.duration(0.45))
    mix.add(line, 0.4)


def _electric_piano(sr: int, rng: np.random.Generator, seconds: float = 3.0, cutoff: float = 20000.0,
                    wow: tuple[float, float] = (0.0, 0.0)) -> Callable[[float], np.ndarray]:
    """A Rhodes-like voice: a sine body with soft harmonics and a fast-fading bell-like tine.

    ``wow`` = (rate in Hz, depth in s): the note is read with a slowly wobbling delay, like worn tape.
    """
    n = int(seconds * sr)
    body_decay, tine = rng.uniform(0.8, 1.6), rng.uniform(0.15, 0.35)
    rate, depth = wow
    t = np.arange(n) / sr - depth * (1 - np.cos(2 * np.pi * rate * np.arange(n) / sr))

    def voice(f: float) -> np.ndarray:
        body = _read_table(_harmonic_table(tuple(_through_lowpass([1.0, 0.25, 0.05], f, cutoff))), f * t)
        body *= _decay(n, sr, body_decay)
        if 7 * f >= sr / 2:
            return body
        tine_level = _through_lowpass([tine], 7 * f, cutoff)[0]
        return body + tine_level * _read_table(_harmonic_table((1.0,)), 7 * f * t) * _decay(n, sr, 0.03)

    return voice


def _jazz(song: _Song, mix: _Mix) -> None:
    rng, sr = song.rng, song.sr
    ride = _ride(sr, rng, decay=rng.uniform(0.6, 1.1))  # "ding, ding-a ding, ding-a": the "a"s are swung 8ths
    mix.add(song.hits(ride, [0, 1, 1.5, 2, 3, 3.5], [1.0, 0.8, 0.5, 1.0, 0.8, 0.5], jitter=0.2), 0.14, pan=0.35)
    mix.add(song.hits(_noise_hit(sr, rng, 0.1, 0.02, (5000.0, 12000.0)), [1, 3]), 0.2, pan=-0.3)  # hi-hat foot
    if rng.random() < 0.5:  # a soft kick "feathered" on every beat
        mix.add(song.hits(_kick(sr, top=90, bottom=50, decay=0.1), [0, 1, 2, 3]), 0.15)

    upright = _Sampler(_decaying_tone(sr, [1.0, 0.5, 0.15], 1.5, 0.45), sr, release=0.05)
    walk = song.silence()
    for bar in range(song.bars):
        root, next_root = song.pitch(song.root(bar), -1), song.pitch(song.root(bar + 1), -1)
        third, fifth = song.pitch(song.root(bar) + 2, -1), song.pitch(song.root(bar) + 4, -1)
        approach = next_root + int(rng.choice([-1, 1]))  # a chromatic step into the next bar's root
        for beat, note in enumerate([root, int(rng.choice([third, fifth])), int(rng.choice([root, third, fifth])),
                                     approach]):
            upright.play(walk, song.at(4 * bar + beat), note, song.duration(0.9), rng.uniform(0.8, 1.0))
    mix.add(walk, 0.5, pan=-0.1)

    piano = _Sampler(_electric_piano(sr, rng), sr, release=0.08)
    comping = song.silence()
    for bar in range(song.bars):
        for position in (p for p in (0.0, 0.5, 1.5, 2.5, 3.0, 3.5) if rng.random() < 0.3):
            for note in song.chord(bar, size=4, octave=1)[1:]:  # rootless voicing: the bass has the root
                piano.play(comping, song.at(4 * bar + position), note, song.duration(rng.uniform(0.3, 0.9)), 0.35)
    mix.add(comping, 0.5, pan=0.2)
    mix.out = _reverb(mix.out, sr, rng, seconds=1.2, wet=0.25)


def _chiptune(song: _Song, mix: _Mix) -> None:
    rng, sr = song.rng, song.sr
    blip = int(0.6 * sr)

    def chip(table: np.ndarray) -> _Sampler:  # flat volume with a slight fall, like a sound chip's envelope
        return _Sampler(lambda f: _table_oscillator(table, f, blip, sr) * _decay(blip, sr, 0.8, attack=0.001), sr,
                        release=0.005)

    lead, melody = chip(_pulse_table(rng.choice([0.125, 0.25, 0.5]))), song.silence()
    step = 0.5 if rng.random() < 0.6 else 0.25
    positions = np.arange(0, 4 * song.bars, step)
    for position, degree in zip(positions, song.melody(len(positions), 7, 17, leap=0.3)):
        if rng.random() > 0.15:  # a few rests
            lead.play(melody, song.at(position), song.pitch(degree, 1), song.duration(step * 0.9))
    mix.add(melody, 0.22, pan=-0.15)

    arpeggiator, arpeggios = chip(_pulse_table(rng.choice([0.25, 0.5]))), song.silence()
    speed = 0.25 if rng.random() < 0.5 else 0.125
    for bar in range(song.bars):
        chord = song.chord(bar, size=3, octave=1)
        for k, position in enumerate(np.arange(0, 4, speed)):
            arpeggiator.play(arpeggios, song.at(4 * bar + position), chord[k % 3], song.duration(speed))
    mix.add(arpeggios, 0.12, pan=0.25)

    triangle = _Sampler(lambda f: _table_oscillator(_CHIP_TRIANGLE, f, int(0.5 * sr), sr), sr, release=0.005)
    bass = song.silence()
    for bar in range(song.bars):
        root = song.pitch(song.root(bar), -1)
        for k in range(8):
            triangle.play(bass, song.at(4 * bar + k / 2), root + (0, 12, 7, 12)[k % 4], song.duration(0.45))
    mix.add(bass, 0.35)

    rate = rng.uniform(4000, 12000)  # the noise channel's clock: lower sounds grittier
    mix.add(song.hits(_chip_noise(sr, rng, 0.15, 0.06, rate / 4), [0, 2]), 0.3)
    mix.add(song.hits(_chip_noise(sr, rng, 0.2, 0.07, rate), [1, 3]), 0.22)
    mix.add(song.hits(_chip_noise(sr, rng, 0.05, 0.012, 2 * rate), [k / 2 for k in range(8)]), 0.12)


def _lofi(song: _Song, mix: _Mix) -> None:
    rng, sr, n = song.rng, song.sr, song.n
    dusty = rng.uniform(2500, 4500)  # every part is low-passed here: a worn, dusty top end

    def worn(sample: np.ndarray) -> np.ndarray:
        return _filter(sample, "lowpass", dusty, sr)

    drums = song.hits(worn(_kick(sr, top=100, bottom=45, decay=0.2)), [0, 1.75, 2.5], [1.0, 0.6, 0.8])
    song.hits(worn(_snare(sr, rng, tone=170, snappy=0.1)), [1, 3], [0.7, 0.7], jitter=0.2, into=drums)
    song.hits(worn(_noise_hit(sr, rng, 0.1, 0.03, (5000.0, None))), [k / 2 for k in range(8)], [0.25, 0.15] * 4,
              jitter=0.6, into=drums)
    mix.add(drums, 0.6)

    wow = (rng.uniform(0.3, 0.8), rng.uniform(0.001, 0.003))  # warbly keys, like worn tape
    piano = _Sampler(_electric_piano(sr, rng, seconds=4.0, cutoff=dusty, wow=wow), sr, release=0.2)
    keys = song.silence()
    size = int(rng.choice([4, 5]))  # 7th or 9th chords
    roll = rng.uniform(0.01, 0.03)  # chords rolled lazily, lowest note first
    for bar in range(song.bars):
        for k, note in enumerate(song.chord(bar, size=size, octave=0)):
            start = song.at(4 * bar) + int(k * roll * sr)
            piano.play(keys, start, note + 12 * (k == 0), song.duration(3.8), rng.uniform(0.25, 0.35))
    mix.add(keys, 0.7, pan=rng.uniform(-0.2, 0.2))

    sub = _Sampler(_decaying_tone(sr, [1.0, 0.1], 2.0, 0.6), sr)
    line = song.silence()
    for bar in range(song.bars):
        root = song.pitch(song.root(bar), -1)
        sub.play(line, song.at(4 * bar), root, song.duration(1.5))
        sub.play(line, song.at(4 * bar + 2.5), root, song.duration(1.0), 0.8)
    mix.add(line, 0.5)
    mix.add(_vinyl(n, sr, rng, dusty), 0.3)


def _acoustic_piano(sr: int, rng: np.random.Generator) -> Callable[[float], np.ndarray]:
    """Piano-like: partials whose decay quickens with their number and with pitch.

    Two wavetables, low partials decaying slowly and bright ones fast, stand in for one decay
    rate per partial at a fraction of the cost.
    """
    brightness = rng.uniform(0.5, 0.8)
    bright = [0.0, 0.0] + [brightness ** (k - 2) / k for k in range(3, 12)]

    def voice(f: float) -> np.ndarray:
        sustain = float(np.clip(2.2 * (262.0 / f) ** 0.6, 0.4, 4.0))
        n = int(min(6.0, 4 * sustain) * sr)
        body = _oscillator(f, n, sr, [1.0, 0.4]) * _decay(n, sr, sustain)
        return body + 0.6 * _oscillator(f, n, sr, bright) * _decay(n, sr, sustain / 5)

    return voice


def _classical(song: _Song, mix: _Mix) -> None:
    rng, sr = song.rng, song.sr
    song.rubato = rng.uniform(0.05, 0.12)
    piano = _Sampler(_acoustic_piano(sr, rng), sr, release=0.15)
    left, right = song.silence(), song.silence()
    alberti = rng.random() < 0.5  # low-high-middle-high, else a rising broken chord
    for bar in range(song.bars):
        low, third, fifth = song.chord(bar, size=3, octave=-1)
        figure = [low, fifth, third, fifth] if alberti else [low, fifth, low + 12, third + 12]
        for k in range(8):
            piano.play(left, song.at(4 * bar + k / 2), figure[k % 4], song.duration(0.5), 0.35)

    bars_per_phrase = 4
    for phrase_start in range(0, song.bars, bars_per_phrase):
        rhythm: list[float] = []
        while sum(rhythm) < 4 * (bars_per_phrase - 1):  # quarters and 8th pairs, then a long closing note
            rhythm += [1.0] if rng.random() < 0.6 else [0.5, 0.5]
        rhythm.append(4 * bars_per_phrase - sum(rhythm))
        position = 4.0 * phrase_start
        swell = np.sin(np.linspace(0.3, np.pi - 0.3, len(rhythm)))  # louder mid-phrase
        for beats, degree, loudness in zip(rhythm, song.melody(len(rhythm), 7, 16), swell):
            piano.play(right, song.at(position), song.pitch(degree, 1), song.duration(beats), 0.4 + 0.4 * loudness)
            position += beats
    mix.add(left, 0.6, pan=-0.25)
    mix.add(right, 0.7, pan=0.2)
    mix.out = _reverb(mix.out, sr, rng, seconds=rng.uniform(1.8, 2.6), wet=0.35)


def _folk(song: _Song, mix: _Mix) -> None:
    rng, sr = song.rng, song.sr
    pick, damping = rng.uniform(1000, 3000), rng.uniform(1500, 4000)
    longest = int(1.5 * sr)  # no note here is held longer
    guitar = _Sampler(lambda f: _karplus_strong(f, longest, sr, rng, ring=2.5, damping=damping, pick=pick), sr,
                      release=0.08)
    strings = song.silence()
    strummed = rng.random() < 0.5  # else fingerpicked, Travis style
    for bar in range(song.bars):
        root, third, fifth = song.chord(bar, size=3, octave=-1)
        if strummed:
            shape = [root, fifth, root + 12, third + 12, fifth + 12, root + 24]  # six strings, low to high
            for position, down in ((0, True), (1, True), (1.5, False), (2.5, False), (3, True), (3.5, False)):
                order = shape if down else shape[:1:-1]  # up-strokes catch the high strings only
                spread = rng.uniform(0.008, 0.015)  # seconds between neighbouring strings
                for k, note in enumerate(order):
                    start = song.at(4 * bar + position) + int(k * spread * sr)
                    guitar.play(strings, start, note, song.duration(0.5), 0.35 if down else 0.25)
        else:
            for beat in range(4):  # the thumb alternates root and fifth, the fingers pick on the off-beats
                guitar.play(strings, song.at(4 * bar + beat), (root, fifth)[beat % 2], song.duration(1.0), 0.6)
                guitar.play(strings, song.at(4 * bar + beat + 0.5), (third, fifth, root)[beat % 3] + 12,
                            song.duration(0.5), 0.45)
    mix.add(strings, 0.6, pan=rng.uniform(-0.3, 0.3))

    if rng.random() < 0.6:  # a tin whistle: near-sine with vibrato and breath noise
        whistle = song.silence()
        table = _harmonic_table((1.0, 0.1))
        for beat, degree in zip(range(4 * song.bars), song.melody(4 * song.bars, 14, 21)):
            if rng.random() < 0.2:
                continue
            length = int(song.duration(1.0) * sr)
            t = np.arange(length) / sr
            vibrato = 0.004 / (2 * np.pi * 5.5) * np.sin(2 * np.pi * 5.5 * t)
            tone = _read_table(table, _hz(song.pitch(degree, 1)) * (t + vibrato)) + 0.05 * _noise(rng, length)
            _place(whistle, song.at(beat), tone * _gate(length, sr, 0.03, 0.05))
        mix.add(whistle, 0.15, pan=0.3)
    if rng.random() < 0.5:
        shaker = _noise_hit(sr, rng, 0.1, 0.03, (4000.0, 10000.0))
        mix.add(song.hits(shaker, [k / 2 for k in range(8)], [0.6, 1.0] * 4, jitter=0.3), 0.1, pan=-0.4)


_ARRANGEMENTS: dict[str, Callable[[_Song, _Mix], None]] = {
    "ambient": _ambient, "techno": _techno, "rock": _rock, "jazz": _jazz,
    "chiptune": _chiptune, "lofi": _lofi, "classical": _classical, "folk": _folk,
}
assert set(_ARRANGEMENTS) == set(STYLES)

_SWING = {"jazz": (0.6, 0.68), "lofi": (0.55, 0.62)}


def _synthesize(spec: _TrackSpec) -> np.ndarray:
    """The track's audio as float32 (frames, channels), peak-normalised to 0.9."""
    rng = np.random.default_rng([spec.seed, _AUDIO_STREAM, spec.index])
    music = _STYLE_MUSIC[spec.style]
    progression = music.progressions[int(rng.integers(len(music.progressions)))]
    song = _Song(sr=spec.sample_rate, n=spec.frames, bpm=spec.tempo_bpm, tonic=48 + spec.tonic,
                 scale=_MODES[spec.mode], progression=progression, rng=rng,
                 swing=float(rng.uniform(*_SWING.get(spec.style, (0.5, 0.5)))))
    mix = _Mix(spec.frames)
    _ARRANGEMENTS[spec.style](song, mix)

    audio = mix.out if spec.channels == 2 else mix.out.mean(axis=0, keepdims=True)
    audio = _fade(audio.copy(), spec.sample_rate, 0.005, min(1.0, spec.seconds / 10))  # no clicks at the ends
    peak = float(np.abs(audio).max())
    if peak > 0:
        audio *= _F32(0.9 / peak)
    return np.ascontiguousarray(audio.T)


_WRITE_OPTIONS = {
    "flac": {"format": "FLAC", "subtype": "PCM_16"},
    "mp3": {"format": "MP3"},
    "ogg": {"format": "OGG", "subtype": "VORBIS"},
    "wav": {"format": "WAV", "subtype": "PCM_16"},
}


def _write_track(job: tuple[_TrackSpec, Path]) -> None:
    spec, root = job
    sf.write(root / spec.uri, _synthesize(spec), spec.sample_rate, **_WRITE_OPTIONS[spec.format])


# --------------------------------------------------------------------------------------------------
# Listening sessions (the rules are in the module docstring)
# --------------------------------------------------------------------------------------------------

_PEAK_HOUR = {"ambient": 4, "classical": 8, "folk": 12, "chiptune": 16, "rock": 19, "jazz": 21, "techno": 23,
              "lofi": 1}
assert set(_PEAK_HOUR) == set(STYLES)

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


def _hour_affinity(hour: float) -> np.ndarray:
    """How likely each style (in ``STYLES`` order) is at ``hour`` of the day: 1.05 at its peak, 0.07 opposite."""
    peaks = np.array([_PEAK_HOUR[style] for style in STYLES])
    return 0.05 + np.exp(2.0 * (np.cos(2 * np.pi * (hour - peaks) / 24) - 1))


@dataclass(frozen=True)
class _Listener:
    taste: np.ndarray  # probability over STYLES
    anchor_hour: float
    activity: float


def _draw_listener(rng: np.random.Generator) -> _Listener:
    count = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
    favourites = rng.choice(len(STYLES), count, replace=False)
    weights = rng.dirichlet(np.full(count, 2.0))
    taste = np.full(len(STYLES), 0.05 / len(STYLES))
    taste[favourites] += 0.95 * weights
    angles = 2 * np.pi * np.array([_PEAK_HOUR[STYLES[k]] for k in favourites]) / 24
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


def _pick_cold(specs: list[_TrackSpec], count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` track indices, dealt round-robin over the styles (in random order) so every style has some."""
    by_style = [rng.permutation([s.index for s in specs if s.style == style]).tolist() for style in STYLES]
    dealt = [by_style[k][i] for i in range(max(map(len, by_style))) for k in rng.permutation(len(STYLES))
             if i < len(by_style[k])]
    return np.array(sorted(dealt[:count]), dtype=int)


class _ListeningModel:
    """Draws tracks by the session rules; ``test`` picks the period (cold tracks are only available in test)."""

    def __init__(self, specs: list[_TrackSpec], cold: np.ndarray, rng: np.random.Generator):
        self.rng = rng
        self.style = np.array([STYLES.index(s.style) for s in specs])
        self.artist = np.unique([s.artist for s in specs], return_inverse=True)[1]
        is_cold = np.isin(np.arange(len(specs)), cold)
        self.weight = {False: np.zeros(len(specs)), True: np.zeros(len(specs))}  # popularity per period
        for k in range(len(STYLES)):
            catalogued = np.flatnonzero((self.style == k) & ~is_cold)
            zipf = (rng.permutation(len(catalogued)) + 1.0) ** -_ZIPF_EXPONENT
            self.weight[False][catalogued] = self.weight[True][catalogued] = zipf
            self.weight[True][(self.style == k) & is_cold] = min(_RELEASE_RANK, len(catalogued)) ** -_ZIPF_EXPONENT
        tempo = np.array([s.tempo_bpm for s in specs])
        # Per period and style, the available tracks from slowest to fastest.
        self.tempo_order = {test: [np.flatnonzero((self.style == k) & (weight > 0))[
                                       np.argsort(tempo[(self.style == k) & (weight > 0)], kind="stable")]
                                   for k in range(len(STYLES))]
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
            order = self.tempo_order[test][style]
            position = int(np.flatnonzero(order == current)[0])
            step = 1 if rng.random() < 0.5 else -1
            if not 0 <= position + step < len(order):  # at the slow or fast end: the only neighbour
                step = -step
            if 0 <= position + step < len(order):
                return int(order[position + step])
        return self._by_popularity(style, test, current)

    def _style_for(self, listener: _Listener, hour: float, exclude: int | None = None) -> int:
        weights = listener.taste * _hour_affinity(hour)
        if exclude is not None:
            weights[exclude] = 0.0
        return self._draw(np.arange(len(STYLES)), weights)

    def _by_popularity(self, style: int, test: bool, current: int | None = None) -> int:
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


def _listening_sessions(specs: list[_TrackSpec], users: int, seed: int) -> tuple[pa.Table, pa.Table, tuple[str, ...]]:
    rng = np.random.default_rng([seed, _SESSIONS_STREAM])
    listeners = [_draw_listener(rng) for _ in range(users)]
    sessions = [session for user, listener in enumerate(listeners) for session in _schedule(user, listener, rng)]
    test_plays = sum(len(s.offsets) for s in sessions if s.is_test)
    cold = _pick_cold(specs, min(round(_COLD_SHARE * len(specs)), test_plays), rng)

    model = _ListeningModel(specs, cold, rng)
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
            rows["track_id"] += [specs[t].track_id for t in session.tracks]
            rows["ts"] += [start_us + (session.start + int(offset)) * 1_000_000 for offset in session.offsets]
        tables.append(pa.table(rows, schema=_SESSIONS_SCHEMA))
    return tables[0], tables[1], tuple(specs[i].track_id for i in cold)


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
