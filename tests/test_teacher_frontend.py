"""The teacher's mel front-end, checked against values computed independently (numpy FFT,
torchaudio's Kaldi filter bank, the log/normalisation constants) and for its train-mode augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from teacher import FrontEndConfig, MelFrontEnd, TeacherError, mel_filterbank

SR = 32000


def sine(freq: float, seconds: float = 1.0, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(SR * seconds), dtype=torch.float64) / SR
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


@pytest.mark.parametrize(("samples", "hop", "mels", "frames"), [
    (320000, 320, 128, 1000),  # 10 s: 1000 frames because pre-emphasis drops one sample
    (320001, 320, 128, 1001),
    (64000, 160, 128, 400),
    (64000, 800, 64, 80),
    (48000, 320, 256, 150),
])
def test_output_shape(samples, hop, mels, frames):
    frontend = MelFrontEnd(FrontEndConfig(hop_length=hop, n_mels=mels)).eval()
    assert frontend.cfg.frames(samples) == frames
    assert frontend(torch.zeros(2, samples)).shape == (2, mels, frames)


@pytest.mark.parametrize(("mels", "fmin", "fmax"), [(128, 0.0, 15000.0), (40, 7.0, 14100.0), (256, 3.0, 16000.0)])
def test_filter_bank_equals_kaldis(mels, fmin, fmax):
    ours = mel_filterbank(mels, 1024, SR, fmin, fmax)
    reference, _ = kaldi.get_mel_banks(mels, 1024, SR, fmin, fmax, 100.0, -500.0, 1.0)
    assert ours.shape == (mels, 513)
    torch.testing.assert_close(ours[:, :512], reference, rtol=0, atol=1e-6)
    assert torch.all(ours[:, 512] == 0)  # the Nyquist bin carries no weight


def test_filters_are_ordered_triangles_inside_the_band():
    bank = mel_filterbank(128, 1024, SR, 0.0, 15000.0).numpy()
    bin_hz = np.arange(513) * SR / 1024
    assert np.all(bank[:, bin_hz > 15000] == 0)
    peaks = bank.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0) and bank.max() <= 1.0 and bank.min() >= 0
    for row in bank[10:]:  # wide enough to span several bins: rises to one peak, then falls
        support = row[row > 0]
        top = support.argmax()
        assert np.all(np.diff(support[:top + 1]) >= 0) and np.all(np.diff(support[top:]) <= 0)
    covered = bank.sum(axis=0)
    inside = (bin_hz > 300) & (bin_hz < 14000)
    assert np.allclose(covered[inside], 1.0, atol=1e-5)  # neighbouring triangles sum to one


def test_power_spectrum_matches_an_independent_fft():
    wave = sine(1000.0) + 0.1 * sine(5100.0, amplitude=1.0)
    frontend = MelFrontEnd().eval()
    power = frontend.power_spectrogram(wave[None])[0].double().numpy()
    x = wave.double().numpy()
    emphasised = x[1:] - 0.97 * x[:-1]
    frame = 40  # well inside the signal: centred frame k starts at k·hop − n_fft/2
    start = frame * 320 - 512
    window = np.zeros(1024)
    window[112:912] = np.hanning(800)  # symmetric Hann, centred in the FFT frame
    expected = np.abs(np.fft.rfft(emphasised[start:start + 1024] * window)) ** 2
    np.testing.assert_allclose(power[:, frame], expected, rtol=1e-3, atol=1e-3 * expected.max())


@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0, 9000.0])
def test_a_sine_peaks_in_the_band_centred_nearest_its_frequency(freq):
    frontend = MelFrontEnd().eval()
    mel = frontend(sine(freq)[None])[0]
    strongest = int(mel[:, 10:-10].mean(dim=1).argmax())
    bank = mel_filterbank(128, 1024, SR, 0.0, 15000.0)
    centres = (bank.argmax(dim=1).double() * SR / 1024).numpy()
    assert abs(int(np.abs(centres - freq).argmin()) - strongest) <= 1


def test_log_and_normalisation_constants():
    frontend = MelFrontEnd().eval()
    silence = frontend(torch.zeros(1, 16000))
    torch.testing.assert_close(silence, torch.full_like(silence, (math.log(1e-5) + 4.5) / 5))
    assert abs(silence[0, 0, 0].item() - (-1.40259)) < 1e-5
    loud, quiet = frontend(sine(1000.0, amplitude=0.5)[None]), frontend(sine(1000.0, amplitude=0.05)[None])
    band = int(loud[0, :, 20].argmax())
    # a 10× smaller amplitude is 100× less power: ln(100)/5 lower after normalisation
    assert abs((loud - quiet)[0, band, 20:-20].mean().item() - math.log(100) / 5) < 0.01


def test_eval_mode_is_deterministic_and_train_mode_moves_the_band_edges():
    frontend = MelFrontEnd()
    wave = torch.randn(2, 16000)
    frontend.eval()
    torch.testing.assert_close(frontend(wave), frontend(wave), rtol=0, atol=0)
    reference = frontend(wave)
    frontend.train()
    torch.manual_seed(0)
    outputs = [frontend(wave) for _ in range(4)]
    assert not all(torch.equal(o, reference) for o in outputs)
    torch.manual_seed(0)
    torch.testing.assert_close(frontend(wave), outputs[0], rtol=0, atol=0)  # seeded: reproducible


def test_train_mode_masks_bands_per_example():
    frontend = MelFrontEnd(FrontEndConfig(freqm=30, timem=40)).train()
    torch.manual_seed(1)
    wave = 0.3 * torch.randn(8, 32000)
    mel = frontend(wave)
    masked_value = 4.5 / 5  # masks are cut before the normalisation
    masked_rows = (mel == masked_value).all(dim=2)  # (B, mels) whole mel bins masked
    masked_cols = (mel == masked_value).all(dim=1)  # (B, frames) whole frames masked
    assert masked_rows.any(dim=1).sum() >= 5 and masked_cols.any(dim=1).sum() >= 5
    assert masked_rows.sum(dim=1).max() < 30 and masked_cols.sum(dim=1).max() < 40
    assert len({tuple(r.nonzero().flatten().tolist()) for r in masked_rows}) > 2  # iid per example


def test_front_end_stays_float32_under_autocast():
    frontend = MelFrontEnd().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = frontend(torch.randn(1, 8000))
    assert out.dtype == torch.float32


def test_bad_settings_and_inputs():
    with pytest.raises(TeacherError, match="mel range"):
        mel_filterbank(128, 1024, SR, 0.0, 17000.0)
    with pytest.raises(TeacherError, match="waveform batch"):
        MelFrontEnd()(torch.zeros(8000))
    with pytest.raises(TeacherError, match="STFT"):
        MelFrontEnd(FrontEndConfig(win_length=2048))
