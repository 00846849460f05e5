"""Audio in one place: decoding bytes to mono float32 at the target rate, and encoding back to files.

Decoding: libsndfile (through soundfile) reads WAV, FLAC, OGG/Vorbis/Opus and MP3 and can seek,
so only the centre crop of a long file is ever decoded. Anything libsndfile refuses
(AAC/M4A, some MP3 variants, odd containers) falls back to PyAV, whose wheels carry
their own FFmpeg. Resampling is soxr's HQ mode, the same as ``librosa.load``.

Encoding: WAV, FLAC or Ogg Vorbis by extension, byte-reproducible (the same samples give the
same bytes), so a seeded generation can be checked byte for byte.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from musicray import storage

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aiff", ".aif")
OUTPUT_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}


class AudioError(Exception):
    """A track that cannot be turned into audio; ``kind`` is a short machine-readable reason."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Clip:
    samples: np.ndarray  # float32, mono, at ``sample_rate``, at most the crop length
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    duration_s: float  # of the whole source file, not the crop


def decode(data: bytes, sample_rate: int = 22050, crop_seconds: float | None = 30.0,
           min_seconds: float = 1.0) -> Clip:
    """Decode audio bytes into a mono clip of at most ``crop_seconds`` from the track's centre.

    Raises AudioError with kind ``empty``, ``decode_error``, ``truncated``, ``too_short`` or
    ``invalid_samples``.
    """
    if not data:
        raise AudioError("empty", "file is empty (0 bytes)")
    try:
        frames, source_rate, channels, total = _read_soundfile(data, crop_seconds)
    except Exception as sf_error:  # libsndfile's errors carry no stable type: try FFmpeg next
        try:
            frames, source_rate, channels, total = _read_pyav(data, crop_seconds)
        except Exception as av_error:
            raise AudioError("decode_error", f"not decodable audio (libsndfile: {_short(sf_error)}; "
                                             f"ffmpeg: {_short(av_error)})") from None
    expected = _crop_window(total, source_rate, crop_seconds)[1]
    if frames.shape[0] < 0.9 * expected:
        raise AudioError("truncated", f"file ends early: decoded {frames.shape[0] / source_rate:.2f} s of "
                                      f"the {expected / source_rate:.2f} s its header declares")
    duration = total / source_rate
    if frames.shape[0] == 0 or duration < min_seconds:
        raise AudioError("too_short", f"audio is {duration:.3f} s long, under the {min_seconds} s minimum")
    if not np.isfinite(frames).all():
        raise AudioError("invalid_samples", "decoded samples contain NaN or infinity")
    mono = frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0]
    if source_rate != sample_rate:
        mono = soxr.resample(mono, source_rate, sample_rate, quality="HQ")
    if crop_seconds is not None:  # resampling can add a sample or two at the edges
        mono = mono[: int(round(crop_seconds * sample_rate))]
    return Clip(np.ascontiguousarray(mono, dtype=np.float32), sample_rate, source_rate, channels, duration)


def _crop_window(total: int, rate: int, crop_seconds: float | None) -> tuple[int, int]:
    if crop_seconds is None:
        return 0, total
    length = min(total, int(round(crop_seconds * rate)))
    return (total - length) // 2, length


def _read_soundfile(data: bytes, crop_seconds: float | None):
    with sf.SoundFile(io.BytesIO(data)) as f:
        total = f.frames
        start, length = _crop_window(total, f.samplerate, crop_seconds)
        if start:
            f.seek(start)
        frames = f.read(length, dtype="float32", always_2d=True)
        if frames.shape[0] < length * 0.9:  # let FFmpeg try before calling it truncated
            raise RuntimeError(f"read {frames.shape[0]} of {length} frames")
        return frames, f.samplerate, f.channels, total


