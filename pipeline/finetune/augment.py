"""EfficientAT's fine-tuning augmentation, per batch on the training device.

Waveform (before the mel front end), in upstream's order: a random gain of a whole number of dB
in [−g, g), a circular roll by up to ±N samples, then waveform mixing — a share of the clips is
mixed with a partner (here from the same batch, upstream from the whole set), both centred,
λ ~ Beta(2, 2) with the clip keeping the larger share, targets mixed alike. Spectrogram (after
the front end): mixup with a batch permutation, λ ~ Beta(α, α) per clip, the larger share again;
the loss is taken against the mixed targets, which for cross-entropy equals upstream's λ-weighted
sum of the two clips' losses. All random numbers come from one CPU generator seeded per batch,
so a resumed run and any worker count see the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

WAVMIX_BETA = 2.0  # upstream's MixupDataset default


@dataclass(frozen=True)
class Recipe:
    gain_db: int = 12
    roll_samples: int = 4000
    wavmix: float = 0.5
    mixup_alpha: float = 0.3


def _beta(alpha: float, count: int, generator: torch.Generator) -> torch.Tensor:
    """max(λ, 1 − λ) for λ ~ Beta(α, α), from `generator` (torch.distributions takes none)."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=count)).float()
    return torch.maximum(lam, 1.0 - lam)


def augment_waves(waves: torch.Tensor, targets: torch.Tensor, recipe: Recipe,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Gain → roll → waveform mixing on (B, S) waves and (B, C) targets."""
    count, samples = waves.shape
    device = waves.device
    if recipe.gain_db:
        gain = torch.randint(-recipe.gain_db, recipe.gain_db, (count,), generator=generator).float()
        waves = waves * (10.0 ** (gain / 20.0)).to(device)[:, None]
    if recipe.roll_samples:
        shifts = torch.randint(-recipe.roll_samples, recipe.roll_samples + 1, (count,), generator=generator)
        source = (torch.arange(samples)[None, :] - shifts[:, None]) % samples
        waves = waves.gather(1, source.to(device))
    if recipe.wavmix > 0:
        mixed = (torch.rand(count, generator=generator) < recipe.wavmix).to(device)
        partner = torch.randperm(count, generator=generator).to(device)
        lam = _beta(WAVMIX_BETA, count, generator).to(device)
        lam = torch.where(mixed, lam, torch.ones_like(lam))
        centred = waves - waves.mean(dim=1, keepdim=True)
        mix = lam[:, None] * centred + (1.0 - lam[:, None]) * centred[partner]
        waves = torch.where(mixed[:, None], mix - mix.mean(dim=1, keepdim=True), waves)
        targets = lam[:, None] * targets + (1.0 - lam[:, None]) * targets[partner]
    return waves, targets


def mixup_spectrograms(mel: torch.Tensor, targets: torch.Tensor, alpha: float,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Every clip mixed with a permuted partner: (B, ...) spectrograms, (B, C) targets."""
    if alpha <= 0:
        return mel, targets
    count = mel.shape[0]
    partner = torch.randperm(count, generator=generator).to(mel.device)
    lam = _beta(alpha, count, generator).to(mel.device)
    shape = (count,) + (1,) * (mel.dim() - 1)
    mel = lam.view(shape) * mel + (1.0 - lam.view(shape)) * mel[partner]
    return mel, lam[:, None] * targets + (1.0 - lam[:, None]) * targets[partner]
