"""The mel front-end the mn teachers were trained with: 32 kHz waveform → normalised log-mel.

Steps: pre-emphasis y[n] = x[n+1] − 0.97·x[n] (one sample shorter, so 10 s gives 1000 frames),
centred STFT (symmetric Hann of 800 samples inside a 1024-point FFT, reflect padding), power,
Kaldi-style triangular mel filters between fmin and fmax (one zero column for the Nyquist bin),
ln(mel + 1e-5), then (x + 4.5) / 5.

In training mode (for fine-tuning) the filter bank's edges are drawn anew for every batch
(fmin within +fmin_aug_range Hz, fmax within ±fmax_aug_range/2 Hz) and optional frequency / time
masks are cut, per example, before the normalisation — the teachers' own augmentation.
The front-end always runs in float32, also under autocast.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from teacher.errors import TeacherError


@dataclass(frozen=True)
class FrontEndConfig:
    sample_rate: int = 32000
    n_mels: int = 128
    win_length: int = 800
    hop_length: int = 320
    n_fft: int = 1024
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate/2 − fmax_aug_range/2 (15000 Hz at 32 kHz)
    fmin_aug_range: int = 10
    fmax_aug_range: int = 2000
    freqm: int = 0  # training only: widest frequency mask (mel bins), 0 = off
    timem: int = 0  # training only: widest time mask (frames), 0 = off
    preemphasis: float = 0.97
    log_offset: float = 1e-5
    norm_shift: float = 4.5
    norm_scale: float = 5.0

    @property
    def eval_fmax(self) -> float:
        return float(self.fmax) if self.fmax is not None else float(self.sample_rate // 2 - self.fmax_aug_range // 2)

    def frames(self, samples: int) -> int:
        """Frames produced for a waveform of `samples` samples."""
        return 1 + (samples - 1) // self.hop_length

    def to_dict(self) -> dict:
        return {**asdict(self), "fmax": self.eval_fmax}


def hz_to_mel(freq: Tensor | float) -> Tensor | float:
    """The Kaldi / HTK mel scale, 1127·ln(1 + f/700)."""
    if isinstance(freq, Tensor):
        return 1127.0 * torch.log(1.0 + freq / 700.0)
    return 1127.0 * math.log(1.0 + freq / 700.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float) -> Tensor:
    """Triangular filters, equally spaced on the mel scale, over the n_fft/2 + 1 STFT bins.

    Each filter rises linearly in mel from its left edge to its centre and falls to its right
    edge; neighbours overlap by half. The Nyquist bin gets no weight (Kaldi's convention).
    """
    nyquist = sample_rate / 2
    if not (0 <= fmin < fmax <= nyquist):
        raise TeacherError(f"mel range must satisfy 0 <= fmin < fmax <= {nyquist:g} Hz, got {fmin:g}..{fmax:g}")
    if n_mels < 4:
        raise TeacherError(f"need at least 4 mel bins, got {n_mels}")
    low, high = hz_to_mel(float(fmin)), hz_to_mel(float(fmax))
    step = (high - low) / (n_mels + 1)
    edges = low + step * torch.arange(n_mels + 2, dtype=torch.float32)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bin_mels = hz_to_mel((sample_rate / n_fft) * torch.arange(n_fft // 2, dtype=torch.float32))[None, :]
    rising = (bin_mels - left) / (centre - left)
    falling = (right - bin_mels) / (right - centre)
    weights = torch.minimum(rising, falling).clamp_min(0.0)
    return nn.functional.pad(weights, (0, 1))


def mask_along(spec: Tensor, max_width: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero one random band per example along `dim`: width ~ U[0, max_width), start uniform."""
    if max_width <= 0:
        return spec
    batch, size = spec.shape[0], spec.shape[dim]
    width = torch.rand(batch, generator=generator, device=spec.device) * max_width
    start = torch.rand(batch, generator=generator, device=spec.device) * (size - width)
    first, last = start.long(), (start + width).long()
    position = torch.arange(size, device=spec.device)
    band = (position[None, :] >= first[:, None]) & (position[None, :] < last[:, None])  # (B, size)
    shape = [batch, 1, 1]
    shape[dim] = size
    return spec.masked_fill(band.view(shape), 0.0)


class MelFrontEnd(nn.Module):
    """(B, samples) waveform at `sample_rate` → (B, n_mels, frames) normalised log-mel."""

    def __init__(self, cfg: FrontEndConfig = FrontEndConfig()) -> None:
        super().__init__()
        if cfg.win_length > cfg.n_fft or cfg.hop_length < 1:
            raise TeacherError(f"bad STFT settings: win_length {cfg.win_length}, n_fft {cfg.n_fft}, hop {cfg.hop_length}")
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win_length, periodic=False), persistent=False)
        self.register_buffer(
            "eval_filters", mel_filterbank(cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.fmin, cfg.eval_fmax),
            persistent=False,
        )
        self.register_buffer("emphasis", torch.tensor([[[-cfg.preemphasis, 1.0]]]), persistent=False)

    def power_spectrogram(self, wave: Tensor) -> Tensor:
        """Pre-emphasised power STFT, (B, n_fft/2 + 1, frames)."""
        emphasised = nn.functional.conv1d(wave.unsqueeze(1), self.emphasis).squeeze(1)
        spec = torch.stft(emphasised, self.cfg.n_fft, hop_length=self.cfg.hop_length, win_length=self.cfg.win_length,
                          window=self.window, center=True, pad_mode="reflect", normalized=False, return_complex=True)
        return torch.view_as_real(spec).pow(2).sum(-1)

    def filters(self) -> Tensor:
        """The eval filter bank, or in training one with randomly moved edges (fresh per call)."""
        cfg = self.cfg
        if not self.training:
            return self.eval_filters
        fmin = cfg.fmin + int(torch.randint(cfg.fmin_aug_range, (1,)))
        fmax = cfg.eval_fmax + cfg.fmax_aug_range // 2 - int(torch.randint(cfg.fmax_aug_range, (1,)))
        fmax = min(fmax, cfg.sample_rate / 2)
        return mel_filterbank(cfg.n_mels, cfg.n_fft, cfg.sample_rate, fmin, fmax).to(self.eval_filters.device)

    def forward(self, wave: Tensor) -> Tensor:
        if wave.dim() != 2:
            raise TeacherError(f"expected a waveform batch (B, samples), got {tuple(wave.shape)}")
        if wave.shape[1] < 2:
            raise TeacherError("a waveform needs at least 2 samples")
        with torch.autocast(device_type=wave.device.type, enabled=False):
            power = self.power_spectrogram(wave.float())
            mel = torch.log(torch.matmul(self.filters(), power) + self.cfg.log_offset)
            if self.training:
                mel = mask_along(mel, self.cfg.freqm, dim=1)
                mel = mask_along(mel, self.cfg.timem, dim=2)
            return (mel + self.cfg.norm_shift) / self.cfg.norm_scale
