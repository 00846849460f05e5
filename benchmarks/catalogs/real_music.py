"""A catalog of real music: public-domain scores from music21's corpus, rendered with a General MIDI soundfont.

    python -m benchmarks.catalogs.real_music --out DIR [--tracks 1200] [--users 3000] [--seconds 30]
        [--seed 0] [--workers N] [--styles "bach chorale,scottish air"] [--soundfont FILE.sf2]

The demo catalog (``musicray/demo``) is synthetic, and its eight styles separate too easily. This
one is made of real compositions and real tunes, so recommenders, cold start and taggers can be
measured on music whose styles overlap. Everything comes from the package registries: the scores
from PyPI's ``music21`` (its bundled corpus; a dev dependency), the synthesiser and the soundfont
from Debian's ``fluidsynth`` and ``fluid-soundfont-gm`` (FluidR3_GM.sf2); nothing is downloaded
while it builds. It is kept out of the quickstart and of CI (CI builds only a tiny one, in
``tests/test_real_music.py``).

What it writes (the demo's layout and schema, plus a few columns)::

    DIR/
      audio/<track_id>.ogg     a ``--seconds`` excerpt of one rendered piece: Ogg Vorbis, mono, 22050 Hz
      renders/<track_id>.json  the track's catalog row, written after its audio: a re-run reuses the pair
      catalog.parquet          one row per track, sorted by track_id (columns below)
      sessions_train.parquet   user_id, session_id, track_id, ts (timestamp[us, UTC]), sorted by user,
      sessions_test.parquet    session, ts; the structure is the demo's (below)
      cold_tracks.txt          the cold track ids, one per line
      manifest.json            counts per style and per mood, cold tracks, sessions, plays, the pieces'
                               in = done + skipped + failed with each failure's reason, build time,
                               versions and licences

Styles, sources and instruments
-------------------------------

Eleven styles (``label``), each from one part of the corpus, each played by instruments drawn from
a small pool of General MIDI programs. The pools overlap (flute, violin, piano, choir, organ,
fiddle, accordion, guitar, recorder, harp ... each serve two to five styles), so timbre alone does
not give the style away, and several pairs are close on purpose (the two fiddle-tune styles, the
two sacred polyphonies, the folk songs):

=====================  =======================================================  ==============  ====  =======================
label                  source in music21's corpus (pieces available)            beat bpm        peak  GM programs
=====================  =======================================================  ==============  ====  =======================
bach chorale           ``bach/bwv*.*.mxl``, J. S. Bach's chorales (191)         60-80           10h   19 52 48 0
renaissance mass       ``palestrina/*.krn``, Palestrina's mass movements (1318) 56-72 (half)    7h    52 53 19 74
madrigal               ``monteverdi/*.mxl``, Monteverdi's madrigals (49)        76-104          20h   53 52 24 74 48
trecento               ``trecento/*.xml``, 14th-century Italian music (101)     60-88           5h    74 24 46 53 71
string quartet         Haydn, Mozart, Beethoven, R. Schumann movements (47)     80-126          21h   40 41 42 48 0
irish fiddle tune      ``oneills1850``, O'Neill's Music of Ireland (~1850)      96-120          22h   110 73 21 40
american fiddle tune   ``ryansMammoth``, Ryan's Mammoth Collection (1059)       96-120          18h   110 105 21 0
scottish air           ``airdsAirs``, Aird's Airs (1180)                        66-96           16h   73 40 46 0 109
german folk song       ``essenFolksong`` German collections (5979)              72-108          12h   21 0 24 71
chinese folk song      ``essenFolksong/han*``, Han folk songs (1224)            60-96           14h   107 75 73 40
northumbrian tune      ``miscFolk``, Northumbrian Minstrelsy (129)              90-116          19h   109 110 73 22
=====================  =======================================================  ==============  ====  =======================

(GM programs, 0-based: 0 piano, 19 church organ, 21 accordion, 22 harmonica, 24 nylon guitar,
40 violin, 41 viola, 42 cello, 46 harp, 48 string ensemble, 52 choir aahs, 53 voice oohs,
71 clarinet, 73 flute, 74 recorder, 75 pan flute, 105 banjo, 107 koto, 109 bagpipe, 110 fiddle.)
An ABC book holds many tunes: each tune is a piece, named ``book.abc#N`` (the N-th tune of the
file); O'Neill's tunes that appear in two files (the corpus has overlapping ranges) are counted once.
Baroque sonatas (one Corelli, one Handel piece) and Josquin (8 parts of chansons) are too few for a style.

**How many of each.** ``--tracks`` is shared equally between the styles; a style with fewer pieces
than its share gives all it has and the rest is shared among the others (at 1200 tracks: madrigal
49, string quartet 47, the other nine ~122 each). Which pieces: each style's pieces in a random
order drawn from ``--seed``; the first ones are rendered, and a piece that fails is replaced by the
next one, so the catalog has ``--tracks`` tracks when the corpus allows (a style stops replacing
once as many of its pieces failed as it was asked for, 10 at least: then something other than the
piece is wrong, and the build says so).

**One track from one piece**, all of it a pure function of (``--seed``, the piece, ``--seconds``),
drawn from its own random stream, so the number of workers changes nothing:

1. The score is parsed with music21, repeats are expanded (where music21 can), ties are merged.
2. Tempo: the beat is the time signature's (a quarter in 4/4, a half in 2/2 and 4/2, a dotted
   quarter in 6/8); the score's first metronome mark is used when it falls within the style's beat
   range widened by a quarter either way (``tempo_source = "score"``), else a tempo is drawn
   uniformly in the style's range (``"style"``). Then a jitter: x U(0.94, 1.06). ``tempo_bpm`` is
   the tempo played, in beats per minute.
3. Transposition: a uniform whole number of semitones in [-3, +3].
4. Instruments: the top part draws a program from the style's pool; every other part keeps it with
   probability 0.5, else draws its own. Velocity 92 for the top part, 80 for the others, +-6 at random.
5. Excerpt: a piece longer than ``--seconds`` starts at a uniform random offset that leaves a full
   excerpt; a shorter one (most folk tunes) is played again and again, as dance tunes and songs
   with verses are, and starts at a random point of its first pass.
6. The excerpt's notes are written to a MIDI file and rendered by ``fluidsynth`` (FluidR3_GM, its
   default reverb and chorus, float output), mixed to mono, cut to ``--seconds`` (padded with
   silence if the music ends first), faded (10 ms in, ``min(1, seconds / 10)`` s out) and set to an
   RMS of -20 dBFS with peaks at most 0.95, then encoded as Ogg Vorbis with a fixed stream serial
   (``musicray.audio.encode_audio``): the same arguments give byte-identical files.

A piece that cannot be parsed, has no notes, or renders to silence or not at all is *failed*:
counted, its reason kept in ``manifest.json``, replaced by the style's next piece, never fatal.
A track whose audio and ``renders/`` row an earlier run left is *skipped* (reused, not rendered
again); every other track is *done*. The build prints ``N in = done + skipped + failed``. Files of an
earlier run with other arguments are removed, so the folder matches the catalog.

Catalog columns
---------------

``track_id`` ("trk" + 10 hex digits of a hash of the piece, seed and length: stable, and in no order
that gives the style away), ``uri`` (relative to the manifest), ``label`` (the style), ``title``,
``artist`` (who the sessions' "same artist" move groups by: the composer where known, else the
book the tune comes from, e.g. "Aird's Airs, book 3"), ``composer`` ("Traditional" for folk
music; for the trecento the score's attribution, "Anonymous" when it has none), ``mood``, ``mode``
and ``key`` (music21's Krumhansl-Schmuckler key of the whole piece; the key after transposition),
``tempo_bpm``, ``tempo_source``, ``activity`` (distinct note onsets per second in the excerpt, all
parts together), ``programs`` (the GM program of each part, top part first), ``instruments`` (their
names, distinct, in that order), ``transpose`` (semitones), ``offset_s`` (where in the piece, as
played, the excerpt starts; beyond the piece's length for a looped tune), ``source`` (the corpus path,
``#N`` for a tune of an ABC book), ``format``, ``sample_rate``, ``channels``, ``duration_s``.

**Mood** is one rule on two things from the score: the mode (major / minor) and whether the excerpt
is *lively*, i.e. has at least ``LIVELY_ONSETS_PER_S`` (2.5) distinct note onsets per second:

    major + not lively -> calm      major + lively -> bright
    minor + not lively -> melancholy   minor + lively -> intense

Sessions
--------

Drawn by the demo's listening model (``musicray.demo.listening_sessions``; its module docstring,
``musicray/demo/listeners.py``, has every rule), over this catalog's tracks: a track's style is its
``label``, its artist the ``artist`` column, and its neighbours (the "next track up or down" move)
are by ``tempo_bpm``. What this catalog passes in: its styles in the table's order, their peak hours
(the table's "peak" column) and a cold share of 10%. So: 56 days from 2026-01-05 UTC, the test period
the last 11 days (sessions starting on or after 2026-02-19), users with 1-3 favourite styles and an
hour of day they listen around, 3-20 plays a session 60-180 s apart, staying in style with
probability 0.8 (same artist, tempo neighbour, or by Zipf popularity), and *cold tracks*: 10% of the
tracks, dealt round-robin over the styles, never played in train sessions and each played at least
once in test sessions. Every test user has train sessions too.

Licences
--------

The works are in the public domain (composers who died centuries ago; traditional tunes). The
encodings ship with music21 (BSD-licensed software) "with the permission of the encoders"; some
carry restrictions on commercial use, the Essen folk song collection is licensed for
non-commercial use (``music21/corpus/license.txt``, ``essenFolksong/license.txt``). FluidR3_GM is
MIT-licensed (``/usr/share/doc/fluid-soundfont-gm/copyright``). The catalog is built locally for
measuring models; it is not part of the repository, and is not to be redistributed commercially.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from musicray.audio import encode_audio
from musicray.demo import ListenedTrack, ListeningStyles, listening_sessions

SAMPLE_RATE = 22050
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
COLD_SHARE = 0.10
LIVELY_ONSETS_PER_S = 2.5  # about half of the tracks (and of most styles' tracks) either side
RENDER_VERSION = 1  # part of every track id: bump it when a change alters the audio or the rows
_PLAN_STREAM, _RENDER_STREAM = 10, 11  # second word of the rng seeds (the demo uses 0-2)
_FLUIDSYNTH_TIMEOUT_S = 300

_GM_NAMES = {0: "Acoustic Grand Piano", 19: "Church Organ", 21: "Accordion", 22: "Harmonica",
             24: "Acoustic Guitar (nylon)", 40: "Violin", 41: "Viola", 42: "Cello", 46: "Orchestral Harp",
             48: "String Ensemble 1", 52: "Choir Aahs", 53: "Voice Oohs", 71: "Clarinet", 73: "Flute",
             74: "Recorder", 75: "Pan Flute", 105: "Banjo", 107: "Koto", 109: "Bagpipe", 110: "Fiddle"}
_KEY_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


@dataclass(frozen=True)
class _Style:
    label: str
    pattern: str  # regular expression over paths relative to music21's corpus folder
    abc_books: bool  # every tune of each matching ABC file is a piece
    beat: tuple[float, float]  # beats per minute
    peak_hour: float
    programs: tuple[int, ...]
    composer: str | None  # None: from the path or the score (see _composer)


STYLES: tuple[_Style, ...] = (
    _Style("bach chorale", r"bach/bwv\d+\.\d+\.mxl", False, (60, 80), 10, (19, 52, 48, 0), "J. S. Bach"),
    _Style("renaissance mass", r"palestrina/[^/]+\.krn", False, (56, 72), 7, (52, 53, 19, 74),
           "Giovanni Pierluigi da Palestrina"),
    _Style("madrigal", r"monteverdi/madrigal\.[^/]+\.mxl", False, (76, 104), 20, (53, 52, 24, 74, 48),
           "Claudio Monteverdi"),
    _Style("trecento", r"trecento/[^/]+\.xml", False, (60, 88), 5, (74, 24, 46, 53, 71), None),
    _Style("string quartet", r"(haydn/opus\w+|mozart/k(80|155|156|458)|beethoven/opus(18|59)no\d"
                             r"|schumann_robert/opus41no1)/movement\d+\.mxl|beethoven/opus13[23]\.mxl",
           False, (80, 126), 21, (40, 41, 42, 48, 0), None),
    _Style("irish fiddle tune", r"oneills1850/[^/]+\.abc", True, (96, 120), 22, (110, 73, 21, 40), "Traditional"),
    _Style("american fiddle tune", r"ryansMammoth/[^/]+\.abc", True, (96, 120), 18, (110, 105, 21, 0),
           "Traditional"),
    _Style("scottish air", r"airdsAirs/[^/]+\.abc", True, (66, 96), 16, (73, 40, 46, 0, 109), "Traditional"),
    _Style("german folk song", r"essenFolksong/(altdeu|ballad|boehme|dva|erk|fink|kinder|zuccal)\d+\.abc", True,
           (72, 108), 12, (21, 0, 24, 71), "Traditional"),
    _Style("chinese folk song", r"essenFolksong/han\d\.abc", True, (60, 96), 14, (107, 75, 73, 40), "Traditional"),
    _Style("northumbrian tune", r"miscFolk/northumbrianminstrelsyopus\.abc", True, (90, 116), 19,
           (109, 110, 73, 22), "Traditional"),
)
_STYLE = {style.label: style for style in STYLES}
assert all(p in _GM_NAMES for style in STYLES for p in style.programs)

_QUARTET_COMPOSERS = {"haydn": "Joseph Haydn", "mozart": "Wolfgang Amadeus Mozart",
                      "beethoven": "Ludwig van Beethoven", "schumann_robert": "Robert Schumann"}
_BOOKS = {"oneills1850": "O'Neill's Music of Ireland", "ryansMammoth": "Ryan's Mammoth Collection",
          "airdsAirs": "Aird's Airs", "essenFolksong": "Essen folk songs",
          "miscFolk": "Northumbrian Minstrelsy"}


@dataclass(frozen=True)
class _Piece:
    style: str
    source: str  # path relative to the corpus folder
    tune: int | None  # index of the tune in an ABC book; None: the whole file

    @property
    def name(self) -> str:
        return self.source if self.tune is None else f"{self.source}#{self.tune + 1}"


@dataclass(frozen=True)
class _Job:
    piece: _Piece
    track_id: str
    seed: int
    seconds: float
    root: str
    corpus: str
    soundfont: str


@dataclass(frozen=True)
class RealCatalog:
    """Where ``build`` wrote the catalog, and what happened to each piece it tried."""

    root: Path
    manifest: Path
    sessions_train: Path
    sessions_test: Path
    cold_tracks: tuple[str, ...]
    pieces_in: int
    done: int
    skipped: int
    failed: tuple[tuple[str, str], ...]  # (piece, reason)


# -- the plan: which pieces -----------------------------------------------------------------------

def corpus_root() -> Path:
    """music21's corpus folder; a clear error when music21 is missing."""
    try:
        import music21.corpus
    except ImportError as error:
        raise RuntimeError("the real-music catalog reads music21's corpus: pip install music21 "
                           "(it is in musicray's dev dependencies: make setup)") from error
    return Path(music21.corpus.__file__).parent


