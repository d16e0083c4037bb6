"""The pipeline as DVC runs it: params.yaml sections → `fat` command lines, and the demo under `dvc repro`.

The integration test copies the project's pipeline files into a fresh git repository in a temp
folder, shrinks the demo with a params override, and runs the real stages through `dvc repro`
and `dvc exp run`: every stage's outputs are checked, a second repro must do nothing, and a
train-only experiment must rerun train and evaluate only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dvc.parsing.interpolate import to_str

from pipeline.checkpoint import load_student
from pipeline.cli import Parser, add_command, build_parser
from pipeline.dvcargs import normalise_argv
from pipeline.settings import option


@dataclass(kw_only=True)
class _ToySettings:
    """A stage's settings: its field names are the params keys DVC renders."""

    tome_r: list[str] = option(["0"], "merge rates", nargs="+")
    out_dir: str = option("out", "output folder")
    skip_invalid: bool = option(False, "an --x/--no-x switch")
    cache: bool = option(True, "a lone --no-x flag", flag="--no-cache")
    sections: bool = option(True, "a switch that is on by default")
    limit: int | None = option(None, "a value that may be null")
    ids: list[str] = option([], "values that may start with '-'", nargs="*")


def _toy_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fat")
    add_command(parser.add_subparsers(dest="command"), "stage", "a toy stage", settings=_ToySettings)
    return parser


def test_dvc_unpacked_section_maps_onto_the_options() -> None:
    """What DVC writes for `${stage}` (snake_case keys, lists, bools, null) parses as intended."""
    parser = _toy_parser()
    argv = ["stage", "--tome_r", "8", "8", "4", "--out_dir", "models/x", "--no-skip_invalid",
            "--no-no_cache", "--no-sections", "--limit", "None"]
    args = parser.parse_args(normalise_argv(parser, argv))
    assert args.tome_r == ["8", "8", "4"]
    assert args.out_dir == "models/x"
    assert args.skip_invalid is False      # `skip_invalid: false` → flag not given
    assert args.cache is True              # `no_cache: false` → flag not given
    assert args.sections is False          # BooleanOptionalAction keeps its --no- form
    assert args.limit is None              # YAML null → the option's default
    args = parser.parse_args(normalise_argv(parser, ["stage", "--skip_invalid", "--no_cache", "--limit=3"]))
    assert (args.skip_invalid, args.cache, args.limit) == (True, False, 3)


def test_values_that_look_like_options_are_left_alone() -> None:
    """Ids may start with '-': only tokens naming a real option of the command are rewritten."""
    parser = _toy_parser()
    argv = ["stage", "--ids", "-0Qx2kCxA7s", "--", "--out_dir"]
    assert normalise_argv(parser, argv) == argv
    with pytest.raises(SystemExit):  # an unknown option is still an error, not silently dropped
        parser.parse_args(normalise_argv(parser, ["stage", "--tome_rate", "8"]))


def test_every_stage_command_is_registered() -> None:
    """dvc.yaml calls these; `fat --help` must list them in pipeline order."""
    choices = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("metadata", "download", "train", "evaluate", "demo-corpus"):
        assert name in choices


# --------------------------------------------------------------------------- params files → command lines

ROOT = Path(__file__).resolve().parents[1]
# section of a params file → the command line dvc.yaml builds from it (positional parts included)
_COMMANDS = {
    "demo": ["demo-corpus"], "metadata": ["metadata"], "download": ["download", "--split", "eval"],
    "validate": ["validate", "--split", "eval"], "pack": ["pack", "--datafile", "d.json"], "logits": ["logits"],
    "train": ["train"],
    "evaluate": ["evaluate"], "prepare": ["prepare", "speechcommands"], "finetune": ["finetune-teacher"],
    "tune_r": ["tune-r"],
    "report": ["folds-report", "eval.json"],
}
# what pipelines/esc50.yaml adds per fold to a section (its paths are the fold's, not params)
_FOLD_ARGS = {
    "finetune": ["--train", "t.json", "--valid", "v.json", "--out", "o"],
    "logits": ["--teacher", "t/teacher.pt", "--datafile", "d.json"],
    "train": ["--train", "t.json", "--valid", "v.json", "--out", "o", "--teacher", "l.h5"],
    "evaluate": ["--checkpoint", "s.safetensors", "--datafile", "d.json"],
}


