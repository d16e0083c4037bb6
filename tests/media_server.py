"""A real loopback HTTP server and ffmpeg-made media for the download tests and benchmark.

Each clip id is registered with a behaviour (serve the file, 404, 429 then serve, cut the
connection mid-body, trickle bytes forever, ...); `fat download` is pointed at it with
`--url-template http://127.0.0.1:PORT/clip/{id}`. Files are served with HTTP range support,
as YouTube's media servers do, so ffmpeg can seek into them.
"""

from __future__ import annotations

import email.utils
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pipeline.core.ffmpeg import ffmpeg_binary

CONTENT_TYPES = {".webm": "audio/webm", ".m4a": "audio/mp4", ".mp4": "video/mp4", ".wav": "audio/wav",
                 ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".flac": "audio/flac", ".csv": "text/csv"}

# Behaviours a registered clip can have.
SERVE = "serve"              # the file, with range support
NOT_FOUND = "404"
FORBIDDEN = "403"
RATE_LIMIT_ONCE = "429-once"  # first request 429 with Retry-After, then SERVE
RATE_LIMIT_ALWAYS = "429"     # always 429 with Retry-After
TRUNCATED = "truncated"      # a valid HTTP transfer of only the first part of the file
CUT = "cut"                  # Content-Length of the whole file, connection closed halfway
HTML = "html"                # an HTML page instead of media
HTML_AS_MEDIA = "html-media"  # an HTML page labelled audio/webm (a portal or error page behind a media URL)
EMPTY = "empty"              # 200 with zero bytes of a media type
EXPIRES = "expires"          # the first request is served, every later one is 403 (a signed URL that expired)
STALL = "stall"              # the headers, then one byte now and then, forever
REFUSED = "refused"          # a redirect to a loopback port where nothing listens


@dataclass
class Clip:
    path: Path | None
    behaviour: str = SERVE
    retry_after: str = "1"
    keep_fraction: float = 0.4
    requests: int = 0
    gate: threading.Event | None = None  # when given, every answer waits until it is set (a test orders events)


@dataclass
class MediaServer:
    """ThreadingHTTPServer on 127.0.0.1 with per-clip behaviours; use as a context manager."""

    latency: float = 0.0
    clips: dict[str, Clip] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    log: list[tuple[str, str, float]] = field(default_factory=list)  # (path, Range header, time.monotonic())

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server_self = self

        class Handler(_Handler):
            server_state = server_self

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def clip_template(self) -> str:
        return f"{self.base_url}/clip/{{id}}"

    def add(self, ytid: str, path: Path | None, behaviour: str = SERVE, **options) -> None:
        self.clips[ytid] = Clip(path, behaviour, **options)

    def add_file(self, name: str, path: Path) -> None:
        """Serve `path` at /files/<name> (e.g. the official metadata CSVs)."""
        self.files[name] = path

    def requests_for(self, ytid: str) -> int:
        with self._lock:
            return sum(1 for path, *_ in self.log if path == f"/clip/{ytid}")

    def request_times(self, ytid: str) -> list[float]:
        with self._lock:
            return [when for path, _, when in self.log if path == f"/clip/{ytid}"]

    def __enter__(self) -> MediaServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """Clients that hang up early (ffmpeg seeking, killed workers) are normal here."""