def _tunes(text: str) -> tuple[str, list[str]]:
    """An ABC book split into (its header, the text of each tune)."""
    blocks = re.split(r"(?m)^(?=X:)", text)
    header = blocks[0] if blocks and not blocks[0].startswith("X:") else ""
    return header, [block for block in blocks if block.startswith("X:")]


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _candidates(style: _Style, corpus: Path) -> list[_Piece]:
    """Every piece of the style in the corpus, in a fixed order (sorted by path, then tune)."""
    pattern = re.compile(style.pattern)
    files = sorted(str(path.relative_to(corpus)) for path in corpus.rglob("*")
                   if path.is_file() and pattern.fullmatch(str(path.relative_to(corpus))))
    if not style.abc_books:
        return [_Piece(style.label, source, None) for source in files]
    pieces, seen_numbers = [], set()
    for source in files:
        for index, tune in enumerate(_tunes(_read_text(corpus / source))[1]):
            if source.startswith("oneills1850/"):  # overlapping files: a tune number counts once
                number = re.match(r"X:\s*(\d+)", tune)
                if number:
                    if number.group(1) in seen_numbers:
                        continue
                    seen_numbers.add(number.group(1))
            pieces.append(_Piece(style.label, source, index))
    return pieces


def _quotas(available: dict[str, int], tracks: int) -> dict[str, int]:
    """``tracks`` shared equally; a style with fewer pieces gives all it has, the rest is shared among the others."""
    quota = dict.fromkeys(available, 0)
    open_styles = [label for label in available if available[label] > 0]
    left = tracks
    while left > 0 and open_styles:
        share, extra = divmod(left, len(open_styles))
        given = 0
        for i, label in enumerate(open_styles):
            take = min(share + (1 if i < extra else 0), available[label] - quota[label])
            quota[label] += take
            given += take
        left -= given
        open_styles = [label for label in open_styles if quota[label] < available[label]]
        if given == 0:
            break
    return quota


