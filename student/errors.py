"""The student's one exception type, so callers can tell bad settings from bugs.

`student` never imports `pipeline`; the CLI turns a StudentError into a FatError.
"""


class StudentError(ValueError):
    """A user-fixable problem: unknown model size, wrong input shape, a checkpoint that does not fit."""
