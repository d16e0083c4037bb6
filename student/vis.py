"""A picture of token merging over the spectrogram: which patches ended up in the same token.

Each patch is drawn as its stride cell (fstride × tstride, at the patch's corner) so the cells
tile the spectrogram; patches merged into one token share a colour and a border, patches that
were never merged stay clear. matplotlib is imported only here.
"""

from __future__ import annotations

import numpy as np
import torch

from student.ast import NUM_PREFIX_TOKENS, ASTModel


def patch_groups(model: ASTModel, owner: torch.Tensor) -> np.ndarray:
    """(f_dim, t_dim) grid: the final token holding each patch of one clip (`owner` of MergeState, one row)."""
    owner = owner.detach().cpu().numpy()
    return owner[NUM_PREFIX_TOKENS:].reshape(model.f_dim, model.t_dim)  # patch order is frequency-major


def draw_merges(model: ASTModel, fbank: torch.Tensor, owner: torch.Tensor, title: str = ""):
    """Figure: the fbank (T, F) on top, the same with merged groups coloured below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = patch_groups(model, owner)
    cells = np.repeat(np.repeat(groups, model.fstride, axis=0), model.tstride, axis=1)
    counts = np.bincount(groups.ravel())
    rng = np.random.default_rng(0)
    palette = rng.uniform(0.15, 1.0, size=(counts.size, 3))
    overlay = np.zeros(cells.shape + (4,))
    merged = counts[cells] > 1
    overlay[..., :3] = palette[cells]
    overlay[..., 3] = np.where(merged, 0.55, 0.0)
    border = np.zeros(cells.shape, dtype=bool)
    border[:, 1:] |= cells[:, 1:] != cells[:, :-1]
    border[1:, :] |= cells[1:, :] != cells[:-1, :]
    overlay[border & (merged | np.roll(merged, 1, axis=1) | np.roll(merged, 1, axis=0))] = (0, 0, 0, 0.9)

    image = fbank.detach().cpu().numpy().T  # (F, T), low bins at the bottom
    height, width = cells.shape
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, model.input_tdim / 80), 6), sharex=True)
    for ax in axes:
        ax.imshow(image, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
        ax.set_ylabel("mel bin")
    axes[1].imshow(overlay, origin="lower", aspect="auto", interpolation="nearest",
                   extent=(-0.5, width - 0.5, -0.5, height - 0.5))
    axes[1].set_xlim(-0.5, image.shape[1] - 0.5)
    axes[1].set_ylim(-0.5, image.shape[0] - 0.5)
    axes[1].set_xlabel("frame (10 ms)")
    patches = groups.size
    tokens = counts.size - NUM_PREFIX_TOKENS
    biggest = int(counts[NUM_PREFIX_TOKENS:].max()) if tokens else 0
    axes[0].set_title(title or "fbank")
    axes[1].set_title(f"{patches} patches → {tokens} tokens; {int((counts[NUM_PREFIX_TOKENS:] > 1).sum())} merged "
                      f"groups (largest {biggest} patches)")
    fig.tight_layout()
    return fig
