"""How the training clips fit --target-frames, counted from the batches themselves.

Every input is padded or cut to --target-frames (`student.frontend.fit_frames_batch`). A preset
made for 10-s AudioSet clips (1024 frames) silently pads 1-s clips to ten times their length,
and one made for short clips silently drops the end of longer ones. The lengths are in every
batch already (`collate_clips`: samples and rate), so the tally costs nothing and needs no pass
over the files before training; the run reports it once, after its first epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from student.features import SAMPLE_RATE
from student.frontend import frame_counts

FRAMES_PER_SECOND = 100  # 10 ms hop


@dataclass
class FrameTally:
    """Clips seen, clips longer than the target (cut), and the longest clip, in fbank frames."""

    target_frames: int
    clips: int = 0
    cut: int = 0
    longest: int = 0

    def update(self, lengths: torch.Tensor, rate: int) -> None:
        """A batch's clip lengths in samples at `rate` (resampled to 16 kHz as the front-end does)."""
        samples = torch.ceil(lengths.double() * SAMPLE_RATE / int(rate)).long() if int(rate) != SAMPLE_RATE else lengths
        frames = frame_counts(samples.long())
        self.clips += int(frames.numel())
        self.cut += int((frames > self.target_frames).sum())
        self.longest = max(self.longest, int(frames.max())) if frames.numel() else self.longest

    def merge(self, others: list[FrameTally]) -> FrameTally:
        """The tally of every rank (torchrun: each rank sees its own shard of the epoch)."""
        return FrameTally(self.target_frames, sum(o.clips for o in others), sum(o.cut for o in others),
                          max((o.longest for o in others), default=0))

    def message(self, epoch: int) -> str | None:
        """One line when clips were cut, or when every clip is padded to more than twice its length; else None."""
        if not self.clips:
            return None
        longest = f"the longest {self.longest} frames, {self.longest / FRAMES_PER_SECOND:.2f} s"
        if self.cut:
            return (f"{self.cut} of the {self.clips} training clips of epoch {epoch} are longer than --target-frames "
                    f"{self.target_frames} ({longest}): each is cut to its first {self.target_frames} frames")
        if 2 * self.longest < self.target_frames:
            return (f"every training clip of epoch {epoch} is padded to --target-frames {self.target_frames} "
                    f"({longest}): most of each input is padding; a smaller --target-frames trains faster")
        return None
