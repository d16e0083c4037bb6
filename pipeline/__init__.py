"""The stages of faster-audio-transformers and everything about data: metadata, download,
validation, audio I/O, datasets, the teacher-logits store, training, evaluation and the `fat` CLI.

`pipeline` may import `teacher` and `student`; they never import `pipeline`.
"""

__version__ = "0.1.0"
