"""Errors of the teacher package. `teacher` cannot import `pipeline`, so the CLI turns these
into its own user-facing error; both are ValueErrors with a message that names the file."""


class TeacherError(ValueError):
    """A bad teacher setting or a checkpoint that does not fit (the message says which)."""


class CheckpointUnavailable(TeacherError):
    """A released checkpoint could not be fetched (offline, blocked, moved) or failed its sha256."""
