"""`fat download`: AudioSet clips via yt-dlp + ffmpeg into verified mono WAV files.

Modules, one job each:
- `failures`: status and reason of a failure from yt-dlp/ffmpeg messages and HTTP statuses;
- `status`: the SQLite (WAL) store with one current row per clip;
- `backoff`: the global rate-limit back-off (Retry-After, exponential growth, give-up);
- `clip`: the work for one clip (resolve, cut, convert, verify), run inside a worker;
- `pool`: worker processes that are killed, with their ffmpeg, when a clip overruns;
- `environment`: URL templates and the checks for what YouTube needs;
- `runner`: plan, drive, record, summarise, stop cleanly on signals.
"""
