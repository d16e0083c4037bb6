"""One clip in and out of its packed form: read the source, encode, decode back, check.

Lossless (FLAC) keeps the source's integer samples and channels as they are, so decoding a
packed clip and mixing it to mono is the very computation `pipeline.core.audio.read_audio` does on
the source file: the two give the same float32 samples, bit for bit. Lossy (Vorbis) encodes
the mono float32 signal a stage would read, at the source's rate.

libsndfile gives every Ogg stream a random serial number; it is replaced by a constant (and
each page's checksum recomputed), so packing the same clip twice gives the same bytes.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from pipeline.core.audio import read_audio
from pipeline.core.errors import FatError
from pipeline.packed.format import OGG_SERIAL, CodecSettings

# Source sample formats FLAC stores exactly: subtype → (integer type soundfile reads, FLAC subtype, full scale).
FLAC_EXACT = {
    "PCM_16": ("int16", "PCM_16", 32768.0),
    "PCM_S8": ("int16", "PCM_S8", 32768.0),
    "PCM_U8": ("int16", "PCM_S8", 32768.0),
    "PCM_24": ("int32", "PCM_24", 2147483648.0),
}
FLAC_MAX_CHANNELS = 8
VORBIS_LENGTH_SLACK = 2048  # one long Vorbis block: the most a decoded length may differ by


class CodecError(Exception):
    """Bytes that do not decode, or an encoder that refused; callers add the shard and clip."""


@dataclass(frozen=True)
class EncodedClip:
    """One clip as it goes into a shard."""

    clip_id: str
    data: bytes
    sample_rate: int
    num_samples: int
    channels: int
    crc32: int
    source_bytes: int


def encode_batch(tasks: list[tuple[str, str]], codec: CodecSettings) -> list[EncodedClip]:
    """Run in a worker: every (id, path) of a batch encoded and checked, in order."""
    return [encode_clip(clip_id, path, codec) for clip_id, path in tasks]


def encode_clip(clip_id: str, path: str, codec: CodecSettings) -> EncodedClip:
    """Encode one source file and decode the result back; a FatError names the clip if it differs."""
    try:
        source_bytes = os.stat(path).st_size
    except OSError as exc:
        raise FatError(f"clip {clip_id}: {path}: cannot read the source ({exc.strerror})") from None
    try:
        reference, rate = read_audio(path)  # what a stage reads from the source: the check's yardstick
    except FatError as exc:
        raise FatError(f"clip {clip_id}: {exc}") from None
    if codec.lossless:
        samples, scale, subtype = _read_integer_pcm(clip_id, path)
        data = _encode(clip_id, samples, rate, "FLAC", subtype, codec)
        _check_lossless(clip_id, path, data, samples.astype(np.float32) / np.float32(scale), reference, rate)
        channels = samples.shape[1]
    else:
        data = normalise_ogg_serial(_encode(clip_id, reference, rate, "OGG", "VORBIS", codec))
        _check_lossy(clip_id, path, data, reference.shape[0], rate)
        channels = 1
    return EncodedClip(clip_id, data, rate, int(reference.shape[0]), channels, zlib.crc32(data), source_bytes)


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Encoded bytes → float32 (frames, channels) and the sample rate; CodecError if they do not decode."""
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise CodecError(str(exc).strip() or type(exc).__name__) from None
    return audio, int(rate)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(frames, channels) → (frames,) float32, exactly as `pipeline.core.audio.read_audio` mixes channels."""
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    return np.ascontiguousarray(mono, dtype=np.float32)


def _read_integer_pcm(clip_id: str, path: str) -> tuple[np.ndarray, float, str]:
    """The source's integer samples (frames, channels), their full scale and the FLAC subtype that holds them."""
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise FatError(f"clip {clip_id}: {path}: soundfile cannot open it ({exc}), so FLAC cannot hold it exactly; "
                       "pack with --codec vorbis or convert the file to 16-bit PCM") from None
    plan = FLAC_EXACT.get(info.subtype)
    if plan is None:
        raise FatError(f"clip {clip_id}: {path}: {info.format}/{info.subtype} samples are not 8-, 16- or 24-bit "
                       "integer PCM, so FLAC cannot hold them exactly; pack with --codec vorbis or convert the file")
    if info.channels > FLAC_MAX_CHANNELS:
        raise FatError(f"clip {clip_id}: {path}: {info.channels} channels; FLAC holds at most {FLAC_MAX_CHANNELS}")
    dtype, subtype, scale = plan
    samples, _ = sf.read(path, dtype=dtype, always_2d=True)
    return samples, scale, subtype


