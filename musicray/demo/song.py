"""The musical frame a style arranges notes in (``_Song``) and the stereo bus it mixes into (``_Mix``).

``_Song`` turns beats into samples (with swing and rubato), scale degrees into MIDI pitches and
chord slots into chords; ``_Mix`` pans mono parts with a constant-power law.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from musicray.demo.dsp import _F32, _place


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
