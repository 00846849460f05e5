"""Feature maths: parity with librosa's reference functions, batching, silence."""

import librosa
import numpy as np
import pytest
import torch

from musicray.features import SCALAR_FEATURES, FeatureConfig, FeatureExtractor, pad_batch
from tests.conftest import tone

SR = 22050
CONFIG = FeatureConfig(crop_seconds=6.0)


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor(CONFIG)


@pytest.fixture(scope="module")
def music():
    """Two different signals: a harmonic tone with pulses, and a chord over noise."""
    a = tone(6.0, SR, freq=330.0, seed=1)[:, 0]
    t = np.arange(int(6.0 * SR)) / SR
    b = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    b = (b + 0.05 * np.random.default_rng(2).standard_normal(t.size)).astype(np.float32)
    return [a, b]


def reference(y):
    power = np.abs(librosa.stft(y, n_fft=2048, hop_length=512)) ** 2
    logmel = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=SR, n_mels=128), top_db=80.0)
    return {
        "logmel": logmel,
        "mfcc": librosa.feature.mfcc(S=logmel, n_mfcc=20),
        "chroma": librosa.feature.chroma_stft(S=power, sr=SR, tuning=0.0),
        "centroid": librosa.feature.spectral_centroid(S=np.sqrt(power), sr=SR),
        "rolloff": librosa.feature.spectral_rolloff(S=np.sqrt(power), sr=SR),
    }


# Stated tolerances: float32 torch vs float32/float64 librosa on the same STFT parameters.
LOGMEL_ATOL_DB = 1e-3
MFCC_ATOL = 1e-3
CHROMA_ATOL = 1e-5


def test_logmel_mfcc_chroma_match_librosa(extractor, music):
    waveforms, lengths = pad_batch(music, CONFIG.n_samples)
    ours = extractor(waveforms, lengths)
    for i, y in enumerate(music):
        ref = reference(y)
        np.testing.assert_allclose(ours["logmel"][i].numpy(), ref["logmel"], atol=LOGMEL_ATOL_DB, rtol=0)
        np.testing.assert_allclose(ours["mfcc_mean"][i].numpy(), ref["mfcc"].mean(axis=1), atol=MFCC_ATOL, rtol=0)
        np.testing.assert_allclose(ours["mfcc_std"][i].numpy(), ref["mfcc"].std(axis=1), atol=MFCC_ATOL, rtol=0)
        np.testing.assert_allclose(ours["chroma_mean"][i].numpy(), ref["chroma"].mean(axis=1),
                                   atol=CHROMA_ATOL, rtol=0)
        assert ours["spectral_centroid_mean"][i].item() == pytest.approx(ref["centroid"].mean(), rel=1e-4)
        assert ours["spectral_rolloff_mean"][i].item() == pytest.approx(ref["rolloff"].mean(), rel=1e-4)
    # the two signals really differ, so the comparison above is not trivially satisfied
    assert not torch.allclose(ours["chroma_mean"][0], ours["chroma_mean"][1], atol=0.05)


def test_chroma_filterbank_is_librosas():
    from musicray.features import chroma_filterbank

    np.testing.assert_allclose(chroma_filterbank(SR, 2048), librosa.filters.chroma(sr=SR, n_fft=2048, tuning=0.0),
                               atol=1e-6)


def test_tempo_of_a_click_track():
    for bpm in (90.0, 128.0):
        y = librosa.clicks(times=np.arange(0, 6.0, 60.0 / bpm), sr=SR, length=CONFIG.n_samples)
        tempo = FeatureExtractor(CONFIG)(torch.from_numpy(y.astype(np.float32))[None])["tempo_bpm"].item()
        assert tempo == pytest.approx(bpm, rel=0.04), bpm


def test_short_clip_in_a_padded_batch_matches_the_clip_alone(extractor, music):
    short = music[1][: 3 * SR]
    alone = FeatureExtractor(FeatureConfig(crop_seconds=3.0))(torch.from_numpy(short)[None])
    waveforms, lengths = pad_batch([music[0], short], CONFIG.n_samples)
    batched = extractor(waveforms, lengths)
    for name in ("mfcc_mean", "mfcc_std", "chroma_mean", *SCALAR_FEATURES[:-1]):
        np.testing.assert_allclose(batched[name][1].numpy(), alone[name][0].numpy(), rtol=2e-3, atol=2e-3,
                                   err_msg=name)


def test_silence_gives_finite_features(extractor):
    out = extractor(torch.zeros(2, CONFIG.n_samples))
    for name, value in out.items():
        assert torch.isfinite(value).all(), name
    assert out["tempo_bpm"].eq(0).all() and out["rms_mean"].eq(0).all()


def test_version_changes_with_parameters():
    assert FeatureConfig().version != FeatureConfig(crop_seconds=10.0).version
    assert FeatureConfig().version == FeatureConfig().version
