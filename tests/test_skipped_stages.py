"""Stages the real-AudioSet presets switch off (`demo.skip`, `finetune.skip`; `tune_r.skip` in the demo) still
write their DVC output: a folder with one README saying why, and nothing else, without starting torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CASES = {
    "demo": (["demo-corpus"], "--out-dir", "fat demo-corpus", "demo.skip: true"),
    "finetune": (["finetune-teacher", "--train", "absent.json", "--valid", "absent.json"], "--out",
                 "fat finetune-teacher", "finetune.skip: true"),
    "tune_r": (["tune-r", "--checkpoint", "absent.safetensors", "--datafile", "absent.json"], "--out-dir",
               "fat tune-r", "tune_r.skip: true"),
}
# the command, then: was torch imported? (a skipped stage must not pay for it)
PROBE = ("import sys; from pipeline.cli import main; code = main(sys.argv[1:]); "
         "print('torch loaded' if 'torch' in sys.modules else 'no torch'); sys.exit(code)")


@pytest.mark.parametrize("section", sorted(CASES))
def test_a_skipped_stage_writes_only_its_note_and_loads_no_torch(tmp_path: Path, section: str) -> None:
    args, out_flag, stage, key = CASES[section]
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", PROBE, *args, out_flag, str(out), "--skip"], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "no torch"
    assert [p.name for p in out.iterdir()] == ["README.md"]
    note = (out / "README.md").read_text()
    assert note.startswith(f"# {stage}: skipped") and key in note
    assert f"{stage}: skipped by its params; wrote {out / 'README.md'}" in done.stderr
