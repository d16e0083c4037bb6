"""The packed audio store's on-disk contract: names, datasets, codec settings and identity.

A store is one folder, `data/packed/<split>/`, holding
- `index.json`: the store's identity and the list of its shards (a reader finds every shard
  here; files in the folder that it does not list are not part of the store), each with its
  seal (`pipeline.packed.seal`: file size, audio extent, sha256 of every byte outside it);
- `shard-<i>-of-<n>.h5`: the clips of one slice of the datafile, in datafile order:
  `ids` (N,) utf-8, `audio` one contiguous uint8 blob of every clip's encoded bytes back to back
  (exactly their size; stores written before seals have it in 1 MiB chunks, which read the same),
  `offsets` (N+1,) int64 into it, per clip `sample_rate` int32, `num_samples` int64,
  `channels` int16 and `crc32` uint32 of its bytes; attributes name the format, codec and
  settings, the source datafile's sha256, the shard's place, and `complete`.

Which clips a shard holds follows from the datafile order and the clips per shard alone, so a
rerun can keep every finished shard of the same identity and redo only the others.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import FatError
from pipeline.settings import check_values, option

FORMAT = "fat-packed/1"
INDEX_NAME = "index.json"
CODECS = ("flac", "vorbis")
LOSSLESS = frozenset({"flac"})
DEFAULT_FLAC_LEVEL = 8  # flac -8: ~3 % fewer bytes than libsndfile's default 5, decoding as fast
DEFAULT_VORBIS_QUALITY = 4.0  # oggenc -q 4 (libsndfile's own default)
OGG_SERIAL = 0x66617431  # "fat1": every Ogg stream gets this serial, so encoding is deterministic

SHARD_NAME = re.compile(r"shard-(\d{5})-of-(\d{5})\.h5")
PER_CLIP = ("sample_rate", "num_samples", "channels", "crc32")


def shard_name(index: int, count: int) -> str:
    """File name of shard `index` (0-based) of `count`."""
    return f"shard-{index:05d}-of-{count:05d}.h5"


@dataclass(frozen=True, kw_only=True)
class CodecSettings:
    """What decides a clip's encoded bytes: the codec and its one quality knob (`fat pack` options).

    libsndfile takes both knobs as one number in [0, 1] (`compression_level`).
    """

    codec: str = option("flac", "flac: lossless, the source's samples exactly; vorbis: about 0.3 of FLAC's bytes, "
                                "not bit-exact", choices=CODECS, group="codec")
    flac_level: int = option(DEFAULT_FLAC_LEVEL, "FLAC compression level (flac -0 … -8)", choices=tuple(range(9)),
                             group="codec")
    vorbis_quality: float = option(DEFAULT_VORBIS_QUALITY, "Vorbis quality on oggenc's -q scale, -1 … 10",
                                   minimum=-1.0, group="codec")

    def check(self) -> CodecSettings:
        check_values(self)
        if self.vorbis_quality > 10.0:
            raise FatError(f"--vorbis-quality must be ≤ 10, got {self.vorbis_quality}")
        return self

    @property
    def lossless(self) -> bool:
        return self.codec in LOSSLESS

    @property
    def compression_level(self) -> float:
        """libsndfile's SFC_SET_COMPRESSION_LEVEL value: FLAC level / 8; Vorbis 1 − quality / 10."""
        return self.flac_level / 8.0 if self.codec == "flac" else 1.0 - self.vorbis_quality / 10.0

    def as_dict(self) -> dict[str, Any]:
        """Only the knob of the chosen codec: the other one does not change a byte."""
        return {"codec": "flac", "level": self.flac_level} if self.codec == "flac" else \
            {"codec": "vorbis", "quality": self.vorbis_quality}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecSettings:
        codec = str(data.get("codec", ""))
        if codec == "flac":
            return cls(codec="flac", flac_level=int(data.get("level", DEFAULT_FLAC_LEVEL)))
        return cls(codec=codec, vorbis_quality=float(data.get("quality", DEFAULT_VORBIS_QUALITY)))


def identity(datafile_sha256: str, codec: CodecSettings, shard_clips: int, clips: int) -> dict[str, Any]:
    """Everything that decides which clips go where and how they are encoded."""
    return {"format": FORMAT, "datafile_sha256": datafile_sha256, "codec": codec.as_dict(),
            "shard_clips": int(shard_clips), "clips": int(clips)}


def identity_sha256(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode("utf-8")).hexdigest()


def shard_count(clips: int, shard_clips: int) -> int:
    """Shards needed for `clips` clips; an empty datafile still gets one (empty) shard."""
    return max(1, -(-clips // shard_clips))
