"""The batched AST front-end equals torchaudio's Kaldi fbank applied clip by clip, on any device."""

from __future__ import annotations

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from student.errors import StudentError
from student.features import normalize, wave_to_fbank
from student.frontend import BatchFbank, bank_blocks, kaldi_mel_banks

MEAN, STD = -4.2677393, 4.5689974

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _batch(rate: int, seconds: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of different lengths (tone + noise + DC offset), zero-padded to the longest."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [int(rate * s) for s in seconds]
    waves = torch.zeros(len(lengths), max(lengths))
    for row, length in enumerate(lengths):
        t = torch.arange(length) / rate
        waves[row, :length] = (0.3 * torch.sin(2 * torch.pi * (300 + 200 * row) * t)
                               + 0.1 * torch.randn(length, generator=generator) + 0.05)
    return waves, torch.tensor(lengths)


def test_mel_banks_are_kaldis() -> None:
    reference, _ = kaldi.get_mel_banks(128, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
    ours = kaldi_mel_banks(128)
    assert ours.shape == (128, 257) and torch.all(ours[:, -1] == 0)
    torch.testing.assert_close(ours[:, :256], reference, atol=1e-4, rtol=0)
    covered = torch.zeros_like(ours, dtype=torch.bool)  # the blocks the fbank multiplies by reach every weight
    for first, end, low, high in bank_blocks(ours):
        covered[first:end, low:high] = True
    assert torch.all(covered[ours != 0]) and covered.float().mean() < 0.2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rate", [16000, 32000, 44100])
def test_a_batch_of_different_lengths_equals_the_per_clip_path(device: str, rate: int) -> None:
    """Within 1e-4 of AST's per-clip features; padding never leaks into a shorter clip's frames; clips of one
    length (resampled in one call on a GPU) too."""
    waves, lengths = _batch(rate, [10.0, 3.3, 1.0, 0.2, 3.3])
    frontend = BatchFbank(1024, 128, MEAN, STD).to(device)
    batch = frontend(waves.to(device), lengths.to(device), rate).cpu()
    assert batch.shape == (5, 1024, 128)
    for row, length in enumerate(lengths.tolist()):
        reference = normalize(wave_to_fbank(waves[row, :length], rate, 1024), MEAN, STD)
        assert (batch[row] - reference).abs().max().item() <= 1e-4, f"clip {row} ({length} samples at {rate} Hz)"


def test_a_clip_alone_and_in_a_batch_get_the_same_features() -> None:
    waves, lengths = _batch(32000, [2.0, 0.5])
    frontend = BatchFbank(200, 128, MEAN, STD)
    together = frontend(waves, lengths, 32000)
    alone = frontend(waves[1:, : lengths[1]], lengths[1:], 32000)
    torch.testing.assert_close(together[1], alone[0], atol=1e-4, rtol=0)


def test_the_target_frames_cut_and_pad_like_ast() -> None:
    waves, lengths = _batch(16000, [10.0])
    fitted = BatchFbank(128, 128, MEAN, STD)(waves, lengths, 16000)
    assert fitted.shape == (1, 128, 128)
    padded = BatchFbank(1024, 128, MEAN, STD)(waves, lengths, 16000)
    assert torch.allclose(padded[0, 998:], torch.full((26, 128), (0 - MEAN) / (2 * STD)))  # AST's 998 + 26


@pytest.mark.parametrize(("lengths", "match"), [
    ([100], "shorter than one"),
    ([0], "shorter than one"),
    ([-1], "lengths must lie"),
    ([5000], "lengths must lie"),
])
def test_bad_batches_are_refused_with_the_lengths_named(lengths: list[int], match: str) -> None:
    with pytest.raises(StudentError, match=match):
        BatchFbank(100)(torch.zeros(1, 4000), torch.tensor(lengths), 16000)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_samples_are_refused(bad: float) -> None:
    waves = torch.zeros(2, 16000)
    waves[1, 5] = bad
    with pytest.raises(StudentError, match="NaN"):
        BatchFbank(100)(waves, torch.tensor([16000, 16000]), 16000)


def test_mixup_in_the_batch_mixes_audio_labels_and_teacher_targets_alike() -> None:
    from student.augment import MixPlan
    from student.kd import kd_loss

    waves, lengths = _batch(32000, [2.0, 1.0, 1.5, 2.0], seed=3)
    plan = MixPlan.draw(4, 1.0, torch.Generator().manual_seed(0))
    assert sorted(plan.partner.tolist()) == [0, 1, 2, 3]
    mixed_rows = (plan.lam < 1).nonzero().flatten().tolist()
    assert mixed_rows and all(0.0 < plan.lam[row] < 1.0 for row in mixed_rows)
    mixed = plan.mix_waves(waves, lengths)
    for row in range(4):
        length = int(lengths[row])
        assert torch.all(mixed[row, length:] == 0), "a mixed clip keeps its own length"
        if row in mixed_rows:
            partner, lam = int(plan.partner[row]), float(plan.lam[row])
            own = waves[row, :length] - waves[row, :length].mean()
            other = torch.zeros(length)
            take = min(length, int(lengths[partner]))
            other[:take] = (waves[partner, : int(lengths[partner])] - waves[partner, : int(lengths[partner])].mean())[:take]
            expected = lam * own + (1 - lam) * other
            torch.testing.assert_close(mixed[row, :length], expected - expected.mean(), atol=1e-5, rtol=0)
    labels = torch.eye(4)
    targets = plan.mix_targets(labels)
    teacher = torch.randn(4, 4)
    loss_batch, _ = kd_loss(torch.zeros(4, 4), targets, teacher, 0.0, mix=plan.teacher_mix(teacher, None))
    mixed_probability = plan.lam[:, None] * torch.sigmoid(teacher) + (1 - plan.lam[:, None]) * torch.sigmoid(teacher[plan.partner])
    loss_direct, _ = kd_loss(torch.zeros(4, 4), targets, torch.logit(mixed_probability), 0.0)
    torch.testing.assert_close(loss_batch, loss_direct, atol=1e-5, rtol=0)
    for row in range(4):
        partner, lam = int(plan.partner[row]), float(plan.lam[row])
        torch.testing.assert_close(targets[row], lam * labels[row] + (1 - lam) * labels[partner])


def test_mixup_plans_follow_the_seed_and_rate() -> None:
    from student.augment import MixPlan

    first = MixPlan.draw(64, 0.5, torch.Generator().manual_seed(7))
    again = MixPlan.draw(64, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(first.partner, again.partner) and torch.equal(first.lam, again.lam)
    assert 16 <= int((first.lam < 1).sum()) <= 48
    assert torch.all(MixPlan.draw(8, 0.0, torch.Generator().manual_seed(7)).lam == 1)


@pytest.mark.parametrize("rate", [16000, 32000])
def test_pure_tones_match_even_near_the_log_floor(rate: int) -> None:
    """A pure tone leaves most mel bins near log(eps), where the fbank magnifies 1e-9 of rounding
    to 1e-3: each clip's mean and resampling are reduced over its own samples, as the per-clip path does."""
    lengths = [rate * 2, rate, rate // 2]
    waves = torch.zeros(3, max(lengths))
    for row, length in enumerate(lengths):
        t = torch.arange(length) / rate
        waves[row, :length] = 0.3 * torch.sin(2 * torch.pi * (440 + 100 * row) * t) + 0.01
    batch = BatchFbank(300, 128, MEAN, STD)(waves, torch.tensor(lengths), rate)
    for row, length in enumerate(lengths):
        reference = normalize(wave_to_fbank(waves[row, :length], rate, 300), MEAN, STD)
        assert (batch[row] - reference).abs().max().item() <= 1e-4, f"clip {row} at {rate} Hz"


def _sensitive_batch(rate: int, seconds: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A chirp, a tone with noise and DC, a pure tone with DC, in turn: signals whose quiet log-mel cells
    move by 1e-4 and more when a clip's mean is off by 1e-9."""
    generator = torch.Generator().manual_seed(5)
    lengths = [int(rate * s) for s in seconds]
    waves = torch.zeros(len(lengths), max(lengths))
    for row, length in enumerate(lengths):
        t = torch.arange(length) / rate
        waves[row, :length] = [
            0.4 * torch.sin(2 * torch.pi * (100 + 2000 * t) * t),
            0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.1 * torch.randn(length, generator=generator) + 0.05,
            0.3 * torch.sin(2 * torch.pi * 1234.5 * t) + 0.01,
        ][row % 3]
    return waves, torch.tensor(lengths)


@pytest.fixture
def two_threads():
    """Several intra-op threads, as on any multi-core machine: a 1-D reduction is then split between them."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("rate", [16000, 32000, 22050])
def test_clips_of_one_length_equal_the_per_clip_path_with_several_threads(two_threads: None, rate: int) -> None:
    """The usual batch (clips of one length) with more than one thread: each clip's mean is reduced and each
    clip resampled as the clip alone is (a row-wise mean(1) of the batch, or one resampling call for clips of
    one length, is ~1e-9 off and moves quiet cells by ~1e-3)."""
    waves, lengths = _sensitive_batch(rate, [4.0, 4.0, 4.0, 0.5, 0.5, 0.5])
    batch = BatchFbank(400, 128, MEAN, STD)(waves, lengths, rate)
    for row, length in enumerate(lengths.tolist()):
        reference = normalize(wave_to_fbank(waves[row, :length], rate, 400), MEAN, STD)
        assert (batch[row] - reference).abs().max().item() <= 1e-4, f"clip {row} ({length} samples at {rate} Hz)"


@pytest.mark.parametrize("rate", [16000, 44100])
def test_cpu_chunks_give_the_features_of_the_whole_batch(monkeypatch: pytest.MonkeyPatch, rate: int) -> None:
    """On the CPU the batch is worked through a few clips at a time (cache-sized); a chunk per clip and the
    whole batch at once (what a GPU does) give the same features, also where a chunk mixes lengths."""
    import student.frontend

    waves, lengths = _batch(rate, [2.0, 2.0, 0.7, 2.0, 1.3])
    frontend = BatchFbank(300, 128, MEAN, STD)
    monkeypatch.setattr(student.frontend, "CPU_CHUNK_FRAMES", 1)
    one_by_one = frontend(waves, lengths, rate)
    monkeypatch.setattr(student.frontend, "CPU_CHUNK_FRAMES", 10**9)
    together = frontend(waves, lengths, rate)
    monkeypatch.setattr(student.frontend, "CPU_CHUNK_FRAMES", 250)
    in_pairs = frontend(waves, lengths, rate)
    torch.testing.assert_close(one_by_one, together, atol=1e-6, rtol=0)
    torch.testing.assert_close(in_pairs, together, atol=1e-6, rtol=0)
    full, counts = frontend.fbank(waves, lengths, rate)
    cut, _ = frontend.fbank(waves, lengths, rate, frames=120)  # only the frames asked for are computed
    assert counts.tolist() == [198, 198, 68, 198, 128] and full.shape[1] == 198
    torch.testing.assert_close(cut, full[:, :120], atol=1e-6, rtol=0)


@pytest.mark.parametrize("per_clip", [True, False])
def test_resampling_calls_per_clip_on_the_cpu_and_per_length_on_a_gpu(monkeypatch: pytest.MonkeyPatch,
                                                                     per_clip: bool) -> None:
    """On the CPU each clip is resampled alone, to the very samples torchaudio gives it; a GPU makes one call
    per distinct clip length (oneDNN's algorithm depends on the call's shape, so only the first is bit-exact
    there). Either way no clip sees its neighbour's samples or padding."""
    from student import frontend, torchaudio_ops

    calls: list[tuple[int, ...]] = []
    resample = torchaudio_ops.resample

    def counting(wave: torch.Tensor, orig: int, new: int) -> torch.Tensor:
        calls.append(tuple(wave.shape))
        return resample(wave, orig, new)

    waves, lengths = _batch(32000, [1.0, 0.5, 1.0, 0.5, 0.75])
    monkeypatch.setattr(torchaudio_ops, "resample", counting)
    out, new_lengths = frontend.resample_batch(waves, lengths, 32000, per_clip=per_clip)
    expected_calls = ([(32000,), (32000,), (16000,), (16000,), (24000,)] if per_clip
                      else [(2, 32000), (2, 16000), (1, 24000)])
    assert sorted(calls) == sorted(expected_calls)
    assert new_lengths.tolist() == [16000, 8000, 16000, 8000, 12000]
    for row, length in enumerate(lengths.tolist()):
        alone = resample(waves[row, :length], 32000, 16000)
        assert torch.all(out[row, alone.shape[0]:] == 0)
        if per_clip:
            assert torch.equal(out[row, : alone.shape[0]], alone)
        torch.testing.assert_close(out[row, : alone.shape[0]], alone, atol=1e-6, rtol=0)


def test_mixing_chunk_by_chunk_inside_the_fbank_equals_mixing_the_batch_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fbank(mix=plan)` mixes a few clips at a time, with partners in other chunks: the same features as
    `plan.mix_waves` on the whole batch followed by the fbank."""
    import student.frontend
    from student.augment import MixPlan

    waves, lengths = _batch(32000, [2.0, 1.0, 1.5, 2.0, 0.6], seed=4)
    plan = MixPlan.draw(5, 1.0, torch.Generator().manual_seed(2))
    assert int((plan.lam < 1).sum()) >= 3
    frontend = BatchFbank(200, 128, MEAN, STD)
    monkeypatch.setattr(student.frontend, "CPU_CHUNK_FRAMES", 1)
    chunked, _ = frontend.fbank(waves, lengths, 32000, mix=plan)
    whole, _ = frontend.fbank(plan.mix_waves(waves, lengths), lengths, 32000)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    unmixed, _ = frontend.fbank(waves, lengths, 32000)
    assert not torch.allclose(chunked, unmixed, atol=1e-3)