def _track_id(piece: _Piece, seed: int, seconds: float) -> str:
    key = f"{piece.name}|seed={seed}|seconds={seconds!r}|v{RENDER_VERSION}"
    return "trk" + hashlib.sha256(key.encode()).hexdigest()[:10]


# -- one piece to one track -----------------------------------------------------------------------

class _Failed(Exception):
    """A piece that cannot become a track; the message is the reason."""


def _render(job: _Job) -> dict:
    """The track's catalog row (its audio written), or ``{"failed": reason}``; never raises."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _render_piece(job)
    except _Failed as error:
        return {"failed": str(error)}
    except Exception as error:  # music21 and the MIDI path raise many kinds: all are a failed piece
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        return {"failed": reason[:300]}


def _parse(job: _Job):
    from music21 import converter

    path = Path(job.corpus) / job.piece.source
    try:
        if job.piece.tune is None:
            score = converter.parse(str(path), forceSource=True)
        else:
            header, tunes = _tunes(_read_text(path))
            score = converter.parse(header + tunes[job.piece.tune], format="abc", forceSource=True)
    except Exception as error:
        raise _Failed(f"music21 cannot parse it: {' '.join(f'{type(error).__name__}: {error}'.split())[:250]}")
    if not hasattr(score, "parts"):
        raise _Failed(f"music21 parsed it as a {type(score).__name__}, not a score")
    return score


def _notes(score) -> tuple[list[tuple[float, float, int, int]], float]:
    """([(onset, duration) in quarters, MIDI pitch, part], the piece's length in quarters), top part first."""
    try:
        score = score.expandRepeats()
    except Exception:  # inconsistent repeat marks: play it as written
        pass
    parts = list(score.parts) or [score]
    notes = []
    for number, part in enumerate(parts):
        for element in part.stripTies(inPlace=False).flatten().notes:
            length = float(element.quarterLength)
            if length <= 0:  # grace notes
                continue
            for pitch in element.pitches:
                notes.append((float(element.offset), length, int(pitch.midi), number))
    return notes, float(score.highestTime)


def _beat_quarters(score) -> float:
    """The beat's length in quarters by the first time signature (1 when there is none)."""
    from music21 import meter

    signatures = list(score.recurse().getElementsByClass(meter.TimeSignature))
    try:
        return float(signatures[0].beatDuration.quarterLength) if signatures else 1.0
    except Exception:
        return 1.0


def _score_tempo(score) -> float | None:
    """Quarter notes per minute of the first metronome mark, if any."""
    from music21 import tempo

    for mark in score.recurse().getElementsByClass(tempo.MetronomeMark):
        try:
            bpm = mark.getQuarterBPM()
        except Exception:
            bpm = None
        if bpm and math.isfinite(bpm) and bpm > 0:
            return float(bpm)
    return None


def _render_piece(job: _Job) -> dict:
    style, piece = _STYLE[job.piece.style], job.piece
    rng = np.random.default_rng([job.seed, _RENDER_STREAM, int(hashlib.sha256(piece.name.encode()).hexdigest()[:8], 16)])
    transpose = int(rng.integers(-3, 4))
    jitter = float(rng.uniform(0.94, 1.06))
    drawn_beat_bpm = float(rng.uniform(*style.beat))
    start_fraction = float(rng.random())

    score = _parse(job)
    notes, length_q = _notes(score)
    if not notes or length_q <= 0:
        raise _Failed("the score has no notes")
    key = score.analyze("key")
    mode = "minor" if key.mode == "minor" else "major"
    tonic = (key.tonic.pitchClass + transpose) % 12

    beat_q = _beat_quarters(score)
    marked = _score_tempo(score)
    low, high = style.beat
    if marked is not None and 0.75 * low <= marked / beat_q <= 1.25 * high:
        beat_bpm, tempo_source = marked / beat_q, "score"
    else:
        beat_bpm, tempo_source = drawn_beat_bpm, "style"
    beat_bpm *= jitter
    seconds_per_quarter = 60.0 / (beat_bpm * beat_q)

    parts = 1 + max(part for *_, part in notes)
    programs = [int(rng.choice(style.programs))]
    for _ in range(1, parts):
        programs.append(programs[0] if rng.random() < 0.5 else int(rng.choice(style.programs)))
    humanise = rng.integers(-6, 7, len(notes))

    piece_s = length_q * seconds_per_quarter
    if piece_s >= job.seconds:
        offset, passes = start_fraction * (piece_s - job.seconds), 1
    else:
        offset = start_fraction * piece_s
        passes = math.ceil((offset + job.seconds) / piece_s) + 1
    excerpt, onsets = [], set()
    for repeat in range(passes):
        for (onset_q, length, pitch, part), spread in zip(notes, humanise):
            start = onset_q * seconds_per_quarter + repeat * piece_s - offset
            end = start + length * seconds_per_quarter
            if end <= 0 or start >= job.seconds:
                continue
            if start >= 0:
                onsets.add(round(start, 2))
            velocity = int(np.clip((92 if part == 0 else 80) + spread, 1, 127))
            excerpt.append((max(start, 0.0), end, int(np.clip(pitch + transpose, 0, 127)), part, velocity))
    if not excerpt:
        raise _Failed("the excerpt holds no notes")

    audio = _synthesise(excerpt, programs, job)
    n = int(round(job.seconds * SAMPLE_RATE))
    audio = np.pad(audio[:n], (0, max(0, n - len(audio))))
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if not math.isfinite(rms) or rms < 1e-4:
        raise _Failed(f"the render is silent (RMS {rms:.1e})")
    audio = _fade(audio, job.seconds)
    gain = min(0.1 / float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))), 0.95 / float(np.abs(audio).max()))
    audio = (audio * gain).astype(np.float32)

    root = Path(job.root)
    uri = f"audio/{job.track_id}.ogg"
    _write_atomically(root / uri, encode_audio(audio, SAMPLE_RATE, ".ogg"))
    row = {
        "track_id": job.track_id, "uri": uri, "label": style.label, "title": _title(score, piece),
        "artist": _artist(score, piece, style), "composer": _composer(score, piece, style),
        "mode": mode, "key": _KEY_NAMES[tonic], "tempo_bpm": round(beat_bpm, 2), "tempo_source": tempo_source,
        "activity": round(len(onsets) / job.seconds, 3), "programs": programs,
        "instruments": list(dict.fromkeys(_GM_NAMES[p] for p in programs)),
        "transpose": transpose, "offset_s": round(offset, 3), "source": piece.name, "format": "ogg",
        "sample_rate": SAMPLE_RATE, "channels": 1, "duration_s": n / SAMPLE_RATE,
        "render_version": RENDER_VERSION,
    }
    _write_atomically(root / "renders" / f"{job.track_id}.json", json.dumps(row, sort_keys=True).encode())
    return row


