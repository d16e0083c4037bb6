"""AST's input features for a whole batch, on whatever device the batch lives on.

Waveforms arrive zero-padded to one length with their true lengths beside them; every step
(resampling to 16 kHz, whole-clip mean removal, Kaldi framing and log-mel fbank, pad/cut to the
model's frames, normalisation) works on many clips at once (the whole batch on a GPU, a few
clips at a time on a CPU, where whole-batch temporaries cost more than the arithmetic) and keeps
each clip's frames its own: frames that would reach into the padding are zeroed, as AST's
per-clip zero padding does. The result equals `torchaudio.compliance.kaldi.fbank` applied clip
by clip with AST's settings (Hanning window, 25 ms / 10 ms, 512-point FFT, per-frame DC removal,
pre-emphasis 0.97, power spectrum, 128 Kaldi mel bands 20 Hz – Nyquist, log floored at float32
eps): everything before the FFT in torchaudio's order of operations, bit for bit.
"""

from __future__ import annotations

import math
from typing import Protocol

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
CPU_CHUNK_FRAMES = 3000  # Kaldi frames per CPU work chunk (`row_chunks`): three 10 s clips, ~20 MB of temporaries


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


def bank_blocks(banks: torch.Tensor, bands: int = 16) -> list[tuple[int, int, int, int]]:
    """(first band, end band, first FFT bin, end bin) of each block of `bands` mel bands: the bins with a
    non-zero weight in the block (a mel band's triangle spans a few bins; all 128 span 257)."""
    blocks = []
    for first in range(0, banks.shape[0], bands):
        reached = (banks[first:first + bands] != 0).any(0).nonzero().flatten()
        low, high = (int(reached.min()), int(reached.max()) + 1) if reached.numel() else (0, 1)
        blocks.append((first, min(first + bands, banks.shape[0]), low, high))
    return blocks


def valid_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) booleans: True where position < the clip's length."""
    return torch.arange(size, device=lengths.device)[None] < lengths[:, None]