def _read_pyav(data: bytes, crop_seconds: float | None):
    import av  # imported lazily: only the rare files libsndfile rejects need it

    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.audio:
            raise RuntimeError("no audio stream")
        stream = container.streams.audio[0]
        rate, channels = stream.rate, stream.channels
        known_total = None
        if stream.duration is not None and stream.time_base is not None:
            known_total = int(stream.duration * stream.time_base * rate)
        elif container.duration:
            known_total = int(container.duration / av.time_base * rate)
        start, length = _crop_window(known_total, rate, crop_seconds) if known_total else (0, None)
        # Keep only the crop window while decoding, so memory stays bounded for long files.
        resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=rate)
        kept, position = [], 0
        for packet_frame in _decode_until_error(container, stream, kept):
            for frame in resampler.resample(packet_frame):
                chunk = frame.to_ndarray().T  # (samples, channels)
                lo, hi = position, position + chunk.shape[0]
                position = hi
                if length is None:
                    kept.append(chunk)
                elif hi > start and lo < start + length:
                    kept.append(chunk[max(0, start - lo): start + length - lo])
            if length is not None and position >= start + length:
                break
        if not kept:
            raise RuntimeError("no audio frames decoded")
        frames = np.concatenate(kept).astype(np.float32)
        total = known_total or position
        if length is None and crop_seconds is not None:  # unknown duration: crop after decoding
            s, n = _crop_window(frames.shape[0], rate, crop_seconds)
            frames, total = frames[s: s + n], frames.shape[0]
        return frames, rate, channels, total


def _decode_until_error(container, stream, kept: list):
    """Decoded frames until the end or a corrupt packet; a file that breaks after some audio
    was decoded is reported by the caller as truncated rather than undecodable."""
    import av

    try:
        yield from container.decode(stream)
    except av.error.FFmpegError:
        if not kept:
            raise


def _short(error: Exception) -> str:
    text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the file", str(error)).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


# ---------------------------------------------------------------------------------------------
# Encoding


def audio_format(path: str) -> tuple[str, str]:
    """(libsndfile format, subtype) for an output path, by its extension."""
    extension = "." + str(path).rsplit(".", 1)[-1].lower() if "." in str(path).rsplit("/", 1)[-1] else ""
    if extension not in OUTPUT_FORMATS:
        raise ValueError(f"unsupported audio output {path!r}: the extension must be one of "
                         f"{', '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[extension]


def encode_audio(waveform: np.ndarray, sample_rate: int, extension: str) -> bytes:
    """Audio file bytes; the same samples always give the same bytes (Ogg included)."""
    fmt, subtype = audio_format(f"clip{extension}")
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(waveform, dtype=np.float32), sample_rate, format=fmt, subtype=subtype)
    data = buffer.getvalue()
    return fix_ogg_serial(data) if fmt == "OGG" else data


def write_audio(path: str, waveform: np.ndarray, sample_rate: int) -> None:
    """Write a mono waveform as WAV, FLAC or Ogg Vorbis, chosen by ``path``'s extension (local or s3://)."""
    fmt, _ = audio_format(path)
    extension = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg"}[fmt]
    storage.write_bytes(path, encode_audio(waveform, sample_rate, extension))


OGG_SERIAL = 0x6D726179  # "mray"


def fix_ogg_serial(data: bytes) -> bytes:
    """Give every Ogg page a fixed stream serial number and recompute its CRC.

    libsndfile picks the serial at random per file, the only thing that makes two encodings of
    the same samples differ; a fixed one makes the bytes reproducible.
    """
    out, position = bytearray(data), 0
    while position + 27 <= len(out):
        if out[position: position + 4] != b"OggS":
            raise ValueError("not an Ogg stream: page header expected")
        segments = out[position + 26]
        size = 27 + segments + sum(out[position + 27: position + 27 + segments])
        struct.pack_into("<I", out, position + 14, OGG_SERIAL)
        struct.pack_into("<I", out, position + 22, 0)  # the CRC is computed with its own field zeroed
        struct.pack_into("<I", out, position + 22, ogg_crc(bytes(out[position: position + size])))
        position += size
    return bytes(out)


_BIT_REVERSED = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def ogg_crc(page: bytes) -> int:
    """The Ogg page checksum: CRC-32 with polynomial 0x04C11DB7, MSB first, initial value 0, no final xor.

    zlib computes the bit-reflected CRC-32 of the same polynomial in C; fed the page with each
    byte's bits reversed, from a zero register (zlib inverts the start value and the result), its
    answer is the Ogg CRC with its 32 bits reversed. A Python byte loop took ~11 ms per 100 KB clip.
    """
    reflected = zlib.crc32(page.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)
