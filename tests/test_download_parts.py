"""The download's building blocks on their own: failure taxonomy, back-off, status store, shards, checks."""

from __future__ import annotations

import email.utils
import sqlite3
import time
from pathlib import Path

import pytest

from pipeline.core.errors import FatError
from pipeline.download.backoff import GlobalBackoff
from pipeline.download.environment import check_url_template, clip_url, is_youtube, youtube_warnings
from pipeline.download.failures import (
    FAILED, RATE_LIMITED, UNAVAILABLE, classify, find_http_error, http_status_in, parse_retry_after,
)
from pipeline.download.runner import Clip, select_shard
from pipeline.download.status import StatusRow, StatusStore

# Messages as yt-dlp prints them for YouTube (the texts users paste into issue trackers).
YOUTUBE_MESSAGES = [
    ("ERROR: [youtube] dQw4w9WgXcQ: Sign in to confirm you\u2019re not a bot. Use --cookies-from-browser or "
     "--cookies for the authentication.", RATE_LIMITED, "bot-check"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Private video. Sign in if you've been granted access to this video",
     UNAVAILABLE, "private"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Sign in to confirm your age. This video may be inappropriate for some users.",
     UNAVAILABLE, "age-restricted"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. The uploader has not made this video available in your "
     "country", UNAVAILABLE, "geo-blocked"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video is no longer available because the YouTube "
     "account associated with this video has been terminated.", UNAVAILABLE, "account-terminated"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video has been removed by the uploader",
     UNAVAILABLE, "removed"),
    ("ERROR: [youtube] dQw4w9WgXcQ: This video has been removed for violating YouTube's Terms of Service",
     UNAVAILABLE, "removed"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video is no longer available due to a copyright "
     "claim by Someone", UNAVAILABLE, "copyright"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Join this channel to get access to members-only content like this video, "
     "and other exclusive perks.", UNAVAILABLE, "members-only"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable", UNAVAILABLE, "unavailable"),
    ("ERROR: unable to download video data: HTTP Error 403: Forbidden", FAILED, "http-403"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Requested format is not available. Use --list-formats for a list of "
     "available formats", FAILED, "no-formats"),
    ("WARNING: Only images are available for download. use --list-formats to see them", FAILED, "no-formats"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Unable to download API page: HTTP Error 429: Too Many Requests",
     RATE_LIMITED, "http-429"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Unable to download webpage: <urlopen error [Errno -3] Temporary failure in "
     "name resolution>", FAILED, "network"),
    ("ERROR: The read operation timed out", FAILED, "timeout"),
    ("ERROR: ffmpeg exited with code 1", FAILED, "ffmpeg"),  # yt-dlp running ffmpeg itself (HLS, fix-ups)
    ("something nobody has seen before", FAILED, "error"),
]


@pytest.mark.parametrize(("message", "status", "reason"), YOUTUBE_MESSAGES)
def test_messages_are_classified(message: str, status: str, reason: str) -> None:
    assert classify(message, http_status_in(message)) == (status, reason)


def test_http_status_decides_unless_the_message_is_more_specific() -> None:
    assert classify("whatever", 429) == (RATE_LIMITED, "http-429")
    assert classify("whatever", 404) == (UNAVAILABLE, "http-404")
    assert classify("whatever", 410) == (UNAVAILABLE, "http-410")
    assert classify("whatever", 503) == (FAILED, "http-5xx")
    assert classify("whatever", 403) == (FAILED, "http-403")
    # YouTube answers the bot check with a 403 page: that is a rate limit, not a broken URL.
    assert classify("Sign in to confirm you're not a bot", 403) == (RATE_LIMITED, "bot-check")
    assert http_status_in("ERROR: unable to download video data: HTTP Error 404: Not Found") == 404
    assert http_status_in("no status here") is None


@pytest.mark.parametrize("message", [
    "Server returned 404 Not Found",                                  # ffmpeg's words for an HTTP status
    "Error opening input: Invalid data found when processing input",  # ffmpeg 9 on a zero-byte body
    "EBML header parsing failed | Invalid data found when processing input",  # ffmpeg 5.1, same body
    "Stream ends prematurely at 60267, should be 120535",
])
def test_ffmpeg_wording_is_not_classified(message: str) -> None:
    """ffmpeg words failures differently per version: clip.py classifies them from facts instead."""
    assert classify(message, http_status_in(message)) == (FAILED, "error")


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert parse_retry_after("120") == 120.0
    now = time.time()
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_http_error_and_retry_after_are_found_through_yt_dlp_wrappers() -> None:
    import io

    from yt_dlp.networking import Response
    from yt_dlp.networking.exceptions import HTTPError
    from yt_dlp.utils import DownloadError, ExtractorError

    response = Response(io.BytesIO(b""), "http://127.0.0.1/x", {"Retry-After": "7"}, status=429, reason="Too Many")
    extractor_error = ExtractorError("Unable to download webpage", cause=HTTPError(response))
    download_error = DownloadError("ERROR: Unable to download webpage", exc_info=(ExtractorError, extractor_error, None))
    assert find_http_error(download_error) == (429, "7")
    assert find_http_error(DownloadError("plain")) == (None, None)


def test_backoff_pauses_grows_honours_retry_after_and_gives_up() -> None:
    backoff = GlobalBackoff(base=1.0, maximum=60.0, max_retries=3)
    assert backoff.hit(now=0.0, retry_after=None) == 1.0 and backoff.paused(0.5) and not backoff.paused(1.0)
    assert backoff.hit(now=2.0, retry_after=None) == 2.0            # doubles
    assert backoff.hit(now=2.5, retry_after=None) == 1.5            # already paused: same event, no growth
    assert backoff.consecutive == 2
    assert backoff.hit(now=5.0, retry_after=10.0) == 10.0           # Retry-After is a floor
    assert not backoff.gave_up
    backoff.success()
    assert backoff.hit(now=20.0, retry_after=None) == 1.0           # a success resets the growth
    for now in (30.0, 40.0, 50.0):
        backoff.hit(now=now, retry_after=None)
    assert backoff.gave_up and "4 times in a row" in backoff.gave_up_reason
    impatient = GlobalBackoff(base=1.0, maximum=60.0, max_retries=9)
    impatient.hit(now=0.0, retry_after=3600.0)
    assert impatient.gave_up and "3600" in impatient.gave_up_reason


def test_status_store_keeps_one_current_row_per_clip_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "eval.download.sqlite"
    with StatusStore(path) as store:
        store.record(StatusRow("-abcdefghij", "failed", "timeout", "killed", 1, "t1", 0.0, 10.0))
        store.record(StatusRow("-abcdefghij", "ok", "section", "", 2, "t2", 0.0, 10.0, 10.0, 640044, 0, 1.5))
        store.set_setting("sample_rate", "32000")
    with StatusStore(path) as store:
        rows = store.rows()
        assert list(rows) == ["-abcdefghij"]
        assert (rows["-abcdefghij"].status, rows["-abcdefghij"].attempts, rows["-abcdefghij"].wav_bytes) == ("ok", 2, 640044)
        assert store.setting("sample_rate") == "32000"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_status_store_rolls_back_a_failed_batch(tmp_path: Path) -> None:
    with StatusStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(RuntimeError), store.transaction():
            store.record(StatusRow("abcdefghijk", "ok", "section", "", 1, "t", 0.0, 10.0))
            raise RuntimeError("crash in the middle")
        assert store.rows() == {}


def test_a_damaged_store_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "eval.download.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(FatError, match="not a usable status database"):
        StatusStore(path)


def test_shards_are_disjoint_complete_and_independent_of_order() -> None:
    clips = [Clip(f"id{index:09d}", 0.0, 10.0) for index in range(300)]
    shards = [select_shard(clips, (index, 3)) for index in range(3)]
    assert sum(len(shard) for shard in shards) == 300
    assert set().union(*({c.ytid for c in shard} for shard in shards)) == {c.ytid for c in clips}
    assert all(60 < len(shard) < 140 for shard in shards)
    assert {c.ytid for c in select_shard(clips[::-1], (1, 3))} == {c.ytid for c in shards[1]}


def test_url_templates() -> None:
    assert clip_url("https://www.youtube.com/watch?v={id}", "-abc_DEF123") == "https://www.youtube.com/watch?v=-abc_DEF123"
    assert clip_url("file:///media/{id}.webm", "x" * 11) == "file:///media/xxxxxxxxxxx.webm"
    check_url_template("file:///abs/dir/{id}.webm")
    check_url_template("http://127.0.0.1:8000/clip/{id}")
    for bad in ("https://example.com/{id}/{id}", "file:///dir/x.webm", "ftp://h/{id}", "file://host/{id}.webm"):
        with pytest.raises(FatError):
            check_url_template(bad)
    assert is_youtube("https://www.youtube.com/watch?v={id}") and is_youtube("https://youtu.be/{id}")
    assert not is_youtube("http://127.0.0.1:8000/clip/{id}") and not is_youtube("https://notyoutube.com.evil/{id}")


def test_youtube_needs_are_spelled_out() -> None:
    missing = youtube_warnings(runtimes=(), remote_components=(), cookies=None)
    assert any("deno" in text and "node" in text.lower() for text in missing)
    assert any("--cookies" in text for text in missing)
    ready = youtube_warnings(runtimes=("node",), remote_components=("ejs:github",), cookies="cookies.txt")
    assert ready == []


def test_the_cookie_advice_is_the_same_in_the_warning_and_the_readme() -> None:
    """Both once disagreed: the warning said a logged-out session is safest, the README a logged-in throw-away account."""
    warning = next(text for text in youtube_warnings(runtimes=("node",), remote_components=("ejs:github",),
                                                     cookies=None))
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8").split())
    section = readme[readme.index("**YouTube today.**"):readme.index("**Rate limits.**")]
    for text in (warning, section):
        assert "throw-away account" in text and "private browser window" in text, text
        assert "close" in text and "without logging out" in text, text
        assert "logged-out" not in text and "logged out" not in text, text
