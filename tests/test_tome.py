"""Token merging: r = 0 exactness, merging invariants, proportional attention, r settings, FLOPs."""

from __future__ import annotations

import pytest
import torch
from timm.layers import Attention

from student import StudentError, create_ast
from student.flops import analytic_gflops
from student.tome import (
    bipartite_soft_matching, merge_weighted, parse_r, parse_r_spec, set_tome_r, tokens_per_layer,
)
from student.tome import _attention

FRAMES = 128  # tiny224 at 128 frames: 12 × 12 = 144 patches + 2 = 146 tokens


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_ast("tiny224", num_classes=10, input_tdim=FRAMES).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, FRAMES, 128, generator=torch.Generator().manual_seed(1))


def test_r_zero_is_bit_identical_to_the_unmerged_model_after_merging_was_used(model, x) -> None:
    with torch.no_grad():
        plain = model(x)
        set_tome_r(model, 8)
        merged = model(x)
        set_tome_r(model, [0] * 12)
        again = model(x)
        set_tome_r(model, 0)
        zero = model(x)
    assert not torch.allclose(merged, plain)
    assert torch.equal(again, plain) and torch.equal(zero, plain)


@pytest.mark.parametrize("r", [8, 16, [0, 0, 12, 12, 12], (16, -1.0), 300])
def test_merging_invariants(model, x, r) -> None:
    set_tome_r(model, r)
    with torch.no_grad():
        logits, state = model.forward_traced(x)
    set_tome_r(model, 0)
    assert torch.isfinite(logits).all() and logits.shape == (3, 10)
    assert state.tokens == tokens_per_layer(model, r)
    tokens = state.tokens[-1]
    assert state.size.shape == (3, tokens, 1)
    # every input token is held by exactly one output token; sizes count them
    assert torch.equal(state.size.sum(dim=(1, 2)), torch.full((3,), 146.0))
    assert torch.equal(state.size[:, 2:].sum(dim=(1, 2)), torch.full((3,), 144.0))  # patches
    for b in range(3):
        assert torch.equal(torch.bincount(state.owner[b], minlength=tokens).float(), state.size[b, :, 0])
    # class and distillation tokens are never merged and stay first and second
    assert torch.equal(state.owner[:, :2], torch.tensor([[0, 1]] * 3))
    assert torch.equal(state.size[:, :2, 0], torch.ones(3, 2))
    assert not (state.owner[:, 2:] < 2).any()


def test_merge_count_is_capped_at_half_the_unprotected_tokens() -> None:
    assert tokens_per_layer(146, 1000, num_layers=3) == [74, 38, 20]
    assert tokens_per_layer(1214, 16, num_layers=12)[-1] == 1022
    assert tokens_per_layer(1214, (16, -1.0), num_layers=12) == [1182, 1153, 1127, 1104, 1084, 1067, 1053, 1042,
                                                                 1034, 1029, 1027, 1027]
    assert tokens_per_layer(1214, 100, num_layers=12)[-2:] == [114, 58]


def test_r_can_change_between_calls_without_rebuilding(model, x) -> None:
    results = {}
    with torch.no_grad():
        for r in (16, 8, 16, 0, 8):
            set_tome_r(model, r)
            logits, state = model.forward_traced(x)
            results.setdefault(r, []).append((logits, state.tokens if state else None))
    set_tome_r(model, 0)
    assert torch.equal(results[16][0][0], results[16][1][0]) and torch.equal(results[8][0][0], results[8][1][0])
    assert results[16][0][1] == tokens_per_layer(model, 16) and results[8][0][1] == tokens_per_layer(model, 8)
    assert results[0][0][1] is None  # r = 0: plain blocks, no merge state at all


def test_matching_merges_the_most_similar_pair_as_a_size_weighted_mean() -> None:
    # tokens: 0 cls, 1 dist, then 2..7; tokens 4 (A) and 5 (B) point the same way, the rest are orthogonal
    metric = torch.eye(8)[None].clone()
    metric[0, 4] = metric[0, 5]
    matching = bipartite_soft_matching(metric, r=1)
    x = torch.arange(8.0).reshape(1, 8, 1)
    size = torch.tensor([1.0, 1, 1, 1, 3, 1, 1, 1]).reshape(1, 8, 1)
    merged, new_size = merge_weighted(matching, x, size)
    # A tokens kept (0, 2, 6), B tokens (1, 3, 5←4, 7), with cls first and dist second
    assert merged.flatten().tolist() == [0.0, 1.0, 2.0, 6.0, 3.0, (3 * 4 + 5) / 4, 7.0]
    assert new_size.flatten().tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 4.0, 1.0]
    assert matching.new_positions(8).tolist() == [[0, 1, 2, 4, 5, 5, 3, 6]]


