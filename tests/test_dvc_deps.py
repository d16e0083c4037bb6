"""Every DVC stage depends on all the project code its command runs.

DVC reruns a stage when one of its listed dependencies changes, and `dvc.yaml` lists a stage's
code by hand: a module it forgets (say, the one that reads teacher rows) can change without
retraining anything. This test computes, for each stage of both pipelines, the files its `fat`
command can import — a static closure over every `import` in the project's packages, those
inside functions included (the commands import their heavy parts inside `run`) — and fails
when a file of that closure is not covered by one of the stage's dependencies (the file itself
or a folder above it). New modules are found, not listed here, so the check keeps up with the
code. Not followed: `importlib` calls with computed names (`fat`'s parser imports every command
module to register it; only the stage's own command runs) and `if TYPE_CHECKING:` blocks, which
never run.
"""

from __future__ import annotations

import argparse
import ast
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "teacher", "student")
# each pipeline definition → the params file its `${...}` come from
PIPELINES = {"dvc.yaml": "params.yaml", "pipelines/speechcommands.yaml": "configs/speechcommands.yaml",
             "pipelines/esc50.yaml": "configs/esc50.yaml"}


# --------------------------------------------------------------------------- the import closure


def module_files(root: Path, module: str) -> list[Path]:
    """The files Python runs to import `module` from the project: the module and every package
    `__init__.py` above it; empty when it is not the project's (numpy, torch, a class name)."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return []
    files: list[Path] = []
    for depth in range(1, len(parts) + 1):
        base = root.joinpath(*parts[:depth])
        if (base / "__init__.py").is_file():
            files.append(base / "__init__.py")
        elif base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py"))
        else:
            break  # `from pipeline.store import LogitsStore`: LogitsStore is no module
    return files


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(root: Path, path: Path) -> set[str]:
    """Every module name an import statement of `path` may load, at any depth of the file."""
    module = _module_name(root, path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return names


def import_closure(root: Path, modules: list[str]) -> set[str]:
    """The project files (paths relative to `root`) that importing `modules` can run. A file
    without a statement (an empty `__init__.py`) runs nothing and is left out: DVC warns about
    an empty dependency on every run. Once it holds code, it is in."""
    todo = [path for name in modules for path in module_files(root, name)]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(root, path):
            todo += [found for found in module_files(root, name) if found not in seen]
    return {path.relative_to(root).as_posix() for path in seen if ast.parse(path.read_text(encoding="utf-8")).body}


def uncovered(files: set[str], deps: list[str]) -> list[str]:
    """The files that no dependency covers, itself or as a folder above it."""
    prefixes = [dep.rstrip("/") for dep in deps]
    return sorted(f for f in files if not any(f == dep or f.startswith(dep + "/") for dep in prefixes))


# --------------------------------------------------------------------------- stages as DVC reads them


def command_module(argv: list[str]) -> str:
    """The module whose `run` a `fat` command line calls, asked of `fat`'s own parser."""
    parser: argparse.ArgumentParser = build_parser()
    for token in argv:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if token.startswith("-") or not actions or token not in actions[0].choices:
            break
        parser = actions[0].choices[token]
        if parser.get_default("func") is not None:
            return parser.get_default("func").__module__
    raise AssertionError(f"no `fat` command in {argv}")


def fat_argv(command: str) -> list[str]:
    """`fat train ...` or `torchrun ... -m pipeline.cli train ...` → the arguments after `fat`."""
    tokens = shlex.split(command)
    if tokens and Path(tokens[0]).name == "fat":
        return tokens[1:]
    if "pipeline.cli" in tokens:
        return tokens[tokens.index("pipeline.cli") + 1:]
    raise AssertionError(f"not a `fat` command, so its code cannot be traced: {command!r}")


