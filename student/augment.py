"""Training-time augmentation of a whole batch on the training device: mixup within the batch.

AST's recipe, moved from the DataLoader item to the batch: a fraction `rate` of the clips is
mixed with a partner, λ ~ Beta(10, 10), on the waveform (each clip mean-centred, the partner
zero-padded or cut to the clip's length, the mix re-centred). The partner is drawn from the
same batch (a random permutation, as EfficientAT and PaSST do) instead of from disk, so a mixed
clip costs no second read. Labels and the teacher's KD target use the same partner and λ
(`MixPlan.mix_targets`, `MixPlan.teacher_mix`), which keeps the guarantee of `student.kd`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from student.errors import StudentError
from student.frontend import valid_mask
from student.kd import TeacherMix

MIXUP_BETA = 10.0  # AST draws λ from Beta(10, 10)


@dataclass(frozen=True)
class MixPlan:
    """Who is mixed with whom: partner (B,) row indices into the batch, lam (B,) weight of the clip itself."""

    partner: torch.Tensor
    lam: torch.Tensor

    @classmethod
    def none(cls, batch: int, device: torch.device | str = "cpu") -> MixPlan:
        return cls(torch.arange(batch, device=device), torch.ones(batch, device=device))

    @classmethod
    def draw(cls, batch: int, rate: float, generator: torch.Generator, device: torch.device | str = "cpu") -> MixPlan:
        """Each clip is mixed with probability `rate` with its partner in a random permutation of the batch.

        Random numbers come from `generator` (CPU), so a seed gives the same plan on every device.
        """
        if not 0.0 <= rate <= 1.0:
            raise StudentError(f"mixup rate must lie in [0, 1], got {rate}")
        permutation = torch.randperm(batch, generator=generator)
        mixed = torch.rand(batch, generator=generator) < rate
        lam = _beta(batch, generator)
        partner = torch.where(mixed, permutation, torch.arange(batch))
        lam = torch.where(mixed & (partner != torch.arange(batch)), lam, torch.ones(batch))
        return cls(partner.to(device), lam.to(device))

    def mix_waves(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S) zero-padded waveforms → mixed waveforms, each clip keeping its own length."""
        return self.mix_rows(waves, lengths, slice(0, waves.shape[0]))

    def mix_rows(self, waves: torch.Tensor, lengths: torch.Tensor, rows: slice) -> torch.Tensor:
        """`mix_waves` for the clips `rows` (a slice) of the batch only, (n, S): what `BatchFbank.fbank(mix=...)`
        asks for chunk by chunk.

        Partners may lie outside `rows`. Only the mixed clips are computed, in place on their own
        copies: on a CPU, a few clips at a time and no whole-batch temporary keep this cheap.
        """
        own = waves[rows]
        picked = (self.lam[rows] < 1).nonzero().flatten()
        if picked.numel() == 0:
            return own
        clips = picked + rows.indices(waves.shape[0])[0]
        partners = self.partner[clips]
        clip_lengths, partner_lengths = lengths[clips], lengths[partners]
        mixed = _centred(waves.index_select(0, clips), clip_lengths)
        other = _centred(waves.index_select(0, partners), partner_lengths)
        weight = self.lam[clips].to(waves.dtype)[:, None]
        mixed.mul_(weight).add_(other.mul_(1 - weight))
        mixed = _centred(_zero_tails(mixed, clip_lengths), clip_lengths)  # the partner cut to the clip's length
        out = own.clone()
        out[picked] = mixed
        return out

    def mix_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """(B, C) label targets mixed with the same partner and λ as the audio."""
        lam = self.lam.to(targets.dtype)[:, None]
        return lam * targets + (1 - lam) * targets[self.partner]

    def teacher_mix(self, teacher_logits: torch.Tensor, teacher_mask: torch.Tensor | None) -> TeacherMix:
        """The KD target's mix: the partner's teacher logits and row mask, with the audio's λ."""
        partner_mask = None if teacher_mask is None else teacher_mask[self.partner]
        return TeacherMix(lam=self.lam, partner_logits=teacher_logits[self.partner], partner_mask=partner_mask)


def _centred(waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row minus its mean over its own samples, zero past its length (in place: `waves` is a fresh copy).

    One reduction per clip, as the clip alone would be reduced: a row-wise sum of several rows
    splits between threads differently, and the fbank's quiet cells would then depend on which
    clips share a chunk.
    """
    means = [waves[row, :length].sum() / max(length, 1) for row, length in enumerate(lengths.tolist())]
    waves -= torch.stack(means)[:, None]
    return _zero_tails(waves, lengths)


def _zero_tails(waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero each row past its length, in place (a float mask: a boolean one costs several times more on a CPU)."""
    if bool((lengths < waves.shape[1]).any()):
        waves *= valid_mask(lengths, waves.shape[1]).to(waves.dtype)
    return waves


def _beta(count: int, generator: torch.Generator) -> torch.Tensor:
    """Beta(10, 10) draws whose randomness comes from `generator` (torch.distributions takes none)."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(MIXUP_BETA, MIXUP_BETA, size=count)).float()