def mood(mode: str, activity: float) -> str:
    """The documented rule: major / minor crossed with lively (>= LIVELY_ONSETS_PER_S onsets a second) or not."""
    lively = activity >= LIVELY_ONSETS_PER_S
    return {("major", False): "calm", ("major", True): "bright", ("minor", False): "melancholy",
            ("minor", True): "intense"}[(mode, lively)]


def _synthesise(excerpt: list[tuple[float, float, int, int, int]], programs: list[int], job: _Job) -> np.ndarray:
    """The excerpt's notes through fluidsynth: mono float32 at SAMPLE_RATE."""
    with tempfile.TemporaryDirectory(prefix="realmusic-") as folder:
        midi, wav = Path(folder) / "excerpt.mid", Path(folder) / "excerpt.wav"
        midi.write_bytes(_midi_file(excerpt, programs))
        command = ["fluidsynth", "-ni", "-q", "-F", str(wav), "-T", "wav", "-O", "float", "-r", str(SAMPLE_RATE),
                   "-g", "0.5", job.soundfont, str(midi)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=_FLUIDSYNTH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise _Failed(f"fluidsynth took over {_FLUIDSYNTH_TIMEOUT_S} s") from None
        if result.returncode != 0 or not wav.exists() or "not a SoundFont" in result.stderr:
            raise _Failed(f"fluidsynth failed (exit {result.returncode}): {result.stderr.strip()[-200:]}")
        audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise _Failed(f"fluidsynth wrote {rate} Hz, not {SAMPLE_RATE}")
    return audio.mean(axis=1)


def _midi_file(excerpt: list[tuple[float, float, int, int, int]], programs: list[int]) -> bytes:
    """A format-0 MIDI file: one channel per part (drums' channel 9 skipped), one tick = 1 ms."""
    def channel(part: int) -> int:
        c = part % 15
        return c if c < 9 else c + 1

    def varlen(value: int) -> bytes:
        out = [value & 0x7F]
        value >>= 7
        while value:
            out.append(0x80 | (value & 0x7F))
            value >>= 7
        return bytes(reversed(out))

    events = [(0, 0, b"\xff\x51\x03" + struct.pack(">I", 1_000_000)[1:])]  # a quarter lasts 1 s: ticks are ms
    for part, program in enumerate(programs[:15]):
        events.append((0, 0, bytes([0xC0 | channel(part), program])))
    for start, end, pitch, part, velocity in excerpt:
        on, off = int(round(start * 1000)), int(round(end * 1000))
        events.append((on, 2, bytes([0x90 | channel(part), pitch, velocity])))
        events.append((max(on + 1, off), 1, bytes([0x80 | channel(part), pitch, 0])))  # offs before ons
    events.sort(key=lambda event: (event[0], event[1]))
    track, now = bytearray(), 0
    for tick, _, data in events:
        track += varlen(tick - now) + data
        now = tick
    track += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 1000) + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def _fade(audio: np.ndarray, seconds: float) -> np.ndarray:
    audio = audio.astype(np.float64)
    fade_in, fade_out = int(0.01 * SAMPLE_RATE), int(min(1.0, seconds / 10) * SAMPLE_RATE)
    audio[:fade_in] *= np.linspace(0, 1, fade_in, endpoint=False)
    if fade_out:
        audio[-fade_out:] *= np.linspace(1, 0, fade_out)
    return audio


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _clean(text) -> str:
    return " ".join(str(text).split()) if text else ""


