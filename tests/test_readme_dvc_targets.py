"""The DVC commands the README gives name real outputs of dvc.yaml.

`dvc checkout data/audio` (in the README) failed with "does not exist as an output": each split's
audio folder is its own output. The outputs here are resolved by DVC itself from a copy of the
pipeline, so a renamed folder or a new split layout fails this test, not a user's command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dvc_outputs(tmp_path: Path) -> set[str]:
    """Every output path of dvc.yaml with params.yaml's values, relative to the repository root."""
    from dvc.repo import Repo

    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    shutil.copy2(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy2(ROOT / "params.yaml", repo / "params.yaml")
    shutil.copy2(ROOT / ".dvc/config", repo / ".dvc/config")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    with Repo(str(repo)) as dvc_repo:
        return {os.path.relpath(out.fs_path, dvc_repo.root_dir).replace(os.sep, "/")
                for stage in dvc_repo.index.stages for out in stage.outs}


def test_every_dvc_checkout_target_in_the_readme_is_an_output(tmp_path: Path) -> None:
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    commands = re.findall(r"`dvc checkout([^`]*)`", readme)
    targets = [token for command in commands for token in command.split() if not token.startswith("-")]
    assert targets, "the README names no `dvc checkout` target any more: drop or update this test"
    outputs = dvc_outputs(tmp_path)
    assert "data/audio/eval" in outputs, sorted(outputs)
    assert [target for target in targets if target.rstrip("/") not in outputs] == [], sorted(outputs)
