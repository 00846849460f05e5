"""The catalog plan: which track is what, decided before any audio exists.

Every track's style, artist, title, mode, key, tempo, file format, sample rate and channel count,
drawn from one seeded stream (``_CATALOG_STREAM``), and the catalog table written from them. The
format, rate and channels are drawn independently of the style, so none of them gives it away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


STYLES: tuple[str, ...] = ("ambient", "techno", "rock", "jazz", "chiptune", "lofi", "classical", "folk")

_FORMATS = ("flac", "mp3", "ogg", "wav")
_SAMPLE_RATES = (22050, 32000, 44100, 48000)
_CHANNELS = (1, 2)


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