def _title(score, piece: _Piece) -> str:
    metadata = score.metadata
    title = _clean(metadata.title if metadata else "")
    stem = Path(piece.source).stem
    if piece.tune is not None:
        return title or f"{stem} no. {piece.tune + 1}"
    if piece.style == "bach chorale":
        return f"Chorale BWV {stem.removeprefix('bwv')}" + (f": {title}" if title else "")
    if piece.style == "renaissance mass":
        return stem.replace("_", " ") + (f": {title}" if title else "")
    if piece.style == "madrigal":
        return f"Madrigal {stem.removeprefix('madrigal.')}" + (f": {title}" if title else "")
    if piece.style == "trecento":
        return re.sub(r"^(PMFC[_ ][\d_a-z]*-|Fava_)", "", stem).replace("_", " ")
    if piece.style == "string quartet":
        work = Path(piece.source).parent.name if stem.startswith("movement") else stem
        work = re.sub(r"opus(\d+)no(\d+)", r"Op. \1 No. \2", work)
        work = re.sub(r"opus(\d+)", r"Op. \1", work)
        work = re.sub(r"^k(\d+)", r"K. \1", work)
        return work + (f", movement {stem.removeprefix('movement')}" if stem.startswith("movement") else "")
    return title or stem


def _composer(score, piece: _Piece, style: _Style) -> str:
    if style.composer:
        return style.composer
    if piece.style == "string quartet":
        return _QUARTET_COMPOSERS[piece.source.split("/")[0]]
    attribution = _clean((score.metadata.composer if score.metadata else "") or "").split(" (")[0]
    words = []
    for word in attribution.split():  # "Gherardello F-Pn 568" -> "Gherardello": manuscript sigla end the name
        if re.search(r"[\d?/]|^[A-Z]{1,3}-", word):
            break
        words.append(word)
    name = " ".join(words)
    return "Anonymous" if not name or name.lower().startswith(("anon", "anonyous")) else name


