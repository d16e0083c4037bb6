"""Building blocks every stage uses and none owns: errors, atomic writes, ids, audio I/O, ffmpeg,
worker processes, the id index. They know nothing about a stage; stages import them, never the
other way round."""
