"""Packed audio: a split's clips as encoded bytes (FLAC by default) in a few id-keyed HDF5 shards.

`fat pack` writes a store (`writer.run_pack`, options in `settings`); every stage reads it through
`reader.PackedAudio`, or through `pipeline.clip_audio`, which picks audio files or a store by one
setting. The file layout is described in `format`. Nothing is imported here, so that `fat --help`
(which builds every command's options) loads neither h5py nor soundfile.
"""
