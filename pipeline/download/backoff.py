"""One back-off for the whole run: a rate limit seen by any worker pauses every worker.

yt-dlp neither retries 429 nor reads Retry-After, and YouTube's bot check is a rate limit in
disguise, so the runner stops dispatching until the pause is over. Each new rate-limit event
(one that arrives while not already paused) doubles the pause; Retry-After is a floor. A
success resets the growth. After `max_retries` consecutive events, or when the server asks for
a longer wait than `max_backoff`, the run gives up: the remaining clips stay pending for a later run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GlobalBackoff:
    base: float = 5.0
    maximum: float = 600.0
    max_retries: int = 5
    resume_at: float = 0.0
    consecutive: int = 0
    gave_up_reason: str = ""

    def paused(self, now: float) -> bool:
        return now < self.resume_at

    def hit(self, now: float, retry_after: float | None) -> float:
        """Register a rate-limit event at `now`; return the pause in seconds from now."""
        if self.paused(now):
            # Several clips in flight hit the same limit: one event, but respect the longest request.
            if retry_after is not None:
                self.resume_at = max(self.resume_at, now + min(retry_after, self.maximum))
            return self.resume_at - now
        self.consecutive += 1
        if self.consecutive > self.max_retries:
            self.gave_up_reason = f"rate limited {self.consecutive} times in a row (--max-retries {self.max_retries})"
        if retry_after is not None and retry_after > self.maximum:
            self.gave_up_reason = f"the server asks to wait {retry_after:g} s (more than --max-backoff {self.maximum:g} s)"
        pause = min(self.base * 2 ** (self.consecutive - 1), self.maximum)
        if retry_after is not None:
            pause = max(pause, min(retry_after, self.maximum))
        self.resume_at = now + pause
        return pause

    def success(self) -> None:
        self.consecutive = 0

    @property
    def gave_up(self) -> bool:
        return bool(self.gave_up_reason)
