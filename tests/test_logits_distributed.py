"""`fat logits` under torchrun: two CPU ranks (gloo) share the batches and rank 0 merges their
work into one store equal to a single process's."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from pipeline.cli import main
from tests.test_logits import logits_args, make_corpus, read_store


def test_two_gloo_ranks_write_the_same_store_as_one_process(tmp_path):
    corpus = make_corpus(tmp_path, {"train": 9, "eval": 4})
    sharded = tmp_path / "sharded.h5"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               "-m", "pipeline.cli", *logits_args([corpus["train"], corpus["eval"]], sharded, "--workers", "0")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "13 clips requested" in done.stderr and "2 ranks" in done.stderr
    single = tmp_path / "single.h5"
    assert main(logits_args([corpus["train"], corpus["eval"]], single)) == 0
    sharded_ids, sharded_values, attrs = read_store(sharded)
    single_ids, single_values, _ = read_store(single)
    assert sharded_ids == single_ids and attrs["complete"]
    np.testing.assert_allclose(sharded_values, single_values, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "sharded.h5.partial").exists()
