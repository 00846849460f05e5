"""One planned track to one audio file: its song frame, its style's arrangement, mixdown, encoding.

Each track draws from its own ``np.random.default_rng([seed, _AUDIO_STREAM, index])``, so a track
is reproducible on its own and the number of worker processes changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from musicray.demo.dsp import _F32, _fade
from musicray.demo.plan import _AUDIO_STREAM, _MODES, _STYLE_MUSIC, _TrackSpec
from musicray.demo.song import _Mix, _Song
from musicray.demo.styles import _ARRANGEMENTS, _SWING


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
