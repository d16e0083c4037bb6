"""Knowledge-distillation loss: a supervised term plus a term that pulls the student to a teacher.

Multi-label (AudioSet), as EfficientAT trains its students:
    loss = λ · BCE(z, y) + (1 − λ) · BCE(z, sigmoid(t / T))
Only the teacher is tempered; there is no T² factor (a sigmoid per class, not a softmax).

Single-label (Speech Commands): cross-entropy plus Hinton's softmax-temperature KL,
    loss = λ · CE(z, y) + (1 − λ) · T² · KL(softmax(t / T) ‖ softmax(z / T)),
where T² keeps the KD gradient's scale independent of T.

Mixup (`TeacherMix`): the teacher *probabilities* of a clip and its mixup partner are mixed with
the audio's coefficient. BCE and the KL's cross-entropy part are linear in the target, so this
has the same gradient as mixing the two clips' KD losses, while needing one loss evaluation and
giving a target that is a real distribution (so the logged KD value stays interpretable).

Clips without a teacher row are left out of the KD mean (`teacher_mask`), not counted as zeros:
the KD weight then does not shrink with the fraction of clips that lack a teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from student.errors import StudentError


@dataclass(frozen=True)
class TeacherMix:
    """The mixup partner of each clip in a batch, for mixing the KD target like the audio.

    lam: (B,) weight of the clip itself (1 for an unmixed clip); partner_logits: (B, C);
    partner_mask: (B,) bool, False where the partner has no teacher row (None: all present).
    """

    lam: torch.Tensor
    partner_logits: torch.Tensor
    partner_mask: torch.Tensor | None = None


def teacher_probabilities(teacher_logits: torch.Tensor, temperature: float, multi_label: bool) -> torch.Tensor:
    """The KD target of raw teacher logits: sigmoid(t/T) per class, or softmax(t/T) over classes."""
    tempered = teacher_logits.float() / temperature
    return torch.sigmoid(tempered) if multi_label else torch.softmax(tempered, dim=-1)


def kd_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    kd_lambda: float,
    temperature: float = 1.0,
    teacher_mask: torch.Tensor | None = None,
    multi_label: bool = True,
    mix: TeacherMix | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """λ · label loss + (1 − λ) · KD loss; returns (total, {"label", "kd", "teacher_coverage"}).

    student_logits: (B, C). labels: (B, C) targets in [0, 1] (mixup makes them soft); for
    single-label also (B,) class indices. teacher_logits: (B, C) raw logits, or None when
    kd_lambda == 1. teacher_mask: (B,) bool, False for clips without a teacher row.
    The per-term values are detached (for logging); the total carries the gradient.
    """
    if not 0.0 <= kd_lambda <= 1.0:
        raise StudentError(f"kd_lambda must lie in [0, 1], got {kd_lambda}")
    if temperature <= 0:
        raise StudentError(f"KD temperature must be positive, got {temperature}")
    if student_logits.ndim != 2:
        raise StudentError(f"student logits must be (batch, classes), got {tuple(student_logits.shape)}")
    logits = student_logits.float()
    label_term = _label_loss(logits, labels, multi_label)
    zero = logits.new_zeros(())
    if kd_lambda == 1.0 and teacher_logits is None:
        return label_term, {"label": label_term.detach(), "kd": zero, "teacher_coverage": zero}
    if teacher_logits is None:
        raise StudentError(f"kd_lambda = {kd_lambda} < 1 needs teacher logits")
    if teacher_logits.shape != logits.shape:
        raise StudentError(f"teacher logits {tuple(teacher_logits.shape)} do not match student logits {tuple(logits.shape)}")

    target = teacher_probabilities(teacher_logits, temperature, multi_label)
    present = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device) if teacher_mask is None else teacher_mask.bool()
    if mix is not None:
        lam = mix.lam.float().to(logits.device)
        partner = teacher_probabilities(mix.partner_logits, temperature, multi_label)
        target = lam[:, None] * target + (1.0 - lam[:, None]) * partner
        if mix.partner_mask is not None:
            # A mixed clip whose partner has no teacher row has no complete KD target.
            present = present & (mix.partner_mask.bool() | (lam == 1.0))

    per_clip = _kd_per_clip(logits, target, temperature, multi_label)
    count = present.sum()
    kd_term = torch.where(present, per_clip, torch.zeros_like(per_clip)).sum() / count.clamp(min=1)
    total = kd_lambda * label_term + (1.0 - kd_lambda) * kd_term
    coverage = count.float() / max(logits.shape[0], 1)
    return total, {"label": label_term.detach(), "kd": kd_term.detach(), "teacher_coverage": coverage.detach()}


def _label_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        if labels.shape != logits.shape:
            raise StudentError(f"multi-label targets {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    if labels.ndim == 1:
        return F.cross_entropy(logits, labels.long())
    if labels.shape != logits.shape:
        raise StudentError(f"single-label targets {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    return F.cross_entropy(logits, labels.float())


def _kd_per_clip(logits: torch.Tensor, target: torch.Tensor, temperature: float, multi_label: bool) -> torch.Tensor:
    """KD loss of each clip: mean BCE over classes, or T² · KL(target ‖ softmax(z/T))."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)
    log_student = torch.log_softmax(logits / temperature, dim=1)
    kl = torch.xlogy(target, target) - target * log_student
    return kl.sum(dim=1) * temperature**2
