"""One exception type for problems the user can fix, so the CLI can print them plainly."""


class FatError(Exception):
    """A user-facing error: bad input, a missing file, an offline download.

    The CLI prints the message (which names the file, line or id) and exits non-zero
    without a traceback; anything else is a bug and keeps its traceback.
    """

    exit_code = 2
