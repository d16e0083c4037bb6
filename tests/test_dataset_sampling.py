"""Balanced weights as AST computes them, and the resumable distributed sampler."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import FatError
from pipeline.sampling import EpochSampler, ShardSampler, balanced_weights


def csr(classes: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(c) for c in classes])
    return np.array([k for c in classes for k in c], dtype=np.int32), offsets


def test_balanced_weights_follow_ast_formula():
    classes = [[0], [0, 1], [2], [], [0, 2]]
    flat, offsets = csr(classes)
    weights = balanced_weights(flat, offsets, num_classes=4)
    per_class = {0: 1000 / 3.01, 1: 1000 / 1.01, 2: 1000 / 2.01}
    expected = [per_class[0], per_class[0] + per_class[1], per_class[2], 0.0, per_class[0] + per_class[2]]
    np.testing.assert_allclose(weights, expected, rtol=1e-12)


def test_weighted_draw_favours_rare_classes_and_covers_them():
    # 90 clips of class 0, 10 of class 1: balanced sampling draws both classes about equally.
    flat, offsets = csr([[0]] * 90 + [[1]] * 10)
    sampler = EpochSampler(100, weights=balanced_weights(flat, offsets, 2), epoch_size=4000, seed=3)
    drawn = np.array([index for index, _ in sampler])
    assert len(drawn) == 4000
    assert 0.4 < (drawn >= 90).mean() < 0.6


def test_ranks_split_one_global_draw_without_talking():
    single = list(EpochSampler(50, seed=1))
    shares = [list(EpochSampler(50, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(share) == 17 for share in shares)  # ceil(50 / 3), wrapped around like DistributedSampler
    interleaved = [shares[k % 3][k // 3] for k in range(50)]
    assert interleaved == single
    assert sorted(index for index, _ in single) == list(range(50))


def test_epochs_differ_and_skip_resumes_the_same_sequence():
    sampler = EpochSampler(40, seed=7, rank=1, world_size=2)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) != full
    resumed = EpochSampler(40, seed=7, rank=1, world_size=2)
    resumed.load_state_dict({**sampler.state_dict(), "epoch": 2, "skip": 6})
    assert len(resumed) == len(full) - 6
    assert list(resumed) == full[6:]


def test_resume_refuses_a_different_setup():
    state = EpochSampler(40, seed=7).state_dict()
    with pytest.raises(FatError, match="world_size"):
        EpochSampler(40, seed=7, world_size=2).load_state_dict(state)
    with pytest.raises(FatError, match="num_items"):
        EpochSampler(41, seed=7).load_state_dict(state)


def test_bad_weights_are_refused():
    with pytest.raises(FatError, match="not all zero"):
        EpochSampler(3, weights=[0, 0, 0])
    with pytest.raises(FatError, match="3 clips"):
        EpochSampler(3, weights=[1, 2])


def test_shard_sampler_covers_each_clip_once():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))