@pytest.mark.parametrize("params_file", ["params.yaml", "configs/audioset-balanced.yaml",
                                         "configs/audioset-full.yaml", "configs/speechcommands.yaml",
                                         "configs/esc50.yaml"])
def test_every_params_section_is_a_valid_command_line(params_file: str) -> None:
    """Each section, rendered exactly as DVC renders `${section}`, parses without an unknown option."""
    params = yaml.safe_load((ROOT / params_file).read_text())
    parser = build_parser()
    checked = 0
    for section, values in params.items():
        if section == "data":
            continue  # shared values, interpolated one by one in dvc.yaml
        rendered = shlex.split(to_str(values, config={"bool": "boolean_optional"}))
        fold = _FOLD_ARGS.get(section, []) if params_file == "configs/esc50.yaml" else []
        args = parser.parse_args(normalise_argv(parser, [*_COMMANDS[section], *rendered, *fold]))
        assert args.command == _COMMANDS[section][0]
        checked += 1
    assert checked >= 3


# --------------------------------------------------------------------------- the demo under DVC

# What a clone of the project holds that the pipeline needs: its definition and the code its
# stages depend on (the `fat` and `dvc` of this environment run it, with the clone's code first on
# PYTHONPATH).
PIPELINE_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config")
CODE_DIRS = ("pipeline", "student", "teacher", "configs", "pipelines")
SPLITS = ("balanced_train", "eval")

# The demo, shrunk so that CI runs it in a minute or two: few short clips (a quarter broken, so
# every fault kind occurs), one thread each, one training epoch, two merge rates.
SMALL = {
    "demo": {"train_clips": 20, "eval_clips": 10, "window_seconds": 1.0, "broken_fraction": 0.25, "workers": 1},
    "download": {"workers": 2},
    "validate": {"workers": 1},
    "finetune": {"clip_seconds": 1.0, "epochs": 1, "batch_size": 8, "rampdown_start": 0, "rampdown_epochs": 1,
                 "warmup_epochs": 0, "num_workers": 0, "threads": 1},
    "logits": {"clip_seconds": 1.0, "batch_size": 16, "workers": 0, "threads": 1},
    "train": {"target_frames": 100, "epochs": 1, "batch_size": 8, "warmup_steps": 0, "num_workers": 0, "threads": 1},
    "evaluate": {"r": [0, 2], "batch_size": 4, "warmup_batches": 1, "timed_batches": 1, "rounds": 1, "threads": 1},
}


