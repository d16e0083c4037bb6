"""AST's input features: 16 kHz Kaldi log-mel fbank, pad/cut, normalisation, SpecAugment.

The released AST weights only fit features computed exactly as AST computes them:
whole-clip mean removal, torchaudio's Kaldi fbank (25 ms Hanning windows, 10 ms shift,
snip_edges, htk_compat, no energy, no dither at evaluation), zero padding at the end in the
log domain, then (x − mean) / (2·std).
"""

from __future__ import annotations

import torch

from student import torchaudio_ops
from student.errors import StudentError

SAMPLE_RATE = 16000
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
MIN_SAMPLES = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)  # one window

# (mean, std) of the fbank over each dataset's training set, as published with AST.
NORM_STATS: dict[str, tuple[float, float]] = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "speechcommands": (-6.845978, 5.5654526),
}


def frames_for(num_samples: int) -> int:
    """Frames Kaldi framing (snip_edges) gives for a 16 kHz clip: 998 for 10 s."""
    return 0 if num_samples < MIN_SAMPLES else 1 + (num_samples - MIN_SAMPLES) // int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)


def _mono(wave: torch.Tensor) -> torch.Tensor:
    if not isinstance(wave, torch.Tensor):
        wave = torch.as_tensor(wave)
    if wave.ndim == 2 and wave.shape[0] == 1:
        wave = wave[0]
    if wave.ndim != 1:
        raise StudentError(f"expected a mono waveform of shape (samples,), got {tuple(wave.shape)}")
    return wave.float()


def kaldi_fbank(wave_16k: torch.Tensor, target_frames: int | None = None, num_mel_bins: int = 128,
                dither: float = 0.0) -> torch.Tensor:
    """Mono 16 kHz waveform (samples,) in [-1, 1] → log-mel fbank (target_frames, num_mel_bins).

    Shorter clips are zero-padded at the end (in the log domain, as AST does), longer ones cut;
    `target_frames=None` keeps every frame. `dither` > 0 only for training-time noise.
    """
    wave = _mono(wave_16k)
    if wave.numel() < MIN_SAMPLES:
        raise StudentError(f"waveform of {wave.numel()} samples is shorter than one {FRAME_LENGTH_MS:g} ms window "
                           f"({MIN_SAMPLES} samples at 16 kHz)")
    if not torch.isfinite(wave).all():
        raise StudentError("waveform contains NaN or infinite samples")
    if num_mel_bins < 1:
        raise StudentError(f"num_mel_bins must be ≥ 1, got {num_mel_bins}")
    wave = wave - wave.mean()
    fbank = torchaudio_ops.kaldi_fbank(
        wave[None], htk_compat=True, sample_frequency=SAMPLE_RATE, use_energy=False, window_type="hanning",
        num_mel_bins=num_mel_bins, dither=dither, frame_shift=FRAME_SHIFT_MS, frame_length=FRAME_LENGTH_MS,
    )
    return fbank if target_frames is None else fit_frames(fbank, target_frames)


def fit_frames(fbank: torch.Tensor, target_frames: int) -> torch.Tensor:
    """Zero-pad at the end or cut to `target_frames` rows."""
    if target_frames < 1:
        raise StudentError(f"target_frames must be ≥ 1, got {target_frames}")
    frames = fbank.shape[0]
    if frames < target_frames:
        return torch.cat((fbank, fbank.new_zeros(target_frames - frames, fbank.shape[1])), dim=0)
    return fbank[:target_frames]


def wave_to_fbank(wave: torch.Tensor, sample_rate: int, target_frames: int | None = None,
                  num_mel_bins: int = 128, dither: float = 0.0) -> torch.Tensor:
    """Any-rate mono waveform → fbank: resampled to 16 kHz first (band-limited sinc, torchaudio)."""
    wave = _mono(wave)
    if sample_rate <= 0:
        raise StudentError(f"sample rate must be positive, got {sample_rate}")
    if sample_rate != SAMPLE_RATE:
        wave = torchaudio_ops.resample(wave, sample_rate, SAMPLE_RATE)
    return kaldi_fbank(wave, target_frames, num_mel_bins, dither)


def normalize(fbank: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """AST's normalisation: (fbank − mean) / (2·std), giving roughly mean 0 and std 0.5."""
    if not std > 0:
        raise StudentError(f"normalisation std must be positive, got {std}")
    return (fbank - mean) / (2 * std)


def norm_stats(name: str) -> tuple[float, float]:
    if name not in NORM_STATS:
        raise StudentError(f"no published fbank statistics for {name!r}; known: {', '.join(NORM_STATS)} "
                           "(compute them with `fat stats DATAFILE`)")
    return NORM_STATS[name]


def spec_augment(fbank: torch.Tensor, freqm: int, timem: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment as AST uses it: one frequency and one time mask per clip, zero fill.

    Widths are uniform in [0, freqm) and [0, timem); works on (T, F) or a batch (B, T, F), each
    clip with its own masks. Apply before `normalize` (as AST does). Returns a new tensor.
    """
    if freqm < 0 or timem < 0:
        raise StudentError(f"mask widths must be ≥ 0, got freqm={freqm}, timem={timem}")
    if fbank.ndim not in (2, 3):
        raise StudentError(f"spec_augment expects (T, F) or (B, T, F), got {tuple(fbank.shape)}")
    single = fbank.ndim == 2
    out = (fbank[None] if single else fbank).clone()
    batch, frames, bins = out.shape
    for axis, param, length in ((2, freqm, bins), (1, timem, frames)):
        if param == 0:
            continue
        width = (torch.rand(batch, generator=generator) * param).long()
        start = (torch.rand(batch, generator=generator) * (length - width)).long()
        index = torch.arange(length)
        mask = (index[None] >= start[:, None]) & (index[None] < (start + width)[:, None])  # (B, length)
        mask = mask[:, None, :] if axis == 2 else mask[:, :, None]
        out.masked_fill_(mask.to(out.device), 0.0)  # in place on the copy: no second (B, T, F) temporary
    return out[0] if single else out