def load_stages(tmp_path: Path, pipeline: str, params: str) -> dict[str, tuple[list[str], list[str]]]:
    """stage → (its commands, its file and folder dependencies), resolved by DVC itself from a
    copy of the pipeline at the top of a bare repository (as it runs there)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    repo = tmp_path / Path(pipeline).stem
    (repo / ".dvc").mkdir(parents=True)
    shutil.copy2(ROOT / pipeline, repo / "dvc.yaml")
    shutil.copy2(ROOT / params, repo / "params.yaml")
    shutil.copy2(ROOT / ".dvc/config", repo / ".dvc/config")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    stages: dict[str, tuple[list[str], list[str]]] = {}
    with Repo(str(repo)) as dvc_repo:
        for stage in dvc_repo.index.stages:
            commands = stage.cmd if isinstance(stage.cmd, list) else [stage.cmd]
            deps = [os.path.relpath(dep.fs_path, dvc_repo.root_dir).replace(os.sep, "/")
                    for dep in stage.deps if not isinstance(dep, ParamsDependency)]
            stages[stage.name] = (commands, deps)
    return stages


# --------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_every_stage_depends_on_the_code_it_runs(tmp_path: Path, pipeline: str) -> None:
    stages = load_stages(tmp_path, pipeline, PIPELINES[pipeline])
    assert stages, pipeline
    missing: dict[str, list[str]] = {}
    for name, (commands, deps) in stages.items():
        modules = ["pipeline.cli", *(command_module(fat_argv(command)) for command in commands)]
        closure = import_closure(ROOT, modules)
        assert f"pipeline/commands/{modules[1].rsplit('.', 1)[1]}.py" in closure  # the trace found the command
        if gaps := uncovered(closure, deps):
            missing[name] = gaps
    assert not missing, (f"{pipeline}: stages that would not rerun when this code changes; add each file "
                         f"(or its folder) to the stage's deps:\n"
                         + "\n".join(f"  {name}: {', '.join(files)}" for name, files in missing.items()))


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_every_code_dependency_exists(tmp_path: Path, pipeline: str) -> None:
    """A dep on a moved or deleted module would make `dvc repro` fail on a missing file."""
    for name, (_, deps) in load_stages(tmp_path, pipeline, PIPELINES[pipeline]).items():
        for dep in deps:
            if dep.split("/")[0] in PACKAGES:
                assert (ROOT / dep).exists(), f"{pipeline}: {name} depends on {dep}, which does not exist"


def test_closure_follows_every_kind_of_import(tmp_path: Path) -> None:
    """Imports inside functions, relative imports and package __init__ files are followed;
    TYPE_CHECKING-only imports and other projects' modules are not."""
    files = {
        "pipeline/__init__.py": "__version__ = '0'\n",
        "pipeline/commands/__init__.py": "# runs nothing\n",
        "pipeline/commands/go.py": "from pipeline.cli import add\n\ndef run():\n    from pipeline.work import step\n",
        "pipeline/cli.py": "import argparse\nfrom pipeline import errors\n",
        "pipeline/errors.py": "class FatError(Exception): ...\n",
        "pipeline/work/__init__.py": "from .step import step\n",
        "pipeline/work/step.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline import typed\n"
                                 "else:\n    import numpy\nfrom ..rows import Row\n",
        "pipeline/rows.py": "import student.model\n",
        "pipeline/typed.py": "T = int\n",
        "pipeline/unused.py": "U = int\n",
        "student/__init__.py": "from student.model import M\n",
        "student/model.py": "M = int\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    closure = import_closure(tmp_path, ["pipeline.cli", "pipeline.commands.go"])
    assert closure == {"pipeline/__init__.py", "pipeline/commands/go.py", "pipeline/cli.py", "pipeline/errors.py",
                       "pipeline/work/__init__.py", "pipeline/work/step.py", "pipeline/rows.py",
                       "student/__init__.py", "student/model.py"}  # commands/__init__.py runs nothing
    assert uncovered(closure, ["pipeline", "student/model.py"]) == ["student/__init__.py"]
    assert uncovered(closure, ["pipeline/work", "student"]) == [
        "pipeline/__init__.py", "pipeline/cli.py", "pipeline/commands/go.py", "pipeline/errors.py", "pipeline/rows.py"]
    assert uncovered({"pipeline/storex.py"}, ["pipeline/store"]) == ["pipeline/storex.py"]  # a prefix is no folder


def test_a_forgotten_module_is_reported(tmp_path: Path) -> None:
    """The real train stage without the logits store's reader fails the check, naming the file."""
    stages = load_stages(tmp_path, "dvc.yaml", "params.yaml")
    commands, deps = stages["train"]
    closure = import_closure(ROOT, ["pipeline.cli", command_module(fat_argv(commands[0]))])
    assert "pipeline/store.py" in closure
    without = uncovered(closure, [dep for dep in deps if dep != "pipeline/store.py"])
    assert set(without) - set(uncovered(closure, deps)) == {"pipeline/store.py"}
