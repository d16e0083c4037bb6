"""AST's input features for a whole batch, on whatever device the batch lives on.

Waveforms arrive zero-padded to one length with their true lengths beside them; every step
(resampling to 16 kHz, whole-clip mean removal, Kaldi framing and log-mel fbank, pad/cut to the
model's frames, normalisation) works on the batch at once and keeps each clip's frames its
own: frames that would reach into the padding are zeroed, as AST's per-clip zero padding
does. The result equals `torchaudio.compliance.kaldi.fbank` applied clip by clip with AST's
settings (Hanning window, 25 ms / 10 ms, 512-point FFT, per-frame DC removal, pre-emphasis
0.97, power spectrum, 128 Kaldi mel bands 20 Hz – Nyquist, log floored at float32 eps).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from student import torchaudio_ops
from student.errors import StudentError
from student.features import FRAME_LENGTH_MS, FRAME_SHIFT_MS, SAMPLE_RATE

WINDOW = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)  # 400 samples
SHIFT = int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)  # 160 samples
N_FFT = 1 << (WINDOW - 1).bit_length()  # 512: Kaldi rounds the window up to a power of two
PREEMPHASIS = 0.97
LOW_FREQ = 20.0


def _mel(hz: float) -> float:
    """Kaldi's mel scale, 1127·ln(1 + f/700)."""
    return 1127.0 * math.log(1.0 + hz / 700.0)


