"""The KD loss against values computed by hand, and its behaviour under masks and mixup."""

from __future__ import annotations

import math

import pytest
import torch

from student.errors import StudentError
from student.kd import TeacherMix, kd_loss


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(z: float, p: float) -> float:
    """Binary cross-entropy of a logit z against a target probability p, written out."""
    return -(p * math.log(sigmoid(z)) + (1 - p) * math.log(1 - sigmoid(z)))


def minimise(loss_of) -> torch.Tensor:
    """Student logits, from zeros, that minimise loss_of(z) (L-BFGS: a few dozen evaluations)."""
    z = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([z], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = loss_of(z)
        loss.backward()
        return loss

    optimiser.step(closure)
    return z.detach().float()


Z = [[2.0, -1.0, 0.5], [-0.3, 1.5, -2.0]]
Y = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
T = [[3.0, -2.0, -0.5], [0.1, 0.0, -4.0]]


def by_hand_label() -> float:
    return sum(bce(Z[b][c], Y[b][c]) for b in range(2) for c in range(3)) / 6


def by_hand_kd(temperature: float, rows=(0, 1)) -> float:
    per_clip = [sum(bce(Z[b][c], sigmoid(T[b][c] / temperature)) for c in range(3)) / 3 for b in rows]
    return sum(per_clip) / len(per_clip)


def test_lambda_one_is_plain_bce_and_needs_no_teacher():
    total, terms = kd_loss(torch.tensor(Z), torch.tensor(Y), None, kd_lambda=1.0)
    assert total.item() == pytest.approx(by_hand_label(), rel=1e-6)
    assert terms["label"].item() == pytest.approx(by_hand_label(), rel=1e-6)
    with_teacher, _ = kd_loss(torch.tensor(Z), torch.tensor(Y), torch.tensor(T), kd_lambda=1.0, temperature=2.0)
    assert with_teacher.item() == pytest.approx(by_hand_label(), rel=1e-6)


@pytest.mark.parametrize("kd_lambda,temperature", [(0.0, 1.0), (0.1, 1.0), (0.5, 2.5)])
def test_weighted_sum_of_hand_computed_terms(kd_lambda, temperature):
    total, terms = kd_loss(torch.tensor(Z), torch.tensor(Y), torch.tensor(T), kd_lambda, temperature)
    assert terms["label"].item() == pytest.approx(by_hand_label(), rel=1e-6)
    assert terms["kd"].item() == pytest.approx(by_hand_kd(temperature), rel=1e-6)
    expected = kd_lambda * by_hand_label() + (1 - kd_lambda) * by_hand_kd(temperature)
    assert total.item() == pytest.approx(expected, rel=1e-6)


def test_lambda_zero_pulls_the_student_to_the_tempered_teacher():
    teacher = torch.tensor(T)
    z = minimise(lambda z: kd_loss(z, torch.tensor(Y), teacher, kd_lambda=0.0, temperature=2.0)[0])
    # Labels have no pull at λ = 0: the student's probabilities become the teacher's at T = 2.
    assert torch.allclose(torch.sigmoid(z), torch.sigmoid(teacher / 2.0), atol=1e-4)


def test_missing_teachers_leave_the_kd_mean_instead_of_counting_as_zero():
    mask = torch.tensor([True, False])
    total, terms = kd_loss(torch.tensor(Z), torch.tensor(Y), torch.tensor(T), 0.25, teacher_mask=mask)
    assert terms["kd"].item() == pytest.approx(by_hand_kd(1.0, rows=(0,)), rel=1e-6)
    assert terms["teacher_coverage"].item() == 0.5
    assert total.item() == pytest.approx(0.25 * by_hand_label() + 0.75 * by_hand_kd(1.0, rows=(0,)), rel=1e-6)
    _, none_present = kd_loss(torch.tensor(Z), torch.tensor(Y), torch.tensor(T), 0.25, teacher_mask=torch.tensor([False, False]))
    assert none_present["kd"].item() == 0.0


def test_mixup_mixes_teacher_probabilities_like_the_audio():
    z, y, t = torch.tensor(Z), torch.tensor(Y), torch.tensor(T)
    partner = t.flip(0) * 0.7 - 1.0
    lam = torch.tensor([0.6, 1.0])
    _, terms = kd_loss(z, y, t, 0.0, temperature=1.5, mix=TeacherMix(lam, partner))
    p_self, p_partner = torch.sigmoid(t / 1.5), torch.sigmoid(partner / 1.5)
    # BCE is linear in its target: mixing probabilities = mixing the two clips' KD losses.
    per_clip = [
        float(lam[b]) * sum(bce(Z[b][c], float(p_self[b, c])) for c in range(3)) / 3
        + (1 - float(lam[b])) * sum(bce(Z[b][c], float(p_partner[b, c])) for c in range(3)) / 3
        for b in range(2)
    ]
    assert terms["kd"].item() == pytest.approx(sum(per_clip) / 2, rel=1e-6)


def test_mixup_partner_without_teacher_masks_only_mixed_clips():
    z, y, t = torch.tensor(Z), torch.tensor(Y), torch.tensor(T)
    mix = TeacherMix(torch.tensor([0.7, 1.0]), t.flip(0), partner_mask=torch.tensor([False, False]))
    _, terms = kd_loss(z, y, t, 0.0, mix=mix)
    # Clip 0 is mixed with a partner that has no teacher: left out. Clip 1 is unmixed: kept.
    assert terms["teacher_coverage"].item() == 0.5
    assert terms["kd"].item() == pytest.approx(by_hand_kd(1.0, rows=(1,)), rel=1e-6)


def test_single_label_cross_entropy_and_temperature_kl_by_hand():
    z, t = torch.tensor(Z), torch.tensor(T)
    classes = torch.tensor([2, 1])
    temperature = 2.0
    total, terms = kd_loss(z, classes, t, 0.3, temperature, multi_label=False)

    def log_softmax(row, scale):
        m = max(v / scale for v in row)
        s = sum(math.exp(v / scale - m) for v in row)
        return [v / scale - m - math.log(s) for v in row]

    ce = -(log_softmax(Z[0], 1)[2] + log_softmax(Z[1], 1)[1]) / 2
    kl = 0.0
    for b in range(2):
        p = [math.exp(v) for v in log_softmax(T[b], temperature)]
        q = log_softmax(Z[b], temperature)
        kl += sum(pc * (math.log(pc) - qc) for pc, qc in zip(p, q)) * temperature**2
    kl /= 2
    assert terms["label"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["kd"].item() == pytest.approx(kl, rel=1e-5)
    assert total.item() == pytest.approx(0.3 * ce + 0.7 * kl, rel=1e-5)
    # One-hot float targets (what mixup produces) give the same label term as class indices.
    one_hot = torch.nn.functional.one_hot(classes, 3).float()
    _, soft = kd_loss(z, one_hot, t, 0.3, temperature, multi_label=False)
    assert soft["label"].item() == pytest.approx(ce, rel=1e-6)


def test_single_label_lambda_zero_reaches_the_teacher_distribution():
    teacher = torch.tensor(T)
    z = minimise(lambda z: kd_loss(z, torch.tensor([0, 0]), teacher, 0.0, temperature=1.0, multi_label=False)[0])
    assert torch.allclose(torch.softmax(z, 1), torch.softmax(teacher, 1), atol=1e-4)


def test_bad_settings_are_named():
    z, y, t = torch.tensor(Z), torch.tensor(Y), torch.tensor(T)
    with pytest.raises(StudentError, match="kd_lambda"):
        kd_loss(z, y, t, 1.5)
    with pytest.raises(StudentError, match="needs teacher logits"):
        kd_loss(z, y, None, 0.5)
    with pytest.raises(StudentError, match="temperature"):
        kd_loss(z, y, t, 0.5, temperature=0.0)
    with pytest.raises(StudentError, match="do not match"):
        kd_loss(z, y, t[:, :2], 0.5)
