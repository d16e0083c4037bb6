"""A trained AST with a fixed merge schedule, exported as a `torch.export` program or an ONNX file.

What is exported is the model from fbank to logits: the input is the normalised Kaldi fbank
(batch, frames, mel bins), with the frame and mel-bin counts fixed at export and the batch
dynamic; the waveform → fbank features are not inside (student.frontend computes them, as in
training). The merge counts per block are baked in: ToMe's bipartite matching (cosine scores,
max, argsort, gather, scatter-add) becomes ordinary graph ops (TopK, GatherElements,
ScatterElements), and with r fixed and the input length static every token count is a constant,
so no shape in the graph depends on the data. Both files carry the same description (a JSON
object: format, per-block r, tokens after each block, the student config with its
normalisation) so a reader can check it got the r it asked for and compute the right features.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from student.ast import ASTModel
from student.errors import StudentError
from student.tome import MergeState, RSpec, format_r_spec, parse_r, set_tome_r, tokens_per_layer, tome_block

EXPORT_FORMAT = "fat-exported-student/1"
METADATA_KEY = "fat_student"  # ONNX metadata_props key / torch.export extra file name
INPUT_NAME, OUTPUT_NAME = "fbank", "logits"
MAX_BATCH = 4096
# Loggers of the exporters: at INFO they write a line per rewrite (~290 for a 2-block AST)
EXPORTER_LOGGERS = ("torch.export", "torch.onnx", "torch._dynamo", "onnxscript", "onnx_ir")
# A merge decision whose winning similarity beat the next by less than this is a tie: float32 rounding
# (~5e-7 on cosine scores, the eager float32 vs float64 student at 12 blocks) may resolve it either way.
TIE_MARGIN = 1e-5


def describe(model: ASTModel, config: dict[str, Any], r: RSpec) -> dict[str, Any]:
    """What an exported file records about itself."""
    layers = parse_r(model.depth, r)
    return {"format": EXPORT_FORMAT, "tome_r": format_r_spec(r), "tome_r_per_layer": layers,
            "tokens_in": model.num_tokens, "tokens_per_layer": tokens_per_layer(model, layers),
            "input": [model.input_tdim, model.input_fdim], "config": config}


def merged_copy(model: ASTModel, r: RSpec) -> ASTModel:
    """A deep copy in eval mode with merge counts `r` (the caller's model keeps its own r)."""
    merged = copy.deepcopy(model).eval()
    set_tome_r(merged, r)
    return merged


@dataclass
class Reference:
    """The eager student's logits on a batch, and how near each clip's token merging came to a tie."""

    logits: np.ndarray  # (B, classes)
    margin: np.ndarray  # (B,) smallest decision margin over all merges (inf: nothing merged)
    block: np.ndarray  # (B,) the block it is in (-1: nothing merged)

    @property
    def tied(self) -> np.ndarray:
        """(B,) bool: clips whose merging another exact implementation may resolve differently."""
        return self.margin < TIE_MARGIN


def reference(model: ASTModel, fbank: torch.Tensor, r: RSpec, dtype: torch.dtype = torch.float32) -> Reference:
    """The eager student at merge counts `r` (in `dtype`), recording every merge's `decision_margins`.

    The blocks run as `ASTModel.forward_tokens` runs them (tome_block, which is timm's block while
    nothing has merged): the logits are the student's own.
    """
    merged = merged_copy(model, r).to(dtype)
    state = MergeState(margins=[])
    blocks: list[int] = []
    with torch.no_grad():
        x = merged.embed(fbank.to(dtype))
        for index, (block, count) in enumerate(zip(merged.v.blocks, merged.tome_r)):
            before = len(state.margins)
            x = tome_block(block, x, count, state, prop_attn=merged.tome_prop_attn)
            blocks += [index] * (len(state.margins) - before)
        logits = merged.forward_head(x).float().numpy()
    if not blocks:
        return Reference(logits, np.full(len(logits), np.inf), np.full(len(logits), -1))
    margins = torch.stack(state.margins).double().numpy()  # (merges, B)
    where = margins.argmin(axis=0)
    return Reference(logits, margins.min(axis=0), np.asarray(blocks)[where])


@contextlib.contextmanager
def exporter_output(verbose: bool = False) -> Iterator[None]:
    """Keep what the exporters log, warn and print out of sight unless `verbose` (then their prints go
    to stderr: stdout stays the caller's); if the export fails, what they said is written to stderr
    before the error goes on (it is then the useful part)."""
    if verbose:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [handler], False
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved):
            logger.handlers, logger.propagate = handlers, propagate