def kaldi_mel_banks(num_bins: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT,
                    low_freq: float = LOW_FREQ, high_freq: float | None = None) -> torch.Tensor:
    """Triangles evenly spaced on the mel scale, (num_bins, n_fft // 2 + 1); the Nyquist column is zero as in Kaldi.

    Computed in float32 in the same order of operations as Kaldi's (and torchaudio's) filter
    bank: near the log floor the fbank is so ill-conditioned that a weight 1e-5 off moves a
    quiet cell by more than the 1e-4 the features must match AST's by.
    """
    high = sample_rate / 2 if high_freq is None else high_freq
    low_mel = _mel(low_freq)
    step = (_mel(high) - low_mel) / (num_bins + 1)
    band = torch.arange(num_bins).unsqueeze(1)
    left = low_mel + band * step
    centre = low_mel + (band + 1.0) * step
    right = low_mel + (band + 2.0) * step
    fft_mel = (1127.0 * (1.0 + (sample_rate / n_fft) * torch.arange(n_fft // 2) / 700.0).log()).unsqueeze(0)
    rising = (fft_mel - left) / (centre - left)
    falling = (right - fft_mel) / (right - centre)
    banks = torch.max(torch.zeros(1), torch.min(rising, falling))
    return torch.nn.functional.pad(banks, (0, 1))


def valid_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) booleans: True where position < the clip's length."""
    return torch.arange(size, device=lengths.device)[None] < lengths[:, None]


def resample_batch(waves: torch.Tensor, lengths: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) at `sample_rate` → (B, S') at 16 kHz with the new lengths; a clip's samples never see its neighbours'.

    Each clip is resampled over its own samples (one kernel call per clip): the convolution
    over a padded row rounds differently, which the log-mel cells near the floor magnify.
    """
    if sample_rate == SAMPLE_RATE:
        return waves, lengths
    clips = [torchaudio_ops.resample(waves[row, :length], sample_rate, SAMPLE_RATE)
             for row, length in enumerate(lengths.tolist())]
    new_lengths = torch.tensor([clip.shape[0] for clip in clips], device=lengths.device)
    return torch.nn.utils.rnn.pad_sequence(clips, batch_first=True), new_lengths


def frame_counts(lengths: torch.Tensor) -> torch.Tensor:
    """Frames Kaldi's snip_edges framing gives per clip (0 for a clip shorter than one window)."""
    return torch.where(lengths >= WINDOW, 1 + torch.div(lengths - WINDOW, SHIFT, rounding_mode="floor"),
                       torch.zeros_like(lengths))


class BatchFbank(nn.Module):
    """Padded waveforms (B, S) + lengths (B,) at any rate → normalised AST features (B, target_frames, num_mel_bins).

    `mean`/`std` are the dataset's fbank statistics ((x − mean) / (2·std), as AST); padding rows are
    zero before normalisation (AST pads in the log domain with zeros).
    """

    def __init__(self, target_frames: int, num_mel_bins: int = 128, mean: float = 0.0, std: float = 0.5) -> None:
        super().__init__()
        if target_frames < 1 or num_mel_bins < 4 or not std > 0:
            raise StudentError(f"BatchFbank needs target_frames ≥ 1, num_mel_bins ≥ 4 and std > 0; got "
                               f"{target_frames}, {num_mel_bins}, {std}")
        self.target_frames, self.num_mel_bins, self.mean, self.std = target_frames, num_mel_bins, mean, std
        self.register_buffer("window", torch.hann_window(WINDOW, periodic=False), persistent=False)
        self.register_buffer("banks", kaldi_mel_banks(num_mel_bins), persistent=False)

    def fbank(self, waves: torch.Tensor, lengths: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised log-mel fbank (B, T, F) over the longest clip's frames, and each clip's frame count."""
        waves, lengths = _check_batch(waves.float(), lengths.to(waves.device), sample_rate)
        waves, lengths = resample_batch(waves, lengths, sample_rate)
        inside = valid_mask(lengths, waves.shape[1])
        centred = (waves - clip_means(waves, lengths)[:, None]) * inside
        if centred.shape[1] < WINDOW:
            centred = torch.nn.functional.pad(centred, (0, WINDOW - centred.shape[1]))
        frames = centred.unfold(1, WINDOW, SHIFT)  # (B, T, WINDOW)
        frames = frames - frames.mean(-1, keepdim=True)
        previous = torch.cat((frames[..., :1], frames[..., :-1]), dim=-1)
        frames = (frames - PREEMPHASIS * previous) * self.window
        power = torch.fft.rfft(frames, n=N_FFT).abs().pow(2)
        mel = power @ self.banks.T
        logmel = torch.clamp(mel, min=torch.finfo(torch.float32).eps).log()
        counts = frame_counts(lengths)
        return logmel * valid_mask(counts, logmel.shape[1])[..., None], counts

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor, sample_rate: int) -> torch.Tensor:
        logmel, _ = self.fbank(waves, lengths, sample_rate)
        fitted = fit_frames_batch(logmel, self.target_frames)
        return (fitted - self.mean) / (2 * self.std)


def clip_means(waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each clip's mean over its own samples, reduced exactly as `wave.mean()` of the clip alone.

    A sum over the padded row would round differently, and the log-mel cells near the floor
    turn a 1e-9 change of the waveform into 1e-3 of log power.
    """
    return torch.stack([waves[row, :length].mean() for row, length in enumerate(lengths.tolist())])


def fit_frames_batch(fbank: torch.Tensor, target_frames: int) -> torch.Tensor:
    """Zero-pad at the end or cut (B, T, F) to `target_frames` frames."""
    frames = fbank.shape[1]
    if frames >= target_frames:
        return fbank[:, :target_frames]
    return torch.nn.functional.pad(fbank, (0, 0, 0, target_frames - frames))


def _check_batch(waves: torch.Tensor, lengths: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    if waves.ndim != 2 or lengths.shape != (waves.shape[0],):
        raise StudentError(f"expected waves (B, samples) and lengths (B,), got {tuple(waves.shape)} and "
                           f"{tuple(lengths.shape)}")
    if sample_rate <= 0:
        raise StudentError(f"sample rate must be positive, got {sample_rate}")
    if bool((lengths < 0).any()) or bool((lengths > waves.shape[1]).any()):
        raise StudentError(f"clip lengths must lie in [0, {waves.shape[1]}], got {lengths.tolist()}")
    min_samples = math.ceil(WINDOW * sample_rate / SAMPLE_RATE)
    if bool((lengths < min_samples).any()):
        raise StudentError(f"a clip shorter than one {FRAME_LENGTH_MS:g} ms window ({min_samples} samples at "
                           f"{sample_rate} Hz): lengths {lengths.tolist()}")
    if not bool(torch.isfinite(waves).all()):
        raise StudentError("waveform batch contains NaN or infinite samples")
    return waves, lengths.long()
