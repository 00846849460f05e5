"""Decoding: formats, rates, channel counts, crops, and every kind of bad file."""

import io

import numpy as np
import pytest
import soundfile as sf

from musicray.audio import AudioError, decode
from tests.conftest import audio_bytes


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "MP3", "OGG"])
def test_formats_decode_to_mono_at_target_rate(fmt):
    clip = decode(audio_bytes(4.0, fmt, sample_rate=44100, channels=2), sample_rate=22050)
    assert clip.sample_rate == 22050 and clip.source_sample_rate == 44100 and clip.source_channels == 2
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert abs(len(clip.samples) - 4.0 * 22050) < 0.05 * 22050  # MP3 encoders add a little padding
    assert abs(clip.duration_s - 4.0) < 0.1


def test_resampling_keeps_pitch_for_8khz_mono_and_44khz_stereo():
    for rate, channels in [(8000, 1), (44100, 2)]:
        clip = decode(audio_bytes(3.0, "WAV", sample_rate=rate, channels=channels, freq=440.0))
        spectrum = np.abs(np.fft.rfft(clip.samples))
        peak_hz = np.argmax(spectrum) * clip.sample_rate / len(clip.samples)
        assert abs(peak_hz - 440.0) < 2.0, (rate, channels, peak_hz)
        assert len(clip.samples) == 3 * 22050


def test_long_file_decodes_only_the_centre_crop():
    rate = 8000
    twenty_minutes = np.zeros((20 * 60 * rate, 1), dtype=np.float32)
    centre = 10 * 60 * rate
    twenty_minutes[centre - rate: centre + rate] = 0.5  # a 2 s marker in the middle
    buffer = io.BytesIO()
    sf.write(buffer, twenty_minutes, rate, format="FLAC")
    clip = decode(buffer.getvalue(), sample_rate=22050, crop_seconds=30.0)
    assert clip.duration_s == pytest.approx(1200.0)
    assert len(clip.samples) == 30 * 22050
    middle = clip.samples[14 * 22050: 16 * 22050]
    assert np.abs(middle).mean() > 0.4  # the marker sits at the crop's centre
    assert np.abs(clip.samples[: 10 * 22050]).max() < 0.01


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"", "empty"),
        (np.random.default_rng(1).bytes(8000), "decode_error"),  # random bytes named .mp3
        (b"RIFF\x24\x08\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\xff" * 64, "decode_error"),  # corrupt header
        (audio_bytes(0.5, "WAV"), "too_short"),
    ],
    ids=["zero-byte", "random-bytes", "corrupt-wav-header", "under-1s"],
)
def test_bad_files_raise_a_named_error(data, kind):
    with pytest.raises(AudioError) as error:
        decode(data)
    assert error.value.kind == kind
    assert str(error.value)


def test_truncated_flac_is_reported_as_truncated():
    data = audio_bytes(10.0, "FLAC", sample_rate=44100)
    with pytest.raises(AudioError) as error:
        decode(data[: len(data) // 2])
    assert error.value.kind == "truncated"
    assert "ends early" in str(error.value)


def test_silence_decodes():
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(3 * 22050, dtype=np.float32), 22050, format="WAV")
    clip = decode(buffer.getvalue())
    assert np.all(clip.samples == 0) and len(clip.samples) == 3 * 22050