def export_program(model: ASTModel, r: RSpec) -> torch.export.ExportedProgram:
    """torch.export of the model at merge counts `r`: static frames × mel bins, dynamic batch (1..MAX_BATCH)."""
    merged = merged_copy(model, r)
    example = torch.randn(2, model.input_tdim, model.input_fdim, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(merged, (example,), dynamic_shapes={"x": {0: batch}})


def save_program(model: ASTModel, config: dict[str, Any], r: RSpec, path: Path,
                 verbose: bool = False) -> dict[str, Any]:
    """Write a torch.export program (.pt2) to `path` (a temporary name: the caller renames it);
    `verbose` lets torch.export's log through."""
    info = describe(model, config, r)
    with exporter_output(verbose):
        torch.export.save(export_program(model, r), path, extra_files={METADATA_KEY: json.dumps(info)})
    return info


def save_onnx(model: ASTModel, config: dict[str, Any], r: RSpec, path: Path, optimize: bool = True,
              verbose: bool = False) -> dict[str, Any]:
    """Write an ONNX file (torch.onnx's dynamo exporter from the torch.export program) with its description
    in metadata_props; `path` is a temporary name the caller renames. `verbose` lets the exporters' log
    through (a line per graph rewrite)."""
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch.onnx's dynamo exporter needs it
    except ImportError:
        raise StudentError("ONNX export needs onnx and onnxscript: pip install -c configs/constraints.txt "
                           "-e '.[onnx]' in the project") from None
    info = describe(model, config, r)
    with exporter_output(verbose):
        program = torch.onnx.export(export_program(model, r), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamo=True, optimize=optimize, verbose=verbose)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(info)})
    onnx.save(proto, str(path))
    return info


def read_description(text: str | None, where: Path) -> dict[str, Any]:
    """The description stored with an exported file, checked to be one of ours."""
    if not text:
        raise StudentError(f"{where}: not exported by fat export (no {METADATA_KEY!r} metadata)")
    try:
        info = json.loads(text)
    except ValueError:
        raise StudentError(f"{where}: unreadable {METADATA_KEY!r} metadata") from None
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
        raise StudentError(f"{where}: metadata format {info.get('format') if isinstance(info, dict) else info!r}, "
                           f"expected {EXPORT_FORMAT!r}")
    return info


def check_r(info: dict[str, Any], r: RSpec | None, where: Path) -> None:
    """An exported file runs only the merge counts it was exported with: refuse another r."""
    if r is None:
        return
    asked = parse_r(len(info["tome_r_per_layer"]), r)
    if asked != info["tome_r_per_layer"]:
        raise StudentError(f"{where}: exported with r = {info['tome_r']} (tokens per block {info['tokens_per_layer']}), "
                           f"but r = {format_r_spec(r)} was asked for; export again with --r {format_r_spec(r)}")


def load_program(path: Path, r: RSpec | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(callable module, description) of a .pt2 written by save_program; `r`, if given, must be the exported one."""
    extra = {METADATA_KEY: ""}
    try:
        with warnings.catch_warnings():  # torch.export.load's own note on read-only buffers: not the user's concern
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            program = torch.export.load(path, extra_files=extra)
    except Exception as exc:  # truncated or foreign: say which file
        raise StudentError(f"{path}: not a readable torch.export program ({type(exc).__name__}: {exc})") from None
    info = read_description(extra[METADATA_KEY], path)
    check_r(info, r, path)
    return program.module(), info