def _encode(clip_id: str, samples: np.ndarray, rate: int, container: str, subtype: str, codec: CodecSettings) -> bytes:
    buffer = io.BytesIO()
    try:
        sf.write(buffer, samples, rate, format=container, subtype=subtype, compression_level=codec.compression_level)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise FatError(f"clip {clip_id}: the {codec.codec} encoder refused {samples.shape[0]} frames at {rate} Hz "
                       f"({exc})") from None
    return buffer.getvalue()


def _check_lossless(clip_id: str, path: str, data: bytes, exact: np.ndarray, reference: np.ndarray, rate: int) -> None:
    """Decoded FLAC must equal the source channel by channel and, mixed to mono, what read_audio returns."""
    try:
        decoded, decoded_rate = decode(data)
    except CodecError as exc:
        raise FatError(f"clip {clip_id}: {path}: the FLAC just written does not decode ({exc})") from None
    if decoded_rate != rate or decoded.shape != exact.shape or not np.array_equal(decoded, exact) \
            or not np.array_equal(to_mono(decoded), reference):
        raise FatError(f"clip {clip_id}: {path}: the FLAC does not decode to the source's samples "
                       f"({decoded.shape} at {decoded_rate} Hz vs {exact.shape} at {rate} Hz); not packed")


def _check_lossy(clip_id: str, path: str, data: bytes, frames: int, rate: int) -> None:
    """Decoded Vorbis must have the rate, one channel, the length within one block and finite samples."""
    try:
        decoded, decoded_rate = decode(data)
    except CodecError as exc:
        raise FatError(f"clip {clip_id}: {path}: the Vorbis stream just written does not decode ({exc})") from None
    if decoded_rate != rate or decoded.shape[1] != 1 or abs(decoded.shape[0] - frames) > VORBIS_LENGTH_SLACK:
        raise FatError(f"clip {clip_id}: {path}: Vorbis decodes to {decoded.shape[0]} frames × {decoded.shape[1]} at "
                       f"{decoded_rate} Hz, the source has {frames} × 1 at {rate} Hz; not packed")
    if not np.isfinite(decoded).all():
        raise FatError(f"clip {clip_id}: {path}: Vorbis decodes to NaN or infinite samples; not packed")


# -- deterministic Ogg ---------------------------------------------------------------------

_REVERSED_BITS = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _ogg_crc(page: bytes) -> int:
    """Ogg's page checksum (CRC-32, polynomial 0x04C11DB7, not reflected, initial 0, no final xor).

    zlib's CRC-32 is the reflected form of the same polynomial: feed it bit-reversed bytes with
    the register starting at 0 and reverse the result's bits.
    """
    register = ~zlib.crc32(page.translate(_REVERSED_BITS), 0xFFFFFFFF) & 0xFFFFFFFF
    return int(f"{register:032b}"[::-1], 2)


def normalise_ogg_serial(data: bytes, serial: int = OGG_SERIAL) -> bytes:
    """The same Ogg stream with every page's serial number set to `serial` and its checksum recomputed."""
    out = bytearray(data)
    offset = 0
    while offset < len(out):
        if out[offset:offset + 4] != b"OggS" or offset + 27 > len(out):
            raise CodecError(f"not an Ogg page at byte {offset}")
        segments = out[offset + 26]
        header = 27 + segments
        length = header + sum(out[offset + 27:offset + header])
        if offset + length > len(out):
            raise CodecError(f"the Ogg page at byte {offset} runs past the end")
        out[offset + 14:offset + 18] = serial.to_bytes(4, "little")
        out[offset + 22:offset + 26] = b"\0\0\0\0"
        out[offset + 22:offset + 26] = _ogg_crc(bytes(out[offset:offset + length])).to_bytes(4, "little")
        offset += length
    return bytes(out)
