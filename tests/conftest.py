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