def _artist(score, piece: _Piece, style: _Style) -> str:
    composer = _composer(score, piece, style)
    if composer != "Traditional":
        return composer
    collection, stem = piece.source.split("/")[0], Path(piece.source).stem
    book = _BOOKS.get(collection, collection)
    if collection == "ryansMammoth" or collection == "miscFolk":
        return book
    if collection == "airdsAirs":
        return f"{book}, book {stem.removeprefix('book')}"
    return f"{book}, {stem}"


# -- the whole catalog ----------------------------------------------------------------------------

_CATALOG_SCHEMA = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),  # relative to the manifest's folder
    pa.field("label", pa.string(), nullable=False),  # the style
    pa.field("title", pa.string()),
    pa.field("artist", pa.string()),
    pa.field("composer", pa.string()),
    pa.field("mood", pa.string()),
    pa.field("mode", pa.string()),
    pa.field("key", pa.string()),
    pa.field("tempo_bpm", pa.float64()),
    pa.field("tempo_source", pa.string()),
    pa.field("activity", pa.float64()),
    pa.field("programs", pa.list_(pa.int32())),
    pa.field("instruments", pa.list_(pa.string())),
    pa.field("transpose", pa.int32()),
    pa.field("offset_s", pa.float64()),
    pa.field("source", pa.string()),
    pa.field("format", pa.string()),
    pa.field("sample_rate", pa.int32()),
    pa.field("channels", pa.int32()),
    pa.field("duration_s", pa.float64()),
])


