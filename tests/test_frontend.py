"""The batched AST front-end equals torchaudio's Kaldi fbank applied clip by clip, on any device."""

from __future__ import annotations

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from student.errors import StudentError
from student.features import normalize, wave_to_fbank
from student.frontend import BatchFbank, kaldi_mel_banks

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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rate", [16000, 32000, 44100])
def test_a_batch_of_different_lengths_equals_the_per_clip_path(device: str, rate: int) -> None:
    """Within 1e-4 of AST's per-clip features; padding never leaks into a shorter clip's frames."""
    waves, lengths = _batch(rate, [10.0, 3.3, 1.0, 0.2])
    frontend = BatchFbank(1024, 128, MEAN, STD).to(device)
    batch = frontend(waves.to(device), lengths.to(device), rate).cpu()
    assert batch.shape == (4, 1024, 128)
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
    ([0], "lengths must lie"),
    ([5000], "lengths must lie"),
])
def test_bad_batches_are_refused_with_the_lengths_named(lengths: list[int], match: str) -> None:
    with pytest.raises(StudentError, match=match):
        BatchFbank(100)(torch.zeros(1, 4000), torch.tensor(lengths), 16000)


def test_non_finite_samples_are_refused() -> None:
    waves = torch.zeros(1, 16000)
    waves[0, 5] = float("nan")
    with pytest.raises(StudentError, match="NaN"):
        BatchFbank(100)(waves, torch.tensor([16000]), 16000)