def row_chunks(rows: int, row_size: int, budget: int, device: torch.device) -> list[slice]:
    """Consecutive row ranges of a batch to work on one at a time: on the CPU ≤ `budget` elements each, elsewhere all.

    On a CPU a whole batch's temporaries (tens of MB each) fall out of the caches and every
    fresh allocation of that size costs page faults; a few clips at a time stay in cache. A
    GPU wants the whole batch in one kernel call.
    """
    if rows == 0:
        return []
    if device.type != "cpu":
        return [slice(0, rows)]
    step = max(1, budget // max(1, row_size))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def length_groups(lengths: torch.Tensor) -> dict[int, list[int]]:
    """Row indices of the clips of each distinct length, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for row, length in enumerate(lengths.tolist()):
        groups.setdefault(length, []).append(row)
    return groups


def resample_batch(waves: torch.Tensor, lengths: torch.Tensor, sample_rate: int,
                   per_clip: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) at `sample_rate` → (B, S') at 16 kHz with the new lengths; a clip's samples never see its neighbours'.

    Every clip is resampled over its own samples only (a convolution over a zero-padded row
    rounds differently, which the log-mel cells near the floor magnify). `per_clip` (default: on
    the CPU) makes one kernel call per clip: oneDNN picks its convolution algorithm by the
    call's shape, so even clips of one length resampled in one call can differ from the clip
    alone by an ulp, and that moves quiet cells by up to 1e-3. Otherwise (a GPU) one call per
    distinct clip length.
    """
    if sample_rate == SAMPLE_RATE:
        return waves, lengths
    if per_clip is None:
        per_clip = waves.device.type == "cpu"
    groups = length_groups(lengths)
    if per_clip:
        parts = [([row], waves[row, :length]) for length, rows in groups.items() for row in rows]
    else:
        parts = [(rows, waves[torch.tensor(rows, device=waves.device), :length] if len(rows) < waves.shape[0]
                  else waves[:, :length]) for length, rows in groups.items()]
    resampled = [(rows, torchaudio_ops.resample(clips, sample_rate, SAMPLE_RATE)) for rows, clips in parts]
    new_lengths = resampled_lengths(lengths, sample_rate)
    if len(resampled) == 1 and not per_clip:  # clips of one length: nothing to pad
        return resampled[0][1], new_lengths
    out = waves.new_zeros(waves.shape[0], max(clips.shape[-1] for _, clips in resampled))
    for rows, clips in resampled:
        out[rows, : clips.shape[-1]] = clips
    return out, new_lengths


def resampled_lengths(lengths: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Each clip's length in samples after resampling to 16 kHz (torchaudio's ceil(new · length / orig))."""
    if sample_rate == SAMPLE_RATE:
        return lengths
    divisor = math.gcd(sample_rate, SAMPLE_RATE)
    new, orig = SAMPLE_RATE // divisor, sample_rate // divisor
    return torch.div(lengths * new + orig - 1, orig, rounding_mode="floor")


def frame_counts(lengths: torch.Tensor) -> torch.Tensor:
    """Frames Kaldi's snip_edges framing gives per clip (0 for a clip shorter than one window)."""
    return torch.where(lengths >= WINDOW, 1 + torch.div(lengths - WINDOW, SHIFT, rounding_mode="floor"),
                       torch.zeros_like(lengths))


class RowMixer(Protocol):
    """What `BatchFbank.fbank` needs of a mixup plan (`student.augment.MixPlan`; frontend cannot import augment)."""

    def mix_rows(self, waves: torch.Tensor, lengths: torch.Tensor, rows: slice) -> torch.Tensor: ...


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
        self.bank_blocks = bank_blocks(self.banks)

    def fbank(self, waves: torch.Tensor, lengths: torch.Tensor, sample_rate: int, frames: int | None = None,
              mix: RowMixer | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised log-mel fbank (B, T, F) and each clip's frame count.

        T is the longest clip's frame count, or `frames` (later frames are not computed, missing
        ones are zero as AST pads them). `mix` (a `student.augment.MixPlan`) mixes the clips'
        waveforms first, a chunk of clips at a time, so no mixed copy of the batch is made.
        """
        waves, lengths = _check_batch(waves.float(), lengths.to(waves.device), sample_rate)
        if frames is not None and frames < 0:
            raise StudentError(f"frames must be ≥ 0, got {frames}")
        counts = frame_counts(resampled_lengths(lengths, sample_rate))
        count_list = counts.tolist()
        frames = max(count_list, default=0) if frames is None else frames
        out = waves.new_empty(waves.shape[0], frames, self.num_mel_bins)
        for rows in row_chunks(waves.shape[0], max(count_list, default=0), CPU_CHUNK_FRAMES, waves.device):
            chunk_frames = min(frames, max(count_list[rows]))
            out[rows, chunk_frames:] = 0.0
            if chunk_frames == 0:
                continue
            clips = waves[rows] if mix is None else mix.mix_rows(waves, lengths, rows)
            clips, clip_lengths = resample_batch(clips, lengths[rows], sample_rate)
            out[rows, :chunk_frames] = self._logmel(clips, clip_lengths, chunk_frames)
            if min(count_list[rows]) < chunk_frames:  # a shorter clip's frames end before the chunk's
                out[rows] *= valid_mask(counts[rows], frames).to(out.dtype)[..., None]
        return out, counts

    def _logmel(self, waves: torch.Tensor, lengths: torch.Tensor, frames: int) -> torch.Tensor:
        """The first `frames` Kaldi frames of a few 16 kHz clips, (n, frames, F), in torchaudio's order of operations."""
        samples = min(waves.shape[1], (frames - 1) * SHIFT + WINDOW)
        centred = waves[:, :samples] - clip_means(waves, lengths)[:, None]
        if bool((lengths < samples).any()):
            centred *= valid_mask(lengths, samples).to(centred.dtype)  # a float mask is cheaper on a CPU
        framed = centred.unfold(1, WINDOW, SHIFT)[:, :frames]
        framed = framed - framed.mean(-1, keepdim=True)  # Kaldi's per-frame DC removal
        padded = framed.new_empty(*framed.shape[:2], N_FFT)
        padded[..., WINDOW:] = 0.0
        emphasised = padded[..., :WINDOW]
        torch.mul(framed[..., :-1], PREEMPHASIS, out=emphasised[..., 1:])
        torch.mul(framed[..., :1], PREEMPHASIS, out=emphasised[..., :1])  # the first sample is its own predecessor
        torch.sub(framed, emphasised, out=emphasised)
        emphasised *= self.window
        spectrum = torch.view_as_real(torch.fft.rfft(padded))
        # re² + im² instead of torchaudio's |X|²: the same power within an ulp or two, which moves a
        # log-mel cell by ~1e-7 (only errors before the FFT are magnified), at a third of the cost.
        power = spectrum[..., 0].square().addcmul_(spectrum[..., 1], spectrum[..., 1])
        # Band by band in blocks, each over the FFT bins its triangles reach: an eighth of the dense
        # product's work, the same sums (the skipped weights are zeros).
        mel = torch.cat([power[..., low:high] @ self.banks[first:end, low:high].T
                         for first, end, low, high in self.bank_blocks], dim=-1)
        return mel.clamp_(min=torch.finfo(torch.float32).eps).log_()

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor, sample_rate: int) -> torch.Tensor:
        logmel, _ = self.fbank(waves, lengths, sample_rate, frames=self.target_frames)
        return logmel.sub_(self.mean).div_(2 * self.std)


def clip_means(waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each clip's mean over its own samples, reduced exactly as `wave.mean()` of the clip alone.

    Neither a sum over the padded row nor a row-wise `mean(1)` will do: with several threads a
    single clip's reduction is split between them and a batch's is not, the means differ by
    ~1e-9, and the log-mel cells near the floor turn that into ~1e-3 of log power. One small
    reduction per clip costs little next to the framing.
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
    # min and max propagate NaN: one pass and no (B, S) temporary, unlike isfinite(waves).all()
    if waves.numel() and not all(math.isfinite(bound) for bound in torch.aminmax(waves)):
        raise StudentError("waveform batch contains NaN or infinite samples")
    return waves, lengths.long()