class _Handler(BaseHTTPRequestHandler):
    server_state: MediaServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def do_GET(self) -> None:
        self._respond(head=False)

    def _respond(self, head: bool) -> None:
        state = self.server_state
        with state._lock:
            state.log.append((self.path, self.headers.get("Range", ""), time.monotonic()))
        if state.latency:
            time.sleep(state.latency)
        if self.path.startswith("/files/"):
            path = state.files.get(self.path[len("/files/"):])
            if path is None:
                return self._status(404, "Not Found")
            return self._serve(path.read_bytes(), CONTENT_TYPES.get(path.suffix, "application/octet-stream"), head)
        match = re.fullmatch(r"/clip/([A-Za-z0-9_-]+)", self.path)
        clip = state.clips.get(match.group(1)) if match else None
        if clip is None:
            return self._status(404, "Not Found")
        with state._lock:
            clip.requests += 1
            first = clip.requests == 1
        if clip.gate is not None:
            clip.gate.wait(60.0)
        behaviour = clip.behaviour
        if behaviour == RATE_LIMIT_ONCE:
            behaviour = RATE_LIMIT_ALWAYS if first else SERVE
        if behaviour == EXPIRES:
            behaviour = SERVE if first else FORBIDDEN
        if behaviour == REFUSED:
            return self._status(302, "Found", {"Location": f"http://127.0.0.1:{unused_port()}/gone"})
        if behaviour == NOT_FOUND:
            return self._status(404, "Not Found")
        if behaviour == FORBIDDEN:
            return self._status(403, "Forbidden")
        if behaviour == RATE_LIMIT_ALWAYS:
            return self._status(429, "Too Many Requests", {"Retry-After": clip.retry_after})
        if behaviour in (HTML, HTML_AS_MEDIA):
            page = b"<!DOCTYPE html><html><head><title>Not media</title></head><body><p>Nothing to see.</p></body></html>"
            content_type = "text/html; charset=utf-8" if behaviour == HTML else "audio/webm"
            return self._serve(page, content_type, head, ranges=False)
        if behaviour == EMPTY:
            return self._serve(b"", "audio/webm", head, ranges=False)
        assert clip.path is not None
        data = clip.path.read_bytes()
        content_type = CONTENT_TYPES.get(clip.path.suffix, "application/octet-stream")
        if behaviour == TRUNCATED:
            return self._serve(data[: int(len(data) * clip.keep_fraction)], content_type, head)
        if behaviour == CUT:
            return self._cut(data, content_type, head)
        if behaviour == STALL:
            return self._stall(data, content_type, head)
        return self._serve(data, content_type, head)

    def _status(self, code: int, reason: str, headers: dict[str, str] | None = None) -> None:
        body = f"{code} {reason}\n".encode()
        self.send_response(code, reason)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Date", email.utils.formatdate(usegmt=True))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _byte_range(self, size: int) -> tuple[int, int] | None:
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if not match or size == 0:
            return None
        first_text, last_text = match.groups()
        if first_text == "":
            first, last = max(0, size - int(last_text)), size - 1
        else:
            first = int(first_text)
            last = min(int(last_text), size - 1) if last_text else size - 1
        return (first, last) if first < size else (size, size - 1)

    def _serve(self, data: bytes, content_type: str, head: bool, ranges: bool = True) -> None:
        span = self._byte_range(len(data)) if ranges else None
        if span is not None and span[0] >= len(data):
            self.send_response(416, "Range Not Satisfiable")
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if span is not None:
            first, last = span
            self.send_response(206, "Partial Content")
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
            body = data[first:last + 1]
        else:
            self.send_response(200, "OK")
            body = data
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if not head:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def _cut(self, data: bytes, content_type: str, head: bool) -> None:
        """Promise the whole file, send half of it, then drop the connection."""
        self.send_response(200, "OK")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            try:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _stall(self, data: bytes, content_type: str, head: bool) -> None:
        """Send the headers and a little data, then one byte every 0.2 s (defeats socket timeouts)."""
        self.send_response(200, "OK")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if head:
            return
        try:
            self.wfile.write(data[:4096])
            self.wfile.flush()
            for offset in range(4096, len(data)):
                if self.server_state._stop.wait(0.2):
                    break
                self.wfile.write(data[offset:offset + 1])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def unused_port() -> int:
    """A loopback port with nothing listening (for 'connection refused')."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- media made with ffmpeg

MEDIA_KINDS = ("webm", "m4a", "mp4", "wav")
# Every audio container the demo corpus uses too; MP3 is the one whose first presented sample is not at
# its clock's 0 (LAME's 1105 samples of encoder delay put it at 25 ms).
AUDIO_CONTAINERS = ("webm", "m4a", "ogg", "mp3", "flac", "wav")


def make_media(path: Path, seconds: float, kind: str | None = None, sample_rate: int = 48000) -> Path:
    """Encode a stereo test signal (two tones + noise) of `seconds` into `path`.

    Kinds follow what YouTube serves: webm (Opus), m4a (AAC), mp4 (H.264 video + AAC), plus what
    other hosts and the demo corpus serve: ogg (Vorbis), mp3 (LAME), flac and wav.
    """
    kind = kind or path.suffix.lstrip(".")
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = (f"aevalsrc=0.3*sin(2*PI*440*t)+0.05*(random(0)-0.5)|0.3*sin(2*PI*660*t)+0.05*(random(1)-0.5)"
             f":s={sample_rate}:d={seconds}")
    command = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", audio]
    if kind == "mp4":
        command += ["-f", "lavfi", "-i", f"color=c=gray:s=64x64:r=10:d={seconds}",
                    "-map", "1:v", "-map", "0:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "64k", "-movflags", "+faststart"]
    elif kind == "m4a":
        command += ["-c:a", "aac", "-b:a", "64k", "-movflags", "+faststart"]
    elif kind == "webm":
        command += ["-c:a", "libopus", "-b:a", "48k"]
    elif kind == "ogg":
        command += ["-c:a", "libvorbis", "-q:a", "5"]
    elif kind == "mp3":
        command += ["-c:a", "libmp3lame", "-b:a", "160k"]
    elif kind == "flac":
        command += ["-c:a", "flac"]
    elif kind == "wav":
        command += ["-c:a", "pcm_s16le"]
    else:
        raise ValueError(f"unknown media kind {kind!r}")
    command.append(str(path.absolute()))
    subprocess.run(command, check=True, capture_output=True)
    return path


# --------------------------------------------------------------------------- official-layout metadata fixtures

RAW_HEADER = (
    "# Segments csv created Sun Mar  5 10:54:31 2017\n"
    "# num_ytids={n}, num_segs={n}, num_unique_labels={labels}, num_positive_labels={positives}\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
)


def write_raw_segments(path: Path, rows: list[tuple[str, float, float, list[str]]]) -> Path:
    """Write rows in the official AudioSet segment-CSV layout (comment header, `, ` separators)."""
    positives = sum(len(mids) for *_, mids in rows)
    labels = len({mid for *_, mids in rows for mid in mids})
    text = RAW_HEADER.format(n=len(rows), labels=labels, positives=positives)
    text += "".join(f'{ytid}, {start:.3f}, {end:.3f}, "{",".join(mids)}"\n' for ytid, start, end, mids in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_label_csv(path: Path, classes: list[tuple[str, str]]) -> Path:
    """Write `class_labels_indices.csv` in the official layout (names quoted)."""
    lines = ["index,mid,display_name"] + [f'{i},{mid},"{name}"' for i, (mid, name) in enumerate(classes)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
