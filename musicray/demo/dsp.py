"""Signal primitives the instruments and styles are built from.

Wavetable oscillators, envelopes and fades, noise, mixing a sound into a buffer, Butterworth
filters and a convolution reverb; all numpy/scipy, float32 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import signal


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
