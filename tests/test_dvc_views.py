"""DVC's own views of the demo, and the README's demo figures, from one run of the full demo.

The README shows the demo's results table and the commands that look at results (`dvc metrics
show`, `dvc exp show ...`, `dvc plots show`, `dvc plots diff ...`). One module-scoped fixture
runs the unshrunk demo (params.yaml as shipped) under `dvc repro` in a fresh clone, commits it
and runs a one-epoch training experiment through DVC's queue, as the README's sweep does. Then:
- every such command found in the README runs there without a DVC warning or error, and the
  README's `dvc exp show --only-changed ...` fits a wide terminal;
- no metric name is shared by two metrics files, a param or a dependency (DVC's table keys
  columns by name: `teacher` once crashed `dvc exp show --keep`);
- the README's table is the run's eval.md: mAP and mAUC within 0.01, d′ within 0.05 (float sums
  differ a little between CPU models and thread counts), GFLOPs, tokens and clip counts
  exactly; clips/s is this machine's timing and is not compared.
The fixture takes about 3 to 4 minutes on 2 cores.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_pipeline_dvc import ROOT, _commit, _dvc, _dvc_complaints, _make_clone, _ran

README = ROOT / "README.md"
VIEWS = ("dvc metrics show", "dvc exp show", "dvc plots show", "dvc plots diff")
# The unshrunk demo plus a queued experiment: about 6.5 minutes on 2 cores, too much for CI's 20 (pyproject).
pytestmark = pytest.mark.heavy

TERMINAL_COLUMNS = 132  # a wide terminal; DVC's experiment, time and model-hash columns take about 90
TOLERANCE = {"mAP": 0.01, "mAUC": 0.01, "d'": 0.05}
EXACT = ("model", "r", "GFLOPs/clip", "tokens in→out", "clips")


@dataclass
class DemoRun:
    repo: Path
    env: dict[str, str]
    eval_md: str                       # the committed run's, before the experiment changed the workspace
    eval_json: dict
    validated: dict[str, dict]         # split → its validate.json
    experiment: str                    # what `dvc exp run` printed


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    repo = tmp_path_factory.mktemp("views") / "clone"
    env = _make_clone(repo, small=False)
    first = _dvc(repo, env, "repro")
    assert not _dvc_complaints(first), first
    _commit(repo, env, "demo run")
    run = DemoRun(
        repo=repo, env=env, eval_md=(repo / "reports/eval.md").read_text(encoding="utf-8"),
        eval_json=json.loads((repo / "reports/eval.json").read_text()),
        validated={split: json.loads((repo / f"data/reports/{split}.validate.json").read_text())
                   for split in ("balanced_train", "eval")},
        experiment=_queued_experiment(repo, env, "one-epoch", "train.epochs=1"))
    assert _ran(run.experiment) == {"train", "evaluate", "tune_r"}, run.experiment  # tune_r: skipped in the demo
    return run


def _queued_experiment(repo: Path, env: dict[str, str], name: str, *params: str) -> str:
    """Run one experiment as the README's sweep runs them (`dvc exp run --queue`, `dvc queue start`);
    returns its log. A queued run gets DVC's State and Executor columns, which a plain `dvc exp run` lacks."""
    _dvc(repo, env, "exp", "run", "--queue", *(arg for param in params for arg in ("-S", param)), "-n", name)
    _dvc(repo, env, "queue", "start", "-j", "1")
    deadline = time.monotonic() + 900
    while re.search(r"\b(Queued|Running)\b", _dvc(repo, env, "queue", "status")):
        assert time.monotonic() < deadline, "the queued experiment did not finish in 15 minutes"
        time.sleep(2)
    status = _dvc(repo, env, "queue", "status")
    assert re.search(rf"\b{name}\b.*\bSuccess\b", status), status
    return _dvc(repo, env, "queue", "logs", name)


def _shell(run: DemoRun, command: str) -> tuple[int, str]:
    result = subprocess.run(["bash", "-c", command], cwd=run.repo, env=run.env, capture_output=True, text=True,
                            timeout=600)
    return result.returncode, result.stdout + result.stderr


# --------------------------------------------------------------------------- views


