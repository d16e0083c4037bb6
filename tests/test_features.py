"""AST's fbank features: Kaldi settings, framing, padding, normalisation, SpecAugment, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from student import StudentError
from student.features import (
    NORM_STATS, fit_frames, frames_for, kaldi_fbank, norm_stats, normalize, spec_augment, wave_to_fbank,
)


def sine(freq: float, seconds: float, rate: int = 16000, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


def mel(f: float) -> float:
    return 1127.0 * math.log(1.0 + f / 700.0)


def expected_peak_bin(freq: float, bins: int = 128, low: float = 20.0, high: float = 8000.0) -> int:
    """The Kaldi triangle whose centre is nearest to `freq` on the mel scale."""
    delta = (mel(high) - mel(low)) / (bins + 1)
    centres = [mel(low) + (k + 1) * delta for k in range(bins)]
    return min(range(bins), key=lambda k: abs(centres[k] - mel(freq)))


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_sine_peaks_in_the_mel_bin_of_its_frequency(freq: float) -> None:
    fbank = kaldi_fbank(sine(freq, 1.0), target_frames=None)
    assert fbank.shape == (98, 128)  # 1 + (16000 − 400) // 160
    peak = int(fbank[5:-5].mean(0).argmax())
    assert abs(peak - expected_peak_bin(freq)) <= 1
    assert fbank[:, peak].min() > fbank[:, (peak + 40) % 128].max() + 5  # far louder than a distant bin


def test_fbank_is_torchaudio_kaldi_with_asts_settings() -> None:
    wave = sine(700.0, 0.5) + 0.01 * torch.randn(8000, generator=torch.Generator().manual_seed(0)) + 0.2
    direct = kaldi.fbank((wave - wave.mean())[None], htk_compat=True, sample_frequency=16000, use_energy=False,
                         window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    assert torch.equal(kaldi_fbank(wave, target_frames=None), direct)


def test_silence_sits_at_the_log_floor_and_a_dc_offset_is_removed() -> None:
    silent = kaldi_fbank(torch.full((4000,), 0.3), target_frames=None)
    assert torch.allclose(silent, torch.full_like(silent, math.log(torch.finfo(torch.float32).eps)))
    assert silent[0, 0].item() == pytest.approx(-15.942, abs=1e-3)


def test_ten_seconds_give_998_frames_padded_with_zeros_to_1024() -> None:
    wave = sine(500.0, 10.0)
    assert frames_for(wave.numel()) == 998
    fbank = kaldi_fbank(wave, target_frames=1024)
    assert fbank.shape == (1024, 128)
    assert torch.equal(fbank[998:], torch.zeros(26, 128))
    assert torch.equal(fbank[:998], kaldi_fbank(wave, target_frames=None))
    assert torch.equal(kaldi_fbank(wave, target_frames=100), fbank[:100])


def test_other_sample_rates_are_resampled_to_16k() -> None:
    at_16k = kaldi_fbank(sine(1000.0, 1.0), target_frames=128)
    at_32k = wave_to_fbank(sine(1000.0, 1.0, rate=32000), 32000, target_frames=128)
    assert at_32k.shape == (128, 128)
    peak = expected_peak_bin(1000.0)
    assert int(at_32k[10:90].mean(0).argmax()) == int(at_16k[10:90].mean(0).argmax())
    assert torch.allclose(at_32k[10:90, peak], at_16k[10:90, peak], atol=0.05)
    assert torch.equal(wave_to_fbank(sine(1000.0, 1.0), 16000, 128), at_16k)


def test_normalisation_uses_asts_published_constants() -> None:
    assert NORM_STATS["audioset"] == (-4.2677393, 4.5689974)
    assert NORM_STATS["esc50"] == (-6.6268077, 5.358466)
    assert NORM_STATS["speechcommands"] == (-6.845978, 5.5654526)
    padded = normalize(torch.zeros(2, 2), *norm_stats("audioset"))
    assert padded[0, 0].item() == pytest.approx(0.467, abs=1e-3)  # AST's padding value
    assert normalize(torch.tensor([-4.2677393 + 2 * 4.5689974]), *NORM_STATS["audioset"]).item() == pytest.approx(1.0)
    with pytest.raises(StudentError, match="fat stats"):
        norm_stats("librispeech")
    with pytest.raises(StudentError, match="std"):
        normalize(torch.zeros(1), 0.0, 0.0)


def test_spec_augment_masks_one_band_and_one_span_per_clip() -> None:
    fbank = torch.ones(4, 200, 128)
    out = spec_augment(fbank, freqm=48, timem=60, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fbank, torch.ones(4, 200, 128))  # input untouched
    patterns = set()
    for clip in out:
        zero_bins = (clip == 0).all(dim=0).nonzero().flatten().tolist()
        zero_frames = (clip == 0).all(dim=1).nonzero().flatten().tolist()
        assert len(zero_bins) < 48 and len(zero_frames) < 60
        for run in (zero_bins, zero_frames):  # contiguous
            assert run == list(range(run[0], run[0] + len(run))) if run else run == []
        expected = torch.zeros(200, 128, dtype=torch.bool)  # nothing else is touched
        expected[:, zero_bins] = True
        expected[zero_frames] = True
        assert torch.equal(clip == 0, expected)
        patterns.add((tuple(zero_bins), tuple(zero_frames)))
    assert len(patterns) > 1  # each clip has its own masks
    same = spec_augment(fbank, freqm=48, timem=60, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    assert torch.equal(spec_augment(fbank[0], 0, 0), fbank[0])
    assert spec_augment(fbank[0], 10, 10).shape == (200, 128)


def test_bad_waveforms_are_clear_errors() -> None:
    with pytest.raises(StudentError, match="shorter than one 25 ms window"):
        kaldi_fbank(torch.zeros(399), 128)
    with pytest.raises(StudentError, match="NaN"):
        kaldi_fbank(torch.full((1000,), float("nan")), 128)
    with pytest.raises(StudentError, match="mono"):
        kaldi_fbank(torch.zeros(2, 1000), 128)
    with pytest.raises(StudentError, match="target_frames"):
        fit_frames(torch.zeros(5, 128), 0)
    with pytest.raises(StudentError, match="sample rate"):
        wave_to_fbank(torch.zeros(1000), 0)
    assert kaldi_fbank(torch.zeros(1, 16000) + sine(300.0, 1.0), 64).shape == (64, 128)  # (1, samples) is mono
