"""Why a clip failed: map yt-dlp's messages and HTTP statuses to a status and a reason.

Only yt-dlp's words (mostly YouTube's own: "Private video", "Video unavailable") are matched
here; ffmpeg's failures are classified by `clip` from facts (exit status, samples written,
bytes fetched), because ffmpeg words the same failure differently from one version to the next.

Statuses decide what a rerun does: `unavailable` is permanent (skipped unless
`--retry-unavailable`), `failed` and `rate-limited` are retried. Reasons are short stable
keys that users count and filter on; the raw message is kept beside them.
"""

from __future__ import annotations

import email.utils
import re
import time

OK = "ok"
UNAVAILABLE = "unavailable"
FAILED = "failed"
RATE_LIMITED = "rate-limited"
STATUSES: tuple[str, ...] = (OK, UNAVAILABLE, FAILED, RATE_LIMITED)

# (status, reason, patterns matched against the lower-cased message), first match wins.
# Order matters: the bot check mentions "sign in", as does the age gate; 429 beats "unable to download".
_MESSAGE_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (RATE_LIMITED, "bot-check", ("not a bot",)),
    (RATE_LIMITED, "http-429", ("http error 429", "too many requests")),
    (UNAVAILABLE, "private", ("private video", "video is private", "this video has been made private")),
    (UNAVAILABLE, "age-restricted", ("confirm your age", "age-restricted", "age restricted", "inappropriate for some users")),
    (UNAVAILABLE, "geo-blocked", ("not made this video available in your country", "blocked it in your country",
                                   "not available in your country", "geo restrict", "geo-restrict")),
    (UNAVAILABLE, "account-terminated", ("account associated with this video has been terminated",)),
    (UNAVAILABLE, "copyright", ("copyright claim", "due to a copyright")),
    (UNAVAILABLE, "removed", ("removed for violating", "removed by the uploader", "video has been removed")),
    (UNAVAILABLE, "members-only", ("members-only", "join this channel")),
    (UNAVAILABLE, "http-404", ("http error 404",)),
    (UNAVAILABLE, "http-410", ("http error 410",)),
    (UNAVAILABLE, "unavailable", ("video unavailable", "this video is not available", "this video is unavailable")),
    (UNAVAILABLE, "no-media", ("unsupported url",)),
    (UNAVAILABLE, "missing-file", ("no such file or directory",)),
    (FAILED, "empty", ("did not get any data blocks", "downloaded file is empty", "zero bytes")),
    (FAILED, "http-403", ("http error 403",)),
    (FAILED, "no-formats", ("only images are available", "requested format is not available", "no video formats found")),
    (FAILED, "js-challenge", ("signature", "nsig", "n challenge", "javascript runtime", "js runtime")),
    (FAILED, "timeout", ("timed out", "timeout")),
    (FAILED, "network", ("connection refused", "connection reset", "broken pipe", "name or service not known",
                         "temporary failure in name resolution", "network is unreachable", "no route to host",
                         "remote end closed connection", "incompleteread", "connection aborted",
                         "unable to download", "transporterror", "urlopen error", "ssl")),
    (FAILED, "ffmpeg", ("ffmpeg",)),  # yt-dlp's own use of it: "ffmpeg exited with code 1"
)


def classify(message: str, http_status: int | None = None) -> tuple[str, str]:
    """(status, reason) for a failure, from its HTTP status when known, else its message."""
    if http_status is not None:
        by_status = _classify_http_status(http_status)
        if by_status is not None:
            # The message can still be more specific (a 403 page that is really the bot check).
            by_message = _classify_message(message)
            if by_message is not None and by_message[0] != FAILED:
                return by_message
            return by_status
    return _classify_message(message) or (FAILED, "error")


def _classify_http_status(code: int) -> tuple[str, str] | None:
    if code == 429:
        return RATE_LIMITED, "http-429"
    if code in (404, 410):
        return UNAVAILABLE, f"http-{code}"
    if code == 403:
        return FAILED, "http-403"  # YouTube's signed URLs expire: worth another try
    if 500 <= code < 600:
        return FAILED, "http-5xx"
    if 400 <= code < 500:
        return FAILED, f"http-{code}"
    return None


def _classify_message(message: str) -> tuple[str, str] | None:
    text = message.lower()
    for status, reason, patterns in _MESSAGE_RULES:
        if any(pattern in text for pattern in patterns):
            return status, reason
    return None


def http_status_in(message: str) -> int | None:
    """An HTTP status named in a yt-dlp message ("HTTP Error 404: Not Found"), when its exception had none."""
    match = re.search(r"HTTP Error (\d{3})", message, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def find_http_error(exc: BaseException) -> tuple[int | None, str | None]:
    """(status, Retry-After header) of the HTTP error behind a yt-dlp exception, when there is one.

    yt-dlp wraps its networking `HTTPError` in `ExtractorError.cause` / `DownloadError.exc_info`;
    the response (and so Retry-After) is only reachable through that chain.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        status = getattr(current, "status", None)
        response = getattr(current, "response", None)
        if isinstance(status, int) and response is not None:
            headers = getattr(response, "headers", None) or {}
            return status, headers.get("Retry-After") if hasattr(headers, "get") else None
        info = getattr(current, "exc_info", None)
        if isinstance(info, tuple) and len(info) > 1 and isinstance(info[1], BaseException):
            stack.append(info[1])
        for attr in ("cause", "__cause__", "__context__"):
            nested = getattr(current, attr, None)
            if isinstance(nested, BaseException):
                stack.append(nested)
    return None, None
