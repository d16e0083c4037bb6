"""Packed audio: a split's clips as encoded bytes (FLAC by default) in a few id-keyed HDF5 shards.

`fat pack` writes a store (`writer.run_pack`); every stage reads it through `PackedAudio`
(`reader`), or through `pipeline.clip_audio`, which picks WAV files or a store by one setting.
The file layout is described in `format`.
"""

from pipeline.packed.format import CODECS, INDEX_NAME, CodecSettings
from pipeline.packed.reader import PackedAudio, read_index

__all__ = ["CODECS", "INDEX_NAME", "CodecSettings", "PackedAudio", "read_index"]
