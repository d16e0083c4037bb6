"""`fat export`: a trained student written where people run models, each file checked before it is kept.

- `safetensors`: our own student file without pickle (pipeline.checkpoint's .safetensors form).
- `hf`: a transformers `ASTForAudioClassification` folder (config.json, model.safetensors,
  preprocessor_config.json with our frames, mel bins and normalisation). Token merging is not in
  it: transformers runs the plain AST (r = 0).
- `onnx` / `torch-export`: the model from fbank to logits with a fixed merge schedule (student.export).

Every export is read back and its logits compared with the student's own (≤ TOLERANCE) on random
fbank input before the file is renamed into place; a failed check leaves nothing behind.
`OnnxStudent` runs an exported ONNX file with ONNX Runtime alone (fat predict --model onnx:PATH).

With token merging, a clip whose matching holds a near-tie (two similarity scores closer than
float rounding, student.export.TIE_MARGIN) can merge differently in another exact implementation:
ONNX Runtime's float32 and the student's may each pick one token, and both logits are right.
Such clips cannot judge a graph; it is judged on tie-free clips (random ones are drawn until
MIN_TIE_FREE are), which must match, and a tie clip that differs is reported as a tie, with
whether the float64 student agrees with the file.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.atomic import atomic_path
from pipeline.core.errors import FatError

if TYPE_CHECKING:
    import torch

    from student.ast import ASTModel
    from student.export import Reference
    from student.tome import RSpec

log = logging.getLogger(__name__)

FORMATS = ("safetensors", "hf", "onnx", "torch-export")
TOLERANCE = 1e-4
HF_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
MIN_TIE_FREE = 3  # tie-free probe clips a merging graph is judged on
MAX_EXTRA_PROBES = 32  # random clips drawn, 8 at a time, while fewer are tie-free


def _probe(model: ASTModel, batch: int = 3, seed: int = 7) -> torch.Tensor:
    import torch

    return torch.randn(batch, model.input_tdim, model.input_fdim, generator=torch.Generator().manual_seed(seed))


def _reference(model: ASTModel, fbank: torch.Tensor, r: RSpec) -> np.ndarray:
    import torch

    from student.export import merged_copy

    with torch.no_grad():
        return merged_copy(model, r)(fbank).numpy()


def _check_close(what: str, got: np.ndarray, expected: np.ndarray) -> float:
    gap = float(np.abs(got - expected).max())
    if not gap <= TOLERANCE:
        raise FatError(f"{what}: logits differ from the student's by {gap:.2e} (> {TOLERANCE:g}); nothing written")
    return gap


def export_safetensors(model: ASTModel, config: dict[str, Any], extra: dict[str, Any], out: Path) -> float:
    from pipeline.checkpoint import load_student, save_student

    save_student(out, model, config, extra)
    probe = _probe(model)
    reloaded, _ = load_student(out)
    import torch

    with torch.no_grad():
        return _check_close(str(out), reloaded(probe).numpy(), _reference(model, probe, 0))


def _hf_labels(config: dict[str, Any], labels_csv: Path | None, num_classes: int) -> list[str] | None:
    """Class names for id2label: the --labels CSV (checked against the student's label list), else none."""
    if labels_csv is None:
        return config.get("labels") if isinstance(config.get("labels"), list) else None
    from pipeline.datafile import load_label_csv

    labels = load_label_csv(labels_csv)
    if len(labels) != num_classes:
        raise FatError(f"{labels_csv}: {len(labels)} classes, but the student predicts {num_classes}")
    trained = config.get("label_csv_sha256")
    if trained and labels.sha256 != trained:
        raise FatError(f"{labels_csv}: another label list (sha256 {labels.sha256[:12]}…) than the student was trained "
                       f"with ({str(trained)[:12]}…)")
    return list(labels.names)


def _replaceable(out: Path, names: tuple[str, ...]) -> None:
    """`out` must be absent, empty, or hold only what an earlier export of this kind wrote."""
    if out.exists() and (not out.is_dir() or any(p.name not in names for p in out.iterdir())):
        raise FatError(f"{out}: exists and holds other files; choose another --out (nothing is overwritten)")


def export_hf(model: ASTModel, config: dict[str, Any], out: Path, labels_csv: Path | None = None) -> float:
    """A transformers AST folder; checked by loading it back through our HF import (the same computation)."""
    import torch
    from safetensors.torch import save_file

    from pipeline.checkpoint import student_features
    from student import create_ast, hf

    _replaceable(out, HF_FILES)
    features = student_features(config)
    hf_config = hf.hf_config(model, _hf_labels(config, labels_csv, model.num_classes))
    hf_config["problem_type"] = ("multi_label_classification" if config.get("multi_label", True)
                                 else "single_label_classification")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.fat-tmp-") as tmp:
        folder = Path(tmp)
        save_file(hf.ours_to_hf(model.state_dict(), model.depth), str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        (folder / "preprocessor_config.json").write_text(
            json.dumps(hf.hf_preprocessor_config(model, features.mean, features.std), indent=2) + "\n")
        probe = _probe(model)
        with torch.no_grad():
            got = create_ast(hf_checkpoint=folder).eval()(probe).numpy()
        gap = _check_close(str(out), got, _reference(model, probe, 0))
        out.mkdir(parents=True, exist_ok=True)
        for name in HF_FILES:
            (folder / name).replace(out / name)
    return gap


def _tie_free_probe(model: ASTModel, r: RSpec, probe: torch.Tensor) -> tuple[torch.Tensor, Reference]:
    """`probe` and the eager student's reference on it, with random clips added (8 at a time, at most
    MAX_EXTRA_PROBES) while fewer than MIN_TIE_FREE clips merge without a near-tie."""
    import numpy as np
    import torch

    from student.export import Reference, reference

    batches, references = [probe], [reference(model, probe, r)]
    seed = 8
    while (sum(int((~ref.tied).sum()) for ref in references) < MIN_TIE_FREE
           and sum(len(batch) for batch in batches[1:]) < MAX_EXTRA_PROBES):
        batches.append(_probe(model, 8, seed))
        references.append(reference(model, batches[-1], r))
        seed += 1
    joined = Reference(*(np.concatenate([getattr(ref, name) for ref in references])
                         for name in ("logits", "margin", "block")))
    return torch.cat(batches), joined


def check_graph(where: str, model: ASTModel, r: RSpec, run: Callable[[torch.Tensor], np.ndarray],
                probe: torch.Tensor | None = None) -> dict[str, Any]:
    """Compare an exported graph's logits (`run`) with the eager student at merge counts `r`.

    Tie-free clips must match within TOLERANCE; a clip whose merging holds a near-tie may differ
    (reported, with the float64 student's verdict), as long as some tie-free clip was judged. Returns
    {"max_logit_difference" over the clips that match, "probe_clips", "tie_clips": [...]}.
    """
    import numpy as np
    import torch

    from student.export import TIE_MARGIN, reference

    fbank, ref = _tie_free_probe(model, r, _probe(model) if probe is None else probe)
    gaps = np.abs(np.asarray(run(fbank), dtype=np.float64) - ref.logits).max(axis=1)
    matches = gaps <= TOLERANCE  # NaN never matches
    tied = ref.tied
    wrong = np.flatnonzero(~matches & ~tied)
    if len(wrong):
        clip = int(wrong[np.argmax(gaps[wrong])])
        closest = ("nothing merged" if ref.block[clip] < 0 else
                   f"its closest merge decision, in block {ref.block[clip]}, won by {ref.margin[clip]:.1e}")
        raise FatError(f"{where}: logits differ from the student's by {gaps[clip]:.2e} (> {TOLERANCE:g}) on probe "
                       f"clip {clip}, whose token merging has no tie ({closest}); nothing written")
    differing = np.flatnonzero(~matches)
    if len(differing) and tied.all():
        clip = int(differing[0])
        raise FatError(f"{where}: logits differ from the student's by {gaps[differing].max():.2e} (> {TOLERANCE:g}), "
                       f"and every one of the {len(gaps)} probe clips has a tie in its token merging "
                       f"(e.g. clip {clip}, block {ref.block[clip]}: two similarity scores {ref.margin[clip]:.1e} "
                       f"apart, < {TIE_MARGIN:g}) that float32 rounding may resolve either way, so no clip can tell a "
                       "wrong graph from a tie; nothing written")
    ties = []
    if len(differing):
        wide = reference(model, fbank[differing], r, torch.float64)
        wide_gaps = np.abs(np.asarray(run(fbank[differing]), dtype=np.float64) - wide.logits).max(axis=1)
        for clip, wide_gap in zip(differing.tolist(), wide_gaps.tolist()):
            agrees = bool(wide_gap <= TOLERANCE)
            ties.append({"clip": clip, "block": int(ref.block[clip]), "score_gap": float(ref.margin[clip]),
                         "logit_difference": float(gaps[clip]), "float64_student_agrees": agrees})
            log.warning("%s: probe clip %d differs from the student by %.2e because of a tie: in block %d two "
                        "similarity scores are %.1e apart and float32 rounding merges either token (%s); the file "
                        "matches the student on the %d tie-free clips", where, clip, gaps[clip], ref.block[clip],
                        ref.margin[clip], "the student in float64 merges as the file does" if agrees else
                        "the student in float64 differs from both: rounding decides it", int((~tied).sum()))
    return {"max_logit_difference": float(gaps[matches].max()), "probe_clips": len(gaps),
            "tie_free_clips": int((~tied).sum()), "tie_clips": ties}


def export_graph(model: ASTModel, config: dict[str, Any], out: Path, kind: str, r: RSpec, optimize: bool = True,
                 verbose: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """An ONNX file or torch.export program at merge counts `r`, checked against the eager student
    (`check_graph`). Returns (check, description)."""
    import torch

    from student import export as student_export
    from student.errors import StudentError

    try:
        with atomic_path(out) as tmp:
            if kind == "onnx":
                info = student_export.save_onnx(model, config, r, tmp, optimize=optimize, verbose=verbose)
                runner = OnnxStudent(tmp)
                check = check_graph(str(out), model, r, lambda fbank: runner.logits(fbank.numpy()))
            else:
                info = student_export.save_program(model, config, r, tmp, verbose=verbose)
                module, _ = student_export.load_program(tmp, r)

                def run(fbank: torch.Tensor) -> np.ndarray:
                    with torch.no_grad():
                        return module(fbank).numpy()

                check = check_graph(str(out), model, r, run)
    except StudentError as exc:
        raise FatError(str(exc)) from None
    return check, info


class OnnxStudent:
    """An exported student run by ONNX Runtime (CPU): fbank (B, T, F) float32 → logits (B, C)."""

    def __init__(self, path: Path, r: RSpec | None = None, threads: int | None = None, spin: bool = True) -> None:
        """`threads`: ORT intra-op threads (None: its default); `spin=False` stops ORT's threads from
        busy-waiting between runs, so that timing it beside torch in one process is fair to torch."""
        from student.errors import StudentError
        from student.export import INPUT_NAME, METADATA_KEY, check_r, read_description

        try:
            import onnxruntime as ort
        except ImportError:
            raise FatError("running an ONNX model needs onnxruntime: pip install -c configs/constraints.txt "
                           "-e '.[onnx]' in the project") from None
        path = Path(path)
        if not path.is_file():
            raise FatError(f"{path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # truncated or foreign: say which file
            raise FatError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
        try:
            self.info = read_description(self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), path)
            check_r(self.info, r, path)
        except StudentError as exc:
            raise FatError(str(exc)) from None
        self.path, self.input_name = path, INPUT_NAME
        self.config: dict[str, Any] = self.info["config"]
        self.frames, self.mel_bins = self.info["input"]

    def logits(self, fbank: np.ndarray) -> np.ndarray:
        fbank = np.ascontiguousarray(fbank, dtype=np.float32)
        if fbank.ndim != 3 or fbank.shape[1:] != (self.frames, self.mel_bins):
            raise FatError(f"{self.path}: expects fbank (batch, {self.frames}, {self.mel_bins}), got {fbank.shape}")
        return self.session.run(None, {self.input_name: fbank})[0]
