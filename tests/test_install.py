"""The install: the torch family is pinned to one release that imports together, and a broken pair is named."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from student.errors import StudentError
from student.torchaudio_ops import family_mismatch, installed_mismatch, release

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition("==")
        if name in ("torch", "torchaudio", "torchvision"):
            pins[name] = version
    return pins


def test_the_torch_family_is_pinned_exactly_to_one_release() -> None:
    pins = _pins()
    assert set(pins) == {"torch", "torchaudio", "torchvision"}, f"pyproject.toml must pin all three with ==: {pins}"
    for name, version in pins.items():
        assert "*" not in version and len(release(version)) == 3, f"{name}=={version} is not one exact release"
    assert family_mismatch(pins["torch"], pins["torchaudio"], pins["torchvision"]) is None


def test_the_installed_family_matches() -> None:
    assert installed_mismatch() is None, installed_mismatch()


def test_torchaudio_imports_beside_torch_in_a_fresh_interpreter() -> None:
    result = subprocess.run([sys.executable, "-c", "import torchaudio.compliance.kaldi, torchaudio.functional"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(("torch_version", "torchaudio_version", "torchvision_version", "named"), [
    ("2.11.0+cu130", "2.11.1", None, ["2.11.0+cu130", "2.11.1"]),
    ("2.15.0", "2.11.0", None, ["2.15.0", "2.11.0"]),
    ("2.11.0", "2.11.0", "0.29.1", ["0.29.1", "0.26"]),
])
def test_a_mismatched_pair_is_named_with_both_versions(torch_version: str, torchaudio_version: str,
                                                       torchvision_version: str | None, named: list[str]) -> None:
    problem = family_mismatch(torch_version, torchaudio_version, torchvision_version)
    assert problem is not None
    for version in named:
        assert version in problem


@pytest.mark.parametrize(("torch_version", "torchaudio_version", "torchvision_version"), [
    ("2.11.0+cu130", "2.11.0+cu130", "0.26.0+cu130"),
    ("2.11.0", "2.11.0+cpu", "0.26.0"),
    ("2.9.1", "2.9.1", "0.24.1"),
])
def test_a_matching_family_passes(torch_version: str, torchaudio_version: str, torchvision_version: str) -> None:
    assert family_mismatch(torch_version, torchaudio_version, torchvision_version) is None


def test_an_unimportable_torchaudio_is_a_clear_error_not_a_symbol_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The features path raises StudentError naming the versions before torchaudio is imported."""
    import student.torchaudio_ops as ops

    monkeypatch.setattr(ops, "_installed", lambda name: {"torchaudio": "2.11.1", "torchvision": None}.get(name))
    monkeypatch.setattr(ops.torch, "__version__", "2.11.0+cu130")
    ops._torchaudio.cache_clear()
    try:
        with pytest.raises(StudentError, match=r"torchaudio 2\.11\.1 .*torch 2\.11\.0\+cu130"):
            ops.resample(ops.torch.zeros(32000), 32000, 16000)
    finally:
        ops._torchaudio.cache_clear()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """CI checks what a user runs: the README's test command, with the same lock file."""
    readme = (ROOT / "README.md").read_text()
    ci_line = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_line in readme, f".ci/run's command is not the README's: {ci_line}"
    assert "-c configs/constraints.txt" in ci_line
    assert "pip install -c configs/constraints.txt -e . && dvc repro" in readme


def test_the_lock_pins_the_same_torch_family_as_pyproject() -> None:
    locked = {}
    for line in (ROOT / "configs" / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version and not line.startswith("#"):
            locked[name.lower()] = version
    for name, version in _pins().items():
        assert locked.get(name) == version, f"configs/constraints.txt has {name}=={locked.get(name)}, pyproject {version}"
