"""Suite-wide checks that must run before any test module is imported."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Stop at once, with the versions named, when torch and torchaudio cannot work together.

    Without this, a mismatched pair shows up as collection errors (an undefined symbol in
    libtorchaudio.so) or a crash deep inside a training test.
    """
    from student.torchaudio_ops import installed_mismatch

    problem = installed_mismatch()
    if problem:
        pytest.exit(f"broken torch install: {problem}", returncode=4)


@pytest.fixture(autouse=True, scope="module")
def keep_torch_threads():
    """Give each module back torch's thread count: an in-process `fat train --threads 1` sets it globally."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