def readme_views() -> list[str]:
    """The DVC view commands of the README's bash blocks, without their trailing comments."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command.startswith(VIEWS):
                commands.append(command)
    return commands


def test_the_readme_shows_every_kind_of_view() -> None:
    commands = readme_views()
    assert all(any(c.startswith(kind) for c in commands) for kind in VIEWS), commands


def test_every_readme_view_runs_clean_on_the_demo(demo: DemoRun) -> None:
    """Not one DVC warning: the experiment and every README view (no other pipeline's missing
    outputs, no unloadable metrics or plots, no column clash)."""
    assert not _dvc_complaints(demo.experiment), demo.experiment
    assert _dvc(demo.repo, demo.env, "status").strip() == "Data and pipelines are up to date."
    for command in readme_views():
        code, output = _shell(demo, command)
        assert code == 0 and not _dvc_complaints(output), f"{command}:\n{output[-4000:]}"
    if (demo.repo / "dvc_plots").exists():  # what `dvc plots` writes is ignored by git
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=demo.repo,
                                env=demo.env, capture_output=True, text=True, check=True).stdout
        assert "dvc_plots" not in status, status


def test_only_changed_fits_a_terminal(demo: DemoRun) -> None:
    """What a queued train.* experiment changed, in one screen width, with the README's command: its
    param, its state and mAP per r (the executor and the dependencies' hashes dropped)."""
    (command,) = [c for c in readme_views() if c.startswith("dvc exp show --only-changed")]
    code, shown = _shell(demo, command)
    lines = [line.rstrip() for line in shown.splitlines() if line.strip()]
    assert code == 0 and max(len(line) for line in lines) <= TERMINAL_COLUMNS, "\n".join(lines)
    header = lines[1]
    assert "train.epochs" in header and "r0.mAP" in header and "State" in header, header
    assert "teacher.mAP" not in header and "Executor" not in header and "models/" not in header, header


def _columns(data: dict, prefix: str = "") -> tuple[set[str], set[str]]:
    """(the column names DVC makes of a nested file: its leaves, dotted; the groups above them)."""
    leaves: set[str] = set()
    groups: set[str] = set()
    for key, value in data.items():
        if isinstance(value, dict):
            groups.add(f"{prefix}{key}")
            inner_leaves, inner_groups = _columns(value, f"{prefix}{key}.")
            leaves |= inner_leaves
            groups |= inner_groups
        else:
            leaves.add(f"{prefix}{key}")
    return leaves, groups


def test_metric_names_are_unique_columns(demo: DemoRun) -> None:
    """A column name is one thing: not a metric of two files, not a value in one file and a group
    in another (the old `teacher` string beside `teacher.mAP`), not also a param or a dependency."""
    rows = json.loads(_dvc(demo.repo, demo.env, "exp", "show", "--json"))
    revs = list(rows) + [rev for row in rows for exp in row.get("experiments") or [] for rev in exp["revs"]]
    for rev in revs:
        data = rev["data"]
        leaves_of: dict[str, set[str]] = {}
        groups_of: dict[str, set[str]] = {}
        for path, metrics in data["metrics"].items():
            assert "error" not in metrics, (rev["rev"], path, metrics)
            leaves_of[path], groups_of[path] = _columns(metrics["data"])
        for path, leaves in leaves_of.items():
            for other in leaves_of:
                if other != path:
                    assert not leaves & (leaves_of[other] | groups_of[other]), (path, other)
        metric_names = set().union(*leaves_of.values())
        params = set().union(*(_columns(values["data"])[0] for values in data["params"].values()))
        clashes = metric_names & (params | set(data["deps"]))
        assert not clashes, f"metric names that are also params or dependencies: {clashes}"
    assert set(rows[0]["data"]["metrics"]) == {"reports/metrics.json"}  # only the figures a person compares


# --------------------------------------------------------------------------- README figures


def _table(text: str) -> list[dict[str, str]]:
    """The first Markdown table of `text` whose header starts with `| model | r |`."""
    lines = text[text.index("| model | r |"):].splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))))
    return rows


def _demo_results() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("Demo results (")
    return text[start:text.index("\n## ", start)]


def test_readme_demo_figures_are_the_demo_run(demo: DemoRun) -> None:
    section = _demo_results()
    assert re.search(r"commit `[0-9a-f]{7,40}`", section), "the figures must name the commit they come from"
    readme, run = _table(section), _table(demo.eval_md)
    assert [(row["model"], row["r"]) for row in readme] == [(row["model"], row["r"]) for row in run]
    for ours, theirs in zip(readme, run):
        for column in EXACT:
            assert ours[column] == theirs[column], (column, ours, theirs)
        for column, tolerance in TOLERANCE.items():
            assert abs(float(ours[column]) - float(theirs[column])) <= tolerance, (column, ours, theirs)
    listed = sum(v["clips"] for v in demo.validated.values())
    passed = [demo.validated[split]["passed"] for split in ("balanced_train", "eval")]
    counts = re.search(r"(\d+)\s+of\s+(\d+)\s+clips\s+pass\s+validation,\s+(\d+)\s+train\s+/\s+(\d+)\s+eval", section)
    assert counts and [int(g) for g in counts.groups()] == [sum(passed), listed, *passed], counts
    chance = re.search(r"random\s+ranking\s+scores\s+mAP\s+≈\s+([0-9.]+)", section)
    assert chance and abs(float(chance.group(1)) - demo.eval_json["eval"]["chance_mAP"]) < 0.0005


# --------------------------------------------------------------------------- the chart `dvc plots show` shows


def _edges_are_blank(png: Path) -> bool:
    """Nothing drawn on the outermost pixels: a title or label cut by the figure's edge touches them."""
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))[..., :3]
    edges = [pixels[:2], pixels[-2:], pixels[:, :2], pixels[:, -2:]]
    return all(float(edge.min()) > 0.9 for edge in edges)


def test_demo_tradeoff_chart_is_inside_the_figure(demo: DemoRun) -> None:
    assert _edges_are_blank(demo.repo / "reports/tradeoff.png")


def test_long_titles_and_labels_stay_inside_the_figure(tmp_path: Path) -> None:
    """A long checkpoint path and device name wrap; the fastest point's label goes to its left."""
    from pipeline.evaluate.plot import tradeoff_plot
    from pipeline.evaluate.rows import EvalRow

    rows = [EvalRow("student", "student", str(r), {"mAP": 0.5 + r / 100}, 10, clips_per_second=50.0 + 20 * r,
                    gflops=1.0, tokens_in=98, tokens_out=98 - 10 * r) for r in (0, 2, 4, 8)]
    rows.append(EvalRow("models/stride12/a-rather-long-name", "compare", "0", {"mAP": 0.55}, 10,
                        clips_per_second=215.0))
    title = ("mAP against throughput: models/experiments/2026-12-01/very-long-experiment-name/student.pt\n"
             "NVIDIA H200 with a long marketing name, 16 threads (torch 2.11.0+cu130)")
    path = tmp_path / "tradeoff.png"
    tradeoff_plot(rows, True, path, title=title, context={"chance_mAP": 0.2})
    assert _edges_are_blank(path)
