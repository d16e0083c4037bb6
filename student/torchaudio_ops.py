"""The project's one door to torchaudio: the two functions it uses, and a clear error when the pair is broken.

torchaudio ships compiled code built against one exact torch release; a torchaudio of another
release fails at import with an undefined symbol deep inside `libtorchaudio.so`. pip does not
prevent such a pair (torchaudio declares `torch` without a version), so the versions are read
from the installed metadata, compared, and named in the error before torchaudio is imported.

What the project takes from torchaudio, and nothing else (docs/architecture.md says the same):
- `torchaudio.compliance.kaldi.fbank`: AST's features (the released AST weights need them);
- `torchaudio.functional.resample`: band-limited sinc resampling (32 kHz → 16 kHz, any rate).
Leaving torchaudio means re-implementing these two here.
"""

from __future__ import annotations

import functools
import re
from importlib import metadata
from types import ModuleType

import torch

from student.errors import StudentError

# torchvision 0.N pairs with torch 2.(N − 15): 0.26 ↔ 2.11, 0.29 ↔ 2.14.
TORCHVISION_MINOR_OFFSET = 15


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: '2.11.0+cu130' → (2, 11, 0)."""
    match = re.match(r"(\d+(?:\.\d+)*)", version)
    if not match:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def family_mismatch(torch_version: str, torchaudio_version: str | None,
                    torchvision_version: str | None = None) -> str | None:
    """Why these torch / torchaudio / torchvision versions cannot be used together, or None when they can."""
    problems = []
    base = release(torch_version)[:3]
    if torchaudio_version is not None and release(torchaudio_version)[:3] != base:
        problems.append(f"torchaudio {torchaudio_version} is built for another torch than torch {torch_version} "
                        f"(they must be the same release, e.g. torch {'.'.join(map(str, base))} + torchaudio "
                        f"{'.'.join(map(str, base))})")
    if torchvision_version is not None:
        vision = release(torchvision_version)
        expected_minor = base[1] + TORCHVISION_MINOR_OFFSET
        if vision[:2] != (0, expected_minor):
            problems.append(f"torchvision {torchvision_version} does not belong to torch {torch_version} "
                            f"(expected torchvision 0.{expected_minor}.x)")
    if not problems:
        return None
    return ("; ".join(problems) + ". Reinstall the pinned trio: pip install -e . (pyproject.toml pins them), "
            "or pip install torch==X torchaudio==X torchvision==Y of one release")


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def installed_mismatch() -> str | None:
    """`family_mismatch` for what is installed in this environment (reads metadata, imports nothing)."""
    return family_mismatch(torch.__version__, _installed("torchaudio"), _installed("torchvision"))


@functools.cache
def _torchaudio() -> ModuleType:
    problem = installed_mismatch()
    if problem:
        raise StudentError(problem)
    try:
        import torchaudio.compliance.kaldi
        import torchaudio.functional
    except (ImportError, OSError) as exc:
        raise StudentError(f"torchaudio {_installed('torchaudio')} does not import beside torch "
                           f"{torch.__version__}: {exc}") from exc
    return torchaudio


def kaldi_fbank(wave: torch.Tensor, **options: object) -> torch.Tensor:
    """`torchaudio.compliance.kaldi.fbank` (wave: (1, samples)), options passed as they are."""
    return _torchaudio().compliance.kaldi.fbank(wave, **options)


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited sinc resampling along the last axis (`torchaudio.functional.resample`'s defaults)."""
    return _torchaudio().functional.resample(wave, orig_rate, new_rate)