def build(out: str | Path, tracks: int = 1200, users: int = 3000, seconds: float = 30.0, seed: int = 0,
          workers: int | None = None, styles: list[str] | None = None, soundfont: str | None = None,
          progress: Callable[[str], None] | None = print) -> RealCatalog:
    """Render the catalog into ``out`` and draw its sessions (the module docstring says what and how).

    Args:
        out: the folder; created if missing. Files of an earlier run with other arguments are removed.
        tracks: catalog size (when the corpus allows), at least 2 and one per style.
        users: listeners in the sessions.
        seconds: length of every excerpt.
        seed: everything written, but ``manifest.json``'s timings, is a function of the arguments
            (``workers`` changes nothing).
        workers: rendering processes; default: the CPU count.
        styles: labels to build (default: all of ``STYLES``, in that order).
        soundfont: the General MIDI soundfont; default ``SOUNDFONT`` (Debian's fluid-soundfont-gm).
        progress: called with a line of text now and then; None for silence.

    Raises:
        ValueError: an argument is out of range; the message names it.
        RuntimeError: fluidsynth, the soundfont or music21 is missing, or no piece could be rendered.
    """
    started = time.monotonic()
    report = progress or (lambda line: None)
    _check_int("tracks", tracks, 1)
    _check_int("users", users, 1)
    _check_int("seed", seed, 0)
    if workers is not None:
        _check_int("workers", workers, 1)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or not 1 <= seconds <= 600:
        raise ValueError(f"seconds must be a number from 1 to 600, got {seconds!r}")
    chosen = [_STYLE[label] for label in (styles or [s.label for s in STYLES]) if label in _STYLE]
    unknown = [label for label in (styles or []) if label not in _STYLE]
    if unknown or not chosen:
        raise ValueError(f"styles must be among {', '.join(s.label for s in STYLES)}; got {styles!r}")
    if len({s.label for s in chosen}) != len(chosen):
        raise ValueError(f"styles must not repeat, got {styles!r}")
    chosen = [s for s in STYLES if s in chosen]  # the table's order: it fixes the sessions' draws
    if tracks < max(2, len(chosen)):
        raise ValueError(f"tracks must be at least 2 and the number of styles ({len(chosen)}), got {tracks}")
    soundfont = str(Path(soundfont or SOUNDFONT).resolve())
    if shutil.which("fluidsynth") is None:
        raise RuntimeError("fluidsynth is not installed: apt-get install fluidsynth fluid-soundfont-gm")
    if not Path(soundfont).is_file():
        raise RuntimeError(f"no soundfont at {soundfont}: apt-get install fluid-soundfont-gm, or pass --soundfont")
    with open(soundfont, "rb") as file:
        head = file.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"sfbk":  # fluidsynth would quietly play its default soundfont instead
        raise RuntimeError(f"{soundfont} is not a SoundFont 2 file")
    corpus = corpus_root()

    root = Path(out).resolve()
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "renders").mkdir(exist_ok=True)
    queues: dict[str, list[_Piece]] = {}
    for number, style in enumerate(STYLES):
        if style in chosen:
            pieces = _candidates(style, corpus)
            order = np.random.default_rng([seed, _PLAN_STREAM, number]).permutation(len(pieces))
            queues[style.label] = [pieces[i] for i in order]
    quotas = _quotas({label: len(queue) for label, queue in queues.items()}, tracks)
    report(f"real-music catalog: {sum(quotas.values())} tracks of {seconds:g} s from {len(chosen)} styles "
           f"({', '.join(f'{label} {count}' for label, count in quotas.items())}) into {root}")

    rows: dict[str, list[dict]] = {label: [] for label in queues}
    failed: list[tuple[str, str]] = []
    done = skipped = 0
    workers = workers or os.cpu_count() or 1
    next_piece, failures = dict.fromkeys(queues, 0), dict.fromkeys(queues, 0)
    with _pool(workers) as pool:
        while True:
            jobs = []
            for label, queue in queues.items():  # what each style still lacks, from its next pieces
                missing = quotas[label] - len(rows[label])
                if failures[label] >= max(10, quotas[label]):  # something is wrong beyond one piece: give up
                    missing = 0
                while missing > 0 and next_piece[label] < len(queue):
                    piece = queue[next_piece[label]]
                    next_piece[label] += 1
                    jobs.append(_Job(piece, _track_id(piece, seed, float(seconds)), seed, float(seconds), str(root),
                                     str(corpus), soundfont))
                    missing -= 1
            if not jobs:
                break
            results: dict[int, dict] = {}
            to_render = []
            for index, job in enumerate(jobs):
                reused = _reusable(root, job.track_id)
                if reused is not None:
                    results[index] = {**reused, "reused": True}
                else:
                    to_render.append(index)
            step, failed_now = max(1, len(to_render) // 10), 0
            for finished, (index, result) in enumerate(_map(pool, jobs, to_render), start=1):
                results[index] = result
                failed_now += "failed" in result
                if finished % step == 0 or finished == len(to_render):
                    report(f"audio: {finished}/{len(to_render)} pieces rendered ({failed_now} failed)")
            for index, job in enumerate(jobs):  # in plan order: which piece fills a slot is deterministic
                result = results[index]
                if "failed" in result:
                    failed.append((job.piece.name, result["failed"]))
                    failures[job.piece.style] += 1
                    continue
                if result.pop("reused", False):
                    skipped += 1
                else:
                    done += 1
                rows[job.piece.style].append(result)

    catalog = [row for label in queues for row in rows[label]]
    if len(catalog) < 2:  # the sessions need two tracks at least
        raise RuntimeError(f"{'no piece' if not catalog else 'only one piece'} could be rendered"
                           + (f" ({len(failed)} failed; the first: {failed[0][0]}: {failed[0][1]})" if failed else ""))
    catalog.sort(key=lambda row: row["track_id"])
    for row in catalog:
        row["mood"] = mood(row["mode"], row["activity"])
    _remove_stale(root, {row["track_id"] for row in catalog})
    table = pa.table({name: [row[name] for row in catalog] for name in _CATALOG_SCHEMA.names}, schema=_CATALOG_SCHEMA)
    manifest = root / "catalog.parquet"
    pq.write_table(table, manifest)

    present = [s for s in chosen if rows[s.label]]
    listening = ListeningStyles(tuple(s.label for s in present), {s.label: s.peak_hour for s in present},
                                cold_share=COLD_SHARE)
    listened = [ListenedTrack(row["track_id"], row["label"], row["artist"], row["tempo_bpm"]) for row in catalog]
    train, test, cold = listening_sessions(listened, users, seed, listening)
    sessions_train, sessions_test = root / "sessions_train.parquet", root / "sessions_test.parquet"
    pq.write_table(train, sessions_train)
    pq.write_table(test, sessions_test)
    (root / "cold_tracks.txt").write_text("".join(f"{track_id}\n" for track_id in cold))

    pieces_in = done + skipped + len(failed)
    summary = _summary(catalog, train, test, cold, users, seconds, seed, pieces_in, done, skipped, failed,
                       time.monotonic() - started, soundfont)
    _write_atomically(root / "manifest.json", (json.dumps(summary, indent=1) + "\n").encode())
    report(f"pieces: {pieces_in} in = {done} done + {skipped} skipped (reused) + {len(failed)} failed")
    for name, reason in failed:
        report(f"  failed: {name}: {reason}")
    report("tracks per style: " + ", ".join(f"{k} {v}" for k, v in summary["styles"].items()))
    report("tracks per mood: " + ", ".join(f"{k} {v}" for k, v in summary["moods"].items()))
    report(f"sessions: {summary['sessions']['train']} train ({train.num_rows} plays), "
           f"{summary['sessions']['test']} test ({test.num_rows} plays), {len(cold)} cold tracks, {users} users; "
           f"built in {summary['build_seconds']:.0f} s")
    return RealCatalog(root, manifest, sessions_train, sessions_test, cold, pieces_in, done, skipped, tuple(failed))


def _reusable(root: Path, track_id: str) -> dict | None:
    """The row an earlier run left for this track, when its audio is there too and the render version matches."""
    row_path, audio = root / "renders" / f"{track_id}.json", root / "audio" / f"{track_id}.ogg"
    if not (row_path.is_file() and audio.is_file()):
        return None
    try:
        row = json.loads(row_path.read_text())
    except (OSError, ValueError):
        return None
    return row if row.get("render_version") == RENDER_VERSION and row.get("track_id") == track_id else None


def _remove_stale(root: Path, keep: set[str]) -> None:
    """Drop tracks (and half-written files) an earlier run left that this catalog does not hold."""
    for folder, extension in (("audio", ".ogg"), ("renders", ".json")):
        for path in (root / folder).iterdir():
            if path.name.endswith(".tmp") or (re.fullmatch(r"trk[0-9a-f]{10}" + re.escape(extension), path.name)
                                             and path.name[: -len(extension)] not in keep):
                path.unlink()


def _summary(catalog: list[dict], train: pa.Table, test: pa.Table, cold: tuple[str, ...], users: int,
             seconds: float, seed: int, pieces_in: int, done: int, skipped: int, failed: list[tuple[str, str]],
             elapsed: float, soundfont: str) -> dict:
    import music21

    fluidsynth = subprocess.run(["fluidsynth", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    by_style = Counter(row["label"] for row in catalog)
    return {
        "tracks": len(catalog),
        "styles": {s.label: by_style[s.label] for s in STYLES if by_style[s.label]},
        "moods": dict(sorted(Counter(row["mood"] for row in catalog).items())),
        "moods_by_style": {s.label: dict(sorted(Counter(r["mood"] for r in catalog if r["label"] == s.label).items()))
                           for s in STYLES if by_style[s.label]},
        "tempo_source": dict(sorted(Counter(row["tempo_source"] for row in catalog).items())),
        "cold_tracks": len(cold),
        "users": users,
        "sessions": {"train": len(set(train.column("session_id").to_pylist())),
                     "test": len(set(test.column("session_id").to_pylist()))},
        "plays": {"train": train.num_rows, "test": test.num_rows},
        "pieces": {"in": pieces_in, "done": done, "skipped": skipped, "failed": len(failed)},
        "failures": [{"piece": name, "reason": reason} for name, reason in failed],
        "audio": {"format": "ogg", "sample_rate": SAMPLE_RATE, "channels": 1, "seconds": seconds},
        "seed": seed,
        "build_seconds": round(elapsed, 1),
        "versions": {"music21": music21.__version__, "fluidsynth": fluidsynth, "soundfont": soundfont,
                     "render_version": RENDER_VERSION},
        "licences": "works in the public domain; encodings from music21's corpus (see music21/corpus/license.txt, "
                    "Essen folk songs: non-commercial use); FluidR3_GM soundfont: MIT",
    }


def _pool(workers: int) -> ProcessPoolExecutor | contextlib.nullcontext:
    """A process pool (forked when this process runs no other threads, else spawned); none for one worker."""
    if workers == 1:
        return contextlib.nullcontext()
    fork = "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork" if fork else "spawn"))


def _map(pool: ProcessPoolExecutor | None, jobs: list[_Job], indices: list[int]):
    """(index, ``_render(jobs[index])``) for each index, as they finish; in this process without a pool."""
    if pool is None:
        for index in indices:
            yield index, _render(jobs[index])
        return
    futures = {pool.submit(_render, jobs[index]): index for index in indices}
    for future in as_completed(futures):
        yield futures[future], future.result()


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.catalogs.real_music",
                                     description="Render a catalog of real music (public-domain scores through a "
                                                 "General MIDI soundfont) with listening sessions.")
    parser.add_argument("--out", required=True, help="the folder to write into")
    parser.add_argument("--tracks", type=int, default=1200)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of every excerpt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: the CPU count)")
    parser.add_argument("--styles", default=None, help="comma-separated labels (default: all eleven)")
    parser.add_argument("--soundfont", default=None, help=f"a General MIDI .sf2 (default {SOUNDFONT})")
    args = parser.parse_args(argv)
    styles = [label.strip() for label in args.styles.split(",") if label.strip()] if args.styles else None
    try:
        build(args.out, tracks=args.tracks, users=args.users, seconds=args.seconds, seed=args.seed,
              workers=args.workers, styles=styles, soundfont=args.soundfont)
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
