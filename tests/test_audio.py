"""Decoding: formats, rates, channel counts, crops, every kind of bad file; and encoding back to files."""

import io

import numpy as np
import pytest
import soundfile as sf

from musicray.audio import AudioError, decode, encode_audio, ogg_crc, write_audio
from tests.conftest import audio_bytes, tone


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


# ---------------------------------------------------------------------------------------------
# Encoding


@pytest.mark.parametrize("extension,fmt", [(".wav", "WAV"), (".flac", "FLAC"), (".ogg", "OGG")])
def test_write_audio_by_extension(tmp_path, extension, fmt):
    waveform = tone(2.0)[:, 0]
    path = str(tmp_path / f"clip{extension}")
    write_audio(path, waveform, 22050)
    info = sf.info(path)
    assert info.format == fmt and info.samplerate == 22050 and info.frames == len(waveform)
    samples, _ = sf.read(path, dtype="float32")
    assert np.corrcoef(samples, waveform)[0, 1] > 0.99
    first = (tmp_path / f"clip{extension}").read_bytes()
    write_audio(path, waveform, 22050)
    assert (tmp_path / f"clip{extension}").read_bytes() == first  # Ogg too: its stream serial is fixed


def test_write_audio_rejects_other_extensions(tmp_path):
    for name in ("clip.mp3", "clip"):
        with pytest.raises(ValueError, match=f"unsupported audio output '.*{name}'.*\\.wav, \\.flac, \\.ogg"):
            write_audio(str(tmp_path / name), np.zeros(100, dtype=np.float32), 22050)


def _bitwise_ogg_crc(data: bytes) -> int:
    """The Ogg spec's CRC-32 bit by bit (polynomial 0x04C11DB7, MSB first, initial 0, no final xor)."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def test_ogg_pages_carry_the_fixed_serial_and_valid_checksums():
    rng = np.random.default_rng(0)
    waveform = 0.5 * tone(6.0)[:, 0] + 0.05 * rng.normal(size=6 * 22050).astype(np.float32)
    data = encode_audio(waveform, 22050, ".ogg")
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 22050 and len(samples) == len(waveform)
    position, pages = 0, 0
    while position < len(data):
        assert data[position: position + 4] == b"OggS"
        segments = data[position + 26]
        size = 27 + segments + sum(data[position + 27: position + 27 + segments])
        page = bytearray(data[position: position + size])
        assert int.from_bytes(page[14:18], "little") == 0x6D726179  # "mray", on every page
        stored = int.from_bytes(page[22:26], "little")
        page[22:26] = bytes(4)  # the checksum is of the page with its own field zeroed
        assert stored == _bitwise_ogg_crc(bytes(page)), f"page {pages}"
        position, pages = position + size, pages + 1
    assert pages > 3 and position == len(data)
    for length in (0, 1, 3, 1000):  # the zlib-derived CRC against the bit-by-bit one, on any bytes
        chunk = rng.bytes(length)
        assert ogg_crc(chunk) == _bitwise_ogg_crc(chunk)
