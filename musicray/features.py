"""Audio feature maths on batches of waveforms, in torch (CPU or GPU).

One STFT per track; every feature is derived from it:

    waveform -> |STFT| -> power -> mel (128, slaney) -> log-mel (dB, top_db 80) -> MFCC (20, DCT-II ortho)
                                -> chroma (12, A440, no tuning estimation)
                       -> magnitude -> spectral centroid / bandwidth / rolloff / flatness, RMS
               log-mel -> onset strength (spectral flux) -> tempo (tempogram autocorrelation + prior)

The definitions follow librosa's so numbers are comparable with the wider MIR world:
``tests/test_features.py`` checks log-mel, MFCC and chroma against librosa's reference
functions. Chroma uses a fixed A440 tuning (``librosa.feature.chroma_stft(tuning=0.0)``):
librosa's per-track tuning estimation costs more than all the other features together.

Tracks shorter than the crop are zero-padded to a fixed length so a batch is one tensor;
summary statistics use only the frames that hold real audio.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchaudio.functional as AF

# Bump when the maths below changes: rows with another version are re-extracted.
FEATURE_CODE_VERSION = 1
# The tempogram averages windows centred every 4th onset frame rather than every frame (as
# librosa does): the mean autocorrelation barely moves and the tempo costs 4x less.
TEMPO_WINDOW_STEP = 4


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 22050
    crop_seconds: float = 30.0
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    n_mfcc: int = 20
    n_chroma: int = 12
    top_db: float = 80.0
    tempo_window: int = 384  # onset frames per tempogram window (~8.9 s), as librosa
    min_bpm: float = 30.0
    max_bpm: float = 300.0

    @property
    def n_samples(self) -> int:
        return int(round(self.crop_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        return 1 + self.n_samples // self.hop_length

    @property
    def version(self) -> str:
        """Identifies code + parameters; part of every row so a change triggers re-extraction."""
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        return f"v{FEATURE_CODE_VERSION}-{digest}"


SCALAR_FEATURES = (
    "spectral_centroid_mean", "spectral_bandwidth_mean", "spectral_rolloff_mean",
    "spectral_flatness_mean", "rms_mean", "rms_std", "onset_strength_mean", "tempo_bpm",
)


class FeatureExtractor:
    """Computes every feature of a batch of equal-length mono waveforms on one device."""

    def __init__(self, config: FeatureConfig = FeatureConfig(), device: str | torch.device = "cpu"):
        self.config = c = config
        self.device = torch.device(device)
        n_freqs = c.n_fft // 2 + 1
        self.window = torch.hann_window(c.n_fft, periodic=True, device=self.device)
        self.freqs = torch.linspace(0, c.sample_rate / 2, n_freqs, device=self.device)
        mel = AF.melscale_fbanks(n_freqs, 0.0, c.sample_rate / 2, c.n_mels, c.sample_rate,
                                 norm="slaney", mel_scale="slaney")  # (freqs, mels), as librosa's
        self.mel_fb = mel.T.contiguous().to(self.device)
        self.dct = AF.create_dct(c.n_mfcc, c.n_mels, norm="ortho").to(self.device)  # (mels, mfcc)
        chroma = chroma_filterbank(c.sample_rate, c.n_fft, c.n_chroma)
        self.chroma_fb = torch.from_numpy(chroma).float().to(self.device)  # (chroma, freqs)
        self.tempo_lag_window = torch.hann_window(c.tempo_window, periodic=False, device=self.device)
        frame_rate = c.sample_rate / c.hop_length
        lags = torch.arange(c.tempo_window, device=self.device, dtype=torch.float32)
        self.lag_bpm = 60.0 * frame_rate / lags.clamp(min=1)  # lag 0 is excluded below
        # librosa's tempo prior: log-normal around 120 BPM with a one-octave spread.
        self.log_prior = -0.5 * ((torch.log2(self.lag_bpm) - math.log2(120.0)) / 1.0) ** 2
        valid = (lags > 0) & (self.lag_bpm >= c.min_bpm) & (self.lag_bpm <= c.max_bpm)
        self.log_prior = torch.where(valid, self.log_prior, torch.tensor(-torch.inf, device=self.device))

    @torch.inference_mode()
    def __call__(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``waveforms`` (batch, samples) float32; ``lengths`` real samples per row (default: all).

        Returns per-track tensors: ``logmel`` (B, mels, frames), ``logmel_mean``/``logmel_std``
        (B, mels), ``mfcc_mean``/``mfcc_std`` (B, 20),
        ``chroma_mean`` (B, 12) and each name in ``SCALAR_FEATURES`` (B,).
        """
        c = self.config
        waveforms = waveforms.to(self.device, torch.float32)
        batch, n = waveforms.shape
        if lengths is None:
            lengths = torch.full((batch,), n)
        n_frames = 1 + n // c.hop_length
        valid_frames = (1 + lengths.to(self.device) // c.hop_length).clamp(max=n_frames)
        mask = (torch.arange(n_frames, device=self.device)[None, :] < valid_frames[:, None]).float()

        stft = torch.stft(waveforms, c.n_fft, c.hop_length, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        power = stft.real.square() + stft.imag.square()  # (B, freqs, frames); no complex abs
        magnitude = power.sqrt()

        logmel = power_to_db(self.mel_fb @ power, c.top_db)
        mfcc = torch.einsum("bmt,mk->bkt", logmel, self.dct)
        chroma = self.chroma_fb @ power
        chroma = chroma / _safe_norm(chroma.amax(dim=1, keepdim=True))

        # Centroid and bandwidth as the first two frequency moments of the magnitude spectrum:
        # matrix-vector products instead of full-size temporaries.
        total = _safe_norm(magnitude.sum(dim=1))
        centroid = torch.einsum("f,bft->bt", self.freqs, magnitude) / total
        second_moment = torch.einsum("f,bft->bt", self.freqs.square(), magnitude) / total
        bandwidth = (second_moment - centroid.square()).clamp(min=0).sqrt()
        cumulative = magnitude.cumsum(dim=1)
        reached = cumulative >= 0.85 * cumulative[:, -1:, :]
        rolloff = self.freqs[reached.int().argmax(dim=1)]  # the first bin holding 85% of the energy
        floored = power.clamp(min=1e-10)
        flatness = floored.log().mean(dim=1).exp() / floored.mean(dim=1)
        rms = _rms_from_power(power, c.n_fft)

        onset = _onset_strength(logmel, c.n_fft, c.hop_length) * mask
        tempo = self._tempo(onset, valid_frames)

        mfcc_mean = masked_mean(mfcc, mask)
        logmel_mean = masked_mean(logmel, mask)
        rms_mean = masked_mean(rms, mask)
        return {
            "logmel": logmel,
            "logmel_mean": logmel_mean,  # per-band summaries: a compact content vector for the models
            "logmel_std": masked_std(logmel, mask, logmel_mean),
            "mfcc_mean": mfcc_mean,
            "mfcc_std": masked_std(mfcc, mask, mfcc_mean),
            "chroma_mean": masked_mean(chroma, mask),
            "spectral_centroid_mean": masked_mean(centroid, mask),
            "spectral_bandwidth_mean": masked_mean(bandwidth, mask),
            "spectral_rolloff_mean": masked_mean(rolloff, mask),
            "spectral_flatness_mean": masked_mean(flatness, mask),
            "rms_mean": rms_mean,
            "rms_std": masked_std(rms, mask, rms_mean),
            "onset_strength_mean": masked_mean(onset, mask),
            "tempo_bpm": tempo,
        }

    def _tempo(self, onset: torch.Tensor, valid_frames: torch.Tensor) -> torch.Tensor:
        """Global tempo: the mean windowed autocorrelation of onset strength, weighted by a prior."""
        w, step = self.config.tempo_window, TEMPO_WINDOW_STEP
        padded = torch.nn.functional.pad(onset, (w // 2, w // 2))
        windows = padded.unfold(-1, w, step) * self.tempo_lag_window  # (B, frames / step, w)
        spectrum = torch.fft.rfft(windows, n=2 * w)
        acf = torch.fft.irfft(spectrum.real.square() + spectrum.imag.square(), n=2 * w)[..., :w]
        acf = acf / _safe_norm(acf[..., :1])
        centres = torch.arange(acf.shape[1], device=acf.device) * step
        frame_mask = (centres[None, :] < valid_frames[:, None]).float()
        tempogram = (acf * frame_mask[..., None]).sum(dim=1) / frame_mask.sum(dim=1, keepdim=True)
        score = torch.log1p(1e6 * tempogram.clamp(min=0)) + self.log_prior
        bpm = self.lag_bpm[score.argmax(dim=-1)]
        silent = tempogram[:, 1:].abs().amax(dim=-1) == 0
        return torch.where(silent, torch.zeros_like(bpm), bpm)


def chroma_filterbank(sample_rate: int, n_fft: int, n_chroma: int = 12) -> np.ndarray:
    """``librosa.filters.chroma(tuning=0.0)``: Gaussian bumps per pitch class over the FFT bins,
    weighted towards octave 5. Ported (rather than imported) so that feature workers do not
    pay librosa's 1.7 s import; the tests compare it with librosa's own chroma."""
    frequencies = np.linspace(0, sample_rate, n_fft, endpoint=False)[1:]
    bins = n_chroma * np.log2(frequencies / (440.0 / 16))
    bins = np.concatenate(([bins[0] - 1.5 * n_chroma], bins))  # a made-up, broad 0 Hz bin
    widths = np.concatenate((np.maximum(bins[1:] - bins[:-1], 1.0), [1]))
    half = np.round(n_chroma / 2)
    distance = np.remainder(np.subtract.outer(bins, np.arange(n_chroma)).T + half + 10 * n_chroma, n_chroma) - half
    weights = np.exp(-0.5 * (2 * distance / widths[None, :]) ** 2)
    weights /= np.linalg.norm(weights, axis=0, keepdims=True)
    weights *= np.exp(-0.5 * ((bins / n_chroma - 5.0) / 2.0) ** 2)[None, :]
    weights = np.roll(weights, -3 * (n_chroma // 12), axis=0)  # start at C, not A
    return np.ascontiguousarray(weights[:, : n_fft // 2 + 1], dtype=np.float32)


def power_to_db(power: torch.Tensor, top_db: float | None = 80.0) -> torch.Tensor:
    """``librosa.power_to_db(ref=1.0, amin=1e-10, top_db)``, per batch item."""
    db = 10.0 * torch.log10(power.clamp(min=1e-10))
    if top_db is not None:
        peak = db.flatten(1).amax(dim=1).view(-1, *([1] * (db.dim() - 1)))
        db = torch.maximum(db, peak - top_db)
    return db


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the last (frame) axis of ``x`` counting only frames where ``mask`` is 1."""
    if x.dim() == 3:
        mask = mask[:, None, :]
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def masked_std(x: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        mask = mask[:, None, :]
    deviation = (x - mean[..., None]).square() * mask
    return (deviation.sum(-1) / mask.sum(-1).clamp(min=1)).sqrt()


def _safe_norm(norm: torch.Tensor) -> torch.Tensor:
    # As librosa.util.normalize: an all-zero (silent) column is left as it is, not divided by 0.
    return torch.where(norm < torch.finfo(norm.dtype).tiny, torch.ones_like(norm), norm)


def _rms_from_power(power: torch.Tensor, frame_length: int) -> torch.Tensor:
    """``librosa.feature.rms(S=magnitude)``: Parseval, with half weight on the DC and Nyquist bins."""
    energy = power.sum(dim=1) - 0.5 * power[:, 0]
    if frame_length % 2 == 0:
        energy = energy - 0.5 * power[:, -1]
    return (2.0 * energy / frame_length**2).sqrt()


def _onset_strength(logmel: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """``librosa.onset.onset_strength(S=logmel)``: mean positive spectral flux, frame-aligned."""
    flux = (logmel[..., 1:] - logmel[..., :-1]).clamp(min=0).mean(dim=1)
    pad = 1 + n_fft // (2 * hop_length)  # lag + the STFT centring offset, as librosa
    return torch.nn.functional.pad(flux, (pad, 0))[..., : logmel.shape[-1]]


def pad_batch(clips: list[np.ndarray], n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length clips into a zero-padded (batch, n_samples) tensor plus their lengths."""
    batch = torch.zeros(len(clips), n_samples, dtype=torch.float32)
    lengths = torch.zeros(len(clips), dtype=torch.long)
    for i, clip in enumerate(clips):
        length = min(len(clip), n_samples)
        batch[i, :length] = torch.from_numpy(np.asarray(clip[:length], dtype=np.float32))
        lengths[i] = length
    return batch, lengths