def _shrink(params_file: Path, changes: dict[str, dict], drop: dict[str, list[str]] | None = None) -> None:
    params = yaml.safe_load(params_file.read_text())
    for section, values in changes.items():
        params[section].update(values)
    for section, keys in (drop or {}).items():
        for key in keys:
            params[section].pop(key)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def _make_clone(repo: Path, small: bool = True) -> dict[str, str]:
    """A fresh git repository holding the pipelines (the demo shrunk unless `small` is false) and
    their code; returns the env to run in."""
    repo.mkdir()
    for name in PIPELINE_FILES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    for name in CODE_DIRS:
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if small:
        _shrink(repo / "params.yaml", SMALL)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # fat and dvc of this env
    # ... running the clone's copy of the code: the code DVC hashes as the stages' deps is the
    # code that runs, even while the checkout it was copied from is being edited
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    env["FAT_CACHE"] = str(repo.parent / "fat-cache")
    env["DVC_SITE_CACHE_DIR"] = str(repo.parent / "dvc-site")
    env["DVC_NO_ANALYTICS"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    for command in (["git", "init", "-q"], ["git", "config", "user.name", "fat test"],
                    ["git", "config", "user.email", "fat@example.invalid"],
                    ["git", "add", "-A"], ["git", "commit", "-q", "-m", "pipeline"]):
        subprocess.run(command, cwd=repo, env=env, check=True)
    return env


def _dvc(repo: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{output[-6000:]}"
    return output


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _dvc_complaints(output: str) -> list[str]:
    """DVC's own warnings and errors in an output (`fat`'s log lines have no such prefix), and
    its note on metrics or plots it could not read."""
    return [line for line in output.splitlines()
            if line.startswith(("WARNING:", "ERROR:")) or "failed to load" in line]


def _commit(repo: Path, env: dict[str, str], message: str) -> None:
    subprocess.run(["git", "add", "-A"], cwd=repo, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", message], cwd=repo, env=env, check=True)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _check_stage_outputs(repo: Path) -> None:
    """Every stage's outputs, and that each broken clip was caught where it should be."""
    from pipeline.packed.reader import PackedAudio
    from pipeline.store import LogitsStore

    clips = _read_csv(repo / "data/demo/clips.csv")
    faults = {row["ytid"]: row["fault"] for row in clips if row["fault"]}
    assert set(faults.values()) == {"missing", "html", "silent", "truncated", "clipped"}
    kept: dict[str, set[str]] = {}
    for split in SPLITS:
        ids = {row["ytid"] for row in clips if row["split"] == split}
        metadata = _read_csv(repo / f"data/metadata/{split}.csv")
        assert {row["ytid"] for row in metadata} == ids
        status = {row["ytid"]: row["status"] for row in _read_csv(repo / f"data/manifests/{split}.download.csv")}
        assert set(status) == ids
        for ytid in ids:  # removed videos and HTML pages never become audio; everything else does
            expected = "unavailable" if faults.get(ytid) in ("missing", "html") else "ok"
            assert status[ytid] == expected, (ytid, faults.get(ytid), status[ytid])
        rejected = {row["id"]: row["reason"] for row in _read_csv(repo / f"data/reports/{split}.rejected.csv")}
        for ytid, fault in faults.items():
            if ytid in ids and fault in ("silent", "truncated", "clipped"):
                assert ytid in rejected, (ytid, fault)
        datafile = json.loads((repo / f"data/datafiles/{split}/{split}.json").read_text())
        kept[split] = {entry["id"] for entry in datafile["data"]}
        assert kept[split] == {ytid for ytid in ids if ytid not in faults}
        assert (repo / f"data/datafiles/{split}/class_labels_indices.csv").is_file()
        summary = json.loads((repo / f"data/reports/{split}.validate.json").read_text())
        per_class = _read_csv(repo / f"data/reports/{split}.classes.csv")
        assert len(per_class) == 10 and summary["classes"]["listed"] == 10
        assert sum(int(row["kept"]) for row in per_class) >= len(kept[split])  # every kept clip has a class
        with PackedAudio([repo / f"data/packed/{split}"], [repo / f"data/datafiles/{split}/{split}.json"]) as packed:
            assert set(packed.ids.tolist()) == kept[split] and packed.lossless  # logits/train/evaluate read these
    teacher = json.loads((repo / "models/teacher/result.json").read_text())
    assert teacher["teacher"] == "teacher.pt" and teacher["base"] == "mn04_as" and teacher["epochs"] == 1
    with LogitsStore(repo / "data/logits/teacher.h5") as store:  # the demo's own fine-tuned teacher
        assert store.complete and not store.attrs["random_init"] and store.attrs["teacher"] == "mn04_as-finetuned"
        assert set(store.ids.tolist()) == kept["balanced_train"] | kept["eval"] and store.num_classes == 10
    model, config = load_student(repo / "models/student/student.safetensors")
    assert config["num_classes"] == 10 and config["target_frames"] == 100
    assert (repo / "models/student/dvclive/metrics.json").is_file()
    report = json.loads((repo / "reports/eval.json").read_text())
    assert set(report["student"]) == {"r=0", "r=2"}
    tracked = json.loads((repo / "reports/metrics.json").read_text())  # what DVC shows: mAP and GFLOPs per r
    assert tracked["r0"] == {"mAP": round(report["student"]["r=0"]["mAP"], 4),
                             "gflops": round(report["student"]["r=0"]["gflops"], 3)}
    assert set(tracked) == {"r0", "r2", "teacher"}
    assert report["teacher"]["random_init"] is False
    assert 0.0 <= report["student"]["r=0"]["mAP"] <= 1.0
    table = (repo / "reports/eval.md").read_text()
    assert "teacher mn04_as-finetuned" in table and "RANDOM-INIT" not in table
    assert (repo / "reports/tradeoff.png").read_bytes()[:4] == b"\x89PNG"


def _check_cache_is_intact_and_linked(repo: Path) -> None:
    """Hard-linked outputs cost no second copy, and no writer changed a cached object in place."""
    import hashlib

    audio = sorted((repo / "data/audio/eval").glob("*.wav"))
    assert audio and sum(path.stat().st_nlink >= 2 for path in audio) >= len(audio) - 1  # identical silent clips share one
    for obj in (repo / ".dvc/cache/files/md5").glob("*/*"):
        if obj.suffix == ".dir":
            continue
        assert hashlib.md5(obj.read_bytes()).hexdigest() == obj.parent.name + obj.name, obj


@pytest.mark.slow
def test_demo_pipeline_under_dvc(tmp_path: Path) -> None:
    repo = tmp_path / "clone"
    env = _make_clone(repo)

    first = _dvc(repo, env, "repro")
    assert _ran(first) == {"demo_corpus", "metadata", "download@balanced_train", "download@eval",
                           "validate@balanced_train", "validate@eval", "pack@balanced_train", "pack@eval",
                           "teacher", "logits", "train", "evaluate", "tune_r"}
    assert not _dvc_complaints(first), first
    _check_stage_outputs(repo)
    _check_cache_is_intact_and_linked(repo)

    second = _dvc(repo, env, "repro")
    assert _ran(second) == set(), second
    _commit(repo, env, "demo run")
    assert _dvc(repo, env, "status").strip() == "Data and pipelines are up to date."  # nothing else collected

    # A teacher-logits change (here: the input length) reruns logits → train → evaluate (and tune_r, a no-op in
    # the demo), never the downloads or the teacher's training, in a temporary copy of the repository (as
    # queued experiments run): everything earlier comes from the DVC cache there. (Which stages a change
    # reaches follows from the deps, checked for every stage by tests/test_dvc_deps.py.)
    teacher_exp = _dvc(repo, env, "exp", "run", "--temp", "-S", "logits.clip_seconds=1.5", "-n", "teacher1")
    assert _ran(teacher_exp) == {"logits", "train", "evaluate", "tune_r"}, teacher_exp
    assert not _dvc_complaints(teacher_exp), teacher_exp  # e.g. no "No file hash info found" for other pipelines
    _check_cache_is_intact_and_linked(repo)

    # each experiment's reports/metrics.json reaches `dvc exp show` through the cache
    shown = json.loads(_dvc(repo, env, "exp", "show", "--json"))
    tracked = {rev["name"]: rev["data"]["metrics"]["reports/metrics.json"]["data"]
               for row in shown for exp in row.get("experiments") or [] for rev in exp["revs"]}
    assert set(tracked) == {"teacher1"}
    assert all(set(values) == {"r0", "r2", "teacher"} for values in tracked.values()), tracked


# --------------------------------------------------------------------------- Speech Commands

SC_WORDS = {"down": 300.0, "go": 900.0, "yes": 2000.0}


def _speech_commands_fixture(repo: Path) -> None:
    """A miniature Speech Commands v0.02 folder (3 words, tones for voices), and the clone made a
    Speech Commands project as the README says (its pipeline and params in place), shrunk."""
    import numpy as np

    from pipeline.core.audio import write_wav

    root = repo / "datasets/speech_commands_v0.02"
    rng = np.random.default_rng(0)
    lists: dict[str, list[str]] = {"validation_list.txt": [], "testing_list.txt": []}
    for word, freq in SC_WORDS.items():
        for i in range(6):
            t = np.arange(16000) / 16000
            wave = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.03 * rng.standard_normal()) * t) + 0.01 * rng.standard_normal(16000)
            name = f"{word}/spk{i:02d}_nohash_0.wav"
            write_wav(root / name, wave.astype(np.float32), 16000)
            if i == 4:
                lists["validation_list.txt"].append(name)
            if i == 5:
                lists["testing_list.txt"].append(name)
    (root / "_background_noise_").mkdir()
    for name, entries in lists.items():
        (root / name).write_text("\n".join(entries) + "\n")
    shutil.copy2(repo / "pipelines/speechcommands.yaml", repo / "dvc.yaml")
    shutil.copy2(repo / "configs/speechcommands.yaml", repo / "params.yaml")
    _shrink(repo / "params.yaml", {
        "prepare": {"workers": 1},
        "finetune": {"teacher": "mn01_as", "random_init": True, "epochs": 1, "batch_size": 12, "warmup_epochs": 0,
                     "num_workers": 0, "threads": 1},
        "logits": {"batch_size": 16, "workers": 0, "threads": 1},
        "train": {"model_size": "tiny224", "fstride": 16, "tstride": 16, "target_frames": 100, "epochs": 1,
                  "batch_size": 4, "num_workers": 0, "threads": 1},
        "evaluate": {"r": [0, 2], "batch_size": 4, "warmup_batches": 1, "timed_batches": 1, "rounds": 1,
                     "threads": 1, "workers": 0},
    }, drop={"train": ["imagenet_weights"]})


@pytest.mark.slow
def test_speechcommands_pipeline_under_dvc(tmp_path: Path) -> None:
    """The Speech Commands preset drives its own pipeline (prepare → teacher → logits → train with KD →
    evaluate, accuracy) once it is the clone's dvc.yaml and params.yaml."""
    repo = tmp_path / "clone"
    env = _make_clone(repo)
    _speech_commands_fixture(repo)
    _dvc(repo, env, "add", "datasets/speech_commands_v0.02")
    _commit(repo, env, "dataset")
    first = _dvc(repo, env, "repro")
    assert _ran(first) == {"prepare", "teacher", "logits", "train", "evaluate"}
    for split in ("train", "valid", "test"):
        data = json.loads((repo / f"data/speechcommands/datafiles/speechcommands_{split}.json").read_text())
        assert len(data["data"]) == {"train": 12, "valid": 3, "test": 3}[split]
    report = json.loads((repo / "reports/speechcommands/eval.json").read_text())
    assert set(report["student"]) == {"r=0", "r=2"} and "accuracy" in report["teacher"]  # the fine-tuned teacher's row
    student = next(p for p in (repo / "models/speechcommands/student.safetensors",
                               repo / "models/speechcommands/student.pt") if p.is_file())
    assert load_student(student)[1]["teacher_store"]["teacher"] == "mn01_as-finetuned"  # KD from its logits
    assert 0.0 <= report["student"]["r=0"]["accuracy"] <= 1.0
    # BCE training scored by accuracy (train.metric): every epoch logs it, the student file says so
    epochs = _read_csv(repo / "models/speechcommands/epochs.csv")
    assert all(0.0 <= float(row["valid/accuracy"]) <= 1.0 for row in epochs)
    assert load_student(student)[1]["main_metric"] == "accuracy"
    # DVC tracks accuracy (the main metric) and GFLOPs per r, and shows them without a complaint
    assert set(json.loads((repo / "reports/speechcommands/metrics.json").read_text())) == {"r0", "r2", "teacher"}
    assert _ran(_dvc(repo, env, "repro")) == set()
    assert not (repo / "data/demo").exists()  # the AudioSet pipeline is not this project's
    _commit(repo, env, "speech commands run")
    for view in (["status"], ["metrics", "show"], ["plots", "show"]):
        output = _dvc(repo, env, *view)
        assert not _dvc_complaints(output), output
    assert "r0.accuracy" in _dvc(repo, env, "metrics", "show")


# --------------------------------------------------------------------------- ESC-50's five folds


@pytest.mark.slow
@pytest.mark.heavy
def test_esc50_pipeline_runs_five_folds_and_reports_mean_and_std(tmp_path: Path) -> None:
    """A fake ESC-50 release (3 classes, one clip of each per fold) through pipelines/esc50.yaml: every fold
    fine-tunes its teacher on the other four, writes its logits, trains a KD student and evaluates it; the
    report averages the folds."""
    from tests.esc50_fixtures import build_release

    repo = tmp_path / "clone"
    env = _make_clone(repo)
    build_release(repo / "datasets/ESC-50-master", per_fold=1)
    shutil.copy2(repo / "pipelines/esc50.yaml", repo / "dvc.yaml")
    shutil.copy2(repo / "configs/esc50.yaml", repo / "params.yaml")
    _shrink(repo / "params.yaml", {
        "prepare": {"workers": 1},
        "finetune": {"teacher": "mn01_as", "random_init": True, "clip_seconds": 0.5, "epochs": 1, "batch_size": 12,
                     "warmup_epochs": 0, "num_workers": 0, "threads": 1},
        "logits": {"clip_seconds": 0.5, "batch_size": 16, "workers": 0, "threads": 1},
        "train": {"model_size": "tiny224", "depth": 1, "fstride": 16, "tstride": 16, "target_frames": 50,
                  "epochs": 1, "batch_size": 6, "num_workers": 0, "threads": 1},
        "evaluate": {"r": [0, 2], "batch_size": 4, "warmup_batches": 1, "timed_batches": 1, "rounds": 1,
                     "threads": 1, "workers": 0},
    }, drop={"train": ["ast_checkpoint"]})
    _dvc(repo, env, "add", "datasets/ESC-50-master")
    _commit(repo, env, "dataset")
    first = _dvc(repo, env, "repro")
    folds = range(1, 6)
    assert _ran(first) == {"prepare", "report"} | {f"{stage}@{k}" for stage in ("teacher", "logits", "train",
                                                                               "evaluate") for k in folds}
    for k in folds:  # each fold's teacher learned the other four folds' clips and its logits cover both sides
        teacher = json.loads((repo / f"models/esc50/fold{k}/teacher/result.json").read_text())
        assert teacher["main_metric"] == "accuracy" and teacher["epochs"] == 1
        report = json.loads((repo / f"reports/esc50/fold{k}/eval.json").read_text())
        assert set(report["student"]) == {"r=0", "r=2"} and report["eval"]["clips"] == 3
        assert "accuracy" in report["teacher"]
    summary = json.loads((repo / "reports/esc50/folds.json").read_text())
    assert summary["metric"] == "accuracy" and summary["folds"] == 5
    for block in [*summary["student"].values(), summary["teacher"]]:
        assert len(block["folds"]) == 5 and block["mean"] == pytest.approx(sum(block["folds"]) / 5, abs=1e-6)
        assert block["std"] >= 0
    table = (repo / "reports/esc50/folds.md").read_text()
    assert "| student | 0 |" in table and "| teacher |" in table and " ± " in table
    assert set(json.loads((repo / "reports/esc50/metrics.json").read_text())) == {"r0", "r2", "teacher"}
    assert _ran(_dvc(repo, env, "repro")) == set()
    # one fold's stage is a stage of its own: it reruns alone
    again = _dvc(repo, env, "repro", "-f", "-s", "train@3")
    assert _ran(again) == {"train@3"}
