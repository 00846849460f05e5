"""The instruments: pitched voices, the sampler that plays them, drum one-shots and vinyl noise.

A voice is a function from a frequency to one decaying note (a plucked string, a plain decaying
tone, an electric or an acoustic piano); ``_Sampler`` renders each pitch once and mixes copies of
it into a part. Drums are one-shot arrays that ``_Song.hits`` places on beats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import signal

from musicray.demo.dsp import (
    _F32, _decay, _filter, _harmonic_table, _hz, _noise, _oscillator, _place, _pulse_table, _read_table,
    _table_oscillator, _through_lowpass,
)


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


def _vinyl(n: int, sr: int, rng: np.random.Generator, cutoff: float) -> np.ndarray:
    """Crackle (sparse clicks of random size) over hiss; one second of hiss, looped, sounds like any other."""
    hiss = _filter(_noise(rng, sr), "lowpass", cutoff, sr) * _F32(0.004)
    noise = np.tile(hiss, -(-n // sr))[:n]
    click = _filter(signal.unit_impulse(int(0.004 * sr)), "bandpass", [1000.0, 6000.0], sr)
    count = rng.poisson(rng.uniform(8, 20) * n / sr)
    for start, size in zip(rng.integers(0, n, count), rng.pareto(3.0, count)):
        _place(noise, int(start), click, float(rng.choice([-1, 1]) * min(size, 4.0)))
    return noise
