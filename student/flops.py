"""Analytic cost of an AST forward for a given merge setting (multiply-adds × 2, per clip).

Counts the matrix products that dominate a ViT: patch projection, QKV, attention scores and
weighted sum, output projection, MLP, the bipartite matching scores and the head. Norms,
softmax, GELU and the merge gathers are left out (a few per cent at most).
"""

from __future__ import annotations

from torch import nn

from student.tome import RSpec, parse_r

PATCH_AREA = 16 * 16


def block_macs(tokens_in: int, r: int, dim: int, num_heads: int, mlp_ratio: float = 4.0,
               protected: int = 2) -> tuple[int, int]:
    """(multiply-adds, tokens out) of one block that merges r tokens between attention and MLP."""
    n = tokens_in
    attention = n * dim * 3 * dim + 2 * n * n * dim + n * dim * dim
    r = min(r, (n - protected) // 2)
    matching = 0
    if r > 0:
        matching = ((n + 1) // 2) * (n // 2) * (dim // num_heads)
        n -= r
    mlp = 2 * n * dim * int(dim * mlp_ratio)
    return attention + matching + mlp, n


def analytic_gflops(model: nn.Module, r: RSpec = 0) -> float:
    """GFLOPs (2 × multiply-adds) per clip of an ASTModel at merge setting r."""
    dim, heads = model.embed_dim, model.num_heads
    macs = model.num_patches * dim * PATCH_AREA
    tokens = model.num_tokens
    for value in parse_r(model.depth, r):
        block, tokens = block_macs(tokens, value, dim, heads)
        macs += block
    macs += dim * model.num_classes
    return 2 * macs / 1e9