def test_matching_never_moves_the_class_token_or_merges_into_the_distillation_token() -> None:
    metric = torch.ones(2, 10, 4)  # all equally similar: protection alone decides
    metric[:, 0] += 1e-3
    matching = bipartite_soft_matching(metric, r=4)
    assert not (matching.sources == 0).any()  # A0 = cls never a source
    assert not (matching.targets == 0).any()  # B0 = dist never a target
    assert bipartite_soft_matching(metric, r=0) is None


def test_proportional_attention_equals_attention_over_duplicated_tokens() -> None:
    """A token of size 2 must get the attention mass of two identical tokens: the point of +log(size)."""
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, qkv_bias=True).eval()
    tokens = torch.randn(1, 4, 16)
    duplicated = torch.cat((tokens, tokens[:, 3:]), dim=1)  # token 3 twice
    bias = torch.tensor([1.0, 1.0, 1.0, 2.0]).log()[None, None, None, :]
    with torch.no_grad():
        out_dup, _ = _attention(attn, duplicated, None)
        out_prop, metric = _attention(attn, tokens, bias)
        attn.fused_attn = False  # the manual softmax path gives the same
        out_manual, _ = _attention(attn, tokens, bias)
    assert torch.allclose(out_prop, out_dup[:, :4], atol=1e-6)
    assert torch.allclose(out_manual, out_prop, atol=1e-6)
    assert metric.shape == (1, 4, 8)  # keys, averaged over heads


def test_without_bias_the_merge_attention_is_timms_attention() -> None:
    torch.manual_seed(0)
    attn = Attention(16, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        assert torch.equal(_attention(attn, x, None)[0], attn(x))


def test_bf16_autocast_and_training_backward_work_with_merging(model, x) -> None:
    set_tome_r(model, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    model.train()
    try:
        loss = model(x).pow(2).mean()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert model.v.blocks[11].mlp.fc2.weight.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
        set_tome_r(model, 0)


def test_r_settings_are_parsed_and_bad_ones_refused() -> None:
    assert parse_r(4, 3) == [3, 3, 3, 3]
    assert parse_r(4, [5, 1]) == [5, 1, 0, 0]
    assert parse_r(12, (16, -1.0)) == [32, 29, 26, 23, 20, 17, 14, 11, 8, 5, 2, 0]
    assert parse_r(12, (16, 0.0)) == [16] * 12
    assert parse_r_spec("16") == 16 and parse_r_spec("8,8,4") == [8, 8, 4] and parse_r_spec("16:-1") == (16, -1.0)
    for bad in (-1, [1] * 13, [2, -3], 2.5, True, "16", (16, -2.0)):
        with pytest.raises(StudentError):
            parse_r(12, bad)
    with pytest.raises(StudentError, match="cannot read r 'x'"):
        parse_r_spec("x")


def test_set_tome_r_refuses_models_it_cannot_merge() -> None:
    with pytest.raises(StudentError, match="no transformer blocks"):
        set_tome_r(torch.nn.Linear(2, 2), 8)


def test_analytic_flops_shrink_with_r_and_match_the_formula(model) -> None:
    d, n, c = 192, 146, 10
    block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * 4 * d
    expected = 2 * (144 * d * 256 + 12 * block + d * c) / 1e9
    assert analytic_gflops(model, 0) == pytest.approx(expected)
    flops = [analytic_gflops(model, r) for r in (0, 4, 8, 16)]
    assert flops == sorted(flops, reverse=True) and len(set(flops)) == 4


def test_gradient_checkpointing_gives_the_same_gradients_with_merging() -> None:
    torch.manual_seed(0)
    model = create_ast("tiny224", num_classes=4, input_tdim=64)  # dropout-free: recomputation is exact
    x = torch.randn(2, 64, 128)
    set_tome_r(model, 6)
    grads = []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        model(x).square().sum().backward()
        grads.append(model.v.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    model.set_grad_checkpointing(True)
    _, state = model.forward_traced(x)  # tracing is never checkpointed: owners stay right
    assert state.tokens == tokens_per_layer(model, 6)
    assert torch.equal(torch.bincount(state.owner[0]).float(), state.size[0, :, 0].detach())
