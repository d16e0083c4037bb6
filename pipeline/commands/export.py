"""`fat export`: a trained student as a safetensors file, a Hugging Face AST folder, an ONNX file or a
torch.export program (the last two with a fixed merge rate r baked in).

Exports go to models/exports/ by default: the training folder is a DVC output, and DVC deletes what
it does not know there when it checks the stage out again (`dvc repro` of a cached train stage).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import add_command
from pipeline.settings import check_values, from_args, option

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ExportSettings:
    """The `fat export` options."""

    checkpoint: Path = option(Path("models/student/student.safetensors"), "the student to export: a fat student file (.pt or "
                              ".safetensors) or a Hugging Face AST folder")
    format: str = option("onnx", "what to write", choices=("safetensors", "hf", "onnx", "torch-export"))
    out: Path | None = option(None, "file to write, a folder for --format hf (default: models/exports/<checkpoint's "
                                    "folder>/<stem>.safetensors, <stem>_hf/, <stem>_r<R>.onnx or <stem>_r<R>.pt2, "
                                    "outside DVC's outputs)")
    r: str = option("0", "merge rate baked into onnx / torch-export: 16, 16,16,8 (per block), 16:-1 (schedule) or a "
                         "schedule file (.json from fat tune-r); "
                         "hf and safetensors hold the plain model (r is applied at run time by our code)",
                    metavar="R")
    labels: Path | None = option(None, "label CSV for the class names of --format hf (default: LABEL_0, LABEL_1, ...)")
    optimize: bool = option(True, "run the ONNX exporter's graph optimisation (--no-optimize skips it)")
    exporter_log: bool = option(False, "show what torch.export / torch.onnx / onnxscript log while exporting "
                                       "(hundreds of lines; also `fat -v export`)", flag="--verbose")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "export", "write a trained student as safetensors, a Hugging Face AST, ONNX or torch.export",
        description=(
            "Export a trained student; every file is read back and its logits compared with the student's own\n"
            "(max difference ≤ 1e-4 on random fbank, printed) before it is put in place. With token merging,\n"
            "clips whose merging holds a tie (two similarity scores within float rounding) may merge either\n"
            "way in another exact implementation: the file is judged on tie-free clips, and a tie clip that\n"
            "differs is named in a warning and in the report's tie_clips.\n"
            "  safetensors   our student file without pickle (load_student / fat predict --model student:PATH)\n"
            "  hf            ASTForAudioClassification folder for transformers (plain AST: no token merging)\n"
            "  onnx          model from fbank (batch, frames, mel bins) to logits, merge rate --r baked in, dynamic\n"
            "                batch, static input length; runs with onnxruntime alone (fat predict --model onnx:PATH)\n"
            "  torch-export  the same as a torch.export program (.pt2: torch.export.load(path).module())\n"
            "Files go to models/exports/ unless --out says otherwise; writing inside an output of a DVC stage\n"
            "(models/student/ is train's) is warned about: DVC deletes it when it checks that stage out again.\n"
            "Examples (the checkpoint's default is train's output):\n"
            "  fat export --format onnx --r 16      # models/exports/student/student_r16.onnx\n"
            "  fat export --format hf --labels data/metadata/class_labels_indices.csv   # .../student_hf/\n"
            "  fat export --checkpoint runs/a/student.pt --format torch-export --r 16:-1 --out a_r16.pt2"
        ),
        settings=ExportSettings,
    )
    parser.set_defaults(func=run)


EXPORTS = Path("models/exports")


def default_out(checkpoint: Path, kind: str, r: str) -> Path:
    """Where an export goes without --out: models/exports/<the checkpoint's folder>/, named after the
    checkpoint (and r, or a schedule file's name); never beside it, where a DVC stage's output folder would
    take it away."""
    from student.schedule import is_schedule_path

    source = checkpoint.resolve()
    stem, folder = (source.name, source.name) if checkpoint.is_dir() else (source.stem, source.parent.name)
    tag = "".join(ch if ch.isalnum() else "_" for ch in (Path(r).stem if is_schedule_path(r) else r))
    names = {"safetensors": f"{stem}.safetensors", "hf": f"{stem}_hf", "onnx": f"{stem}_r{tag}.onnx",
             "torch-export": f"{stem}_r{tag}.pt2"}
    return EXPORTS / (folder or "student") / names[kind]


def run(namespace: argparse.Namespace) -> int:
    import json

    from pipeline.checkpoint import load_student, read_student_file
    from pipeline.core.errors import FatError
    from pipeline.dvc_outputs import dvc_output_holding
    from pipeline.export import export_graph, export_hf, export_safetensors
    from student import hf
    from student.errors import StudentError
    from student.tome import parse_r, parse_r_spec

    args = from_args(ExportSettings, namespace)
    check_values(args)
    model, config = load_student(args.checkpoint)
    try:
        r = parse_r_spec(args.r)
        layers = parse_r(model.depth, r)
    except StudentError as exc:
        raise FatError(f"--r {args.r}: {exc}") from None
    if any(layers) and args.format in ("hf", "safetensors"):
        raise FatError(f"--r {args.r}: a {args.format} export holds the plain model; merging is set where it runs "
                       "(set_tome_r, fat predict/evaluate --r)")
    out = args.out or default_out(args.checkpoint, args.format, args.r)
    if out.resolve() == args.checkpoint.resolve():
        raise FatError(f"{out}: is the checkpoint itself; choose another --out")
    inside = dvc_output_holding(out)
    if inside is not None:
        log.warning("%s: inside %s, an output of DVC stage %r (%s): DVC deletes it when it checks that stage out "
                    "again (a `dvc repro` that finds the stage cached); export elsewhere, e.g. %s/", out,
                    inside.out, inside.stage, inside.dvc_yaml, EXPORTS)
    verbose = args.exporter_log or bool(getattr(namespace, "verbose", False))
    report: dict[str, object] = {"format": args.format, "out": str(out), "checkpoint": str(args.checkpoint)}
    if args.format == "safetensors":
        extra = {} if hf.is_hf_checkpoint(args.checkpoint) else read_student_file(args.checkpoint)["extra"]
        if out.suffix != ".safetensors":
            raise FatError(f"{out}: a safetensors student file must be named *.safetensors")
        report["max_logit_difference"] = export_safetensors(model, config, extra, out)
    elif args.format == "hf":
        report["max_logit_difference"] = export_hf(model, config, out, args.labels)
    else:
        check, info = export_graph(model, config, out, args.format, r, optimize=args.optimize, verbose=verbose)
        report.update(max_logit_difference=check["max_logit_difference"], tome_r=info["tome_r"],
                      tome_r_per_layer=layers, tokens_per_layer=info["tokens_per_layer"], input=info["input"],
                      probe_clips=check["probe_clips"], tie_free_clips=check["tie_free_clips"],
                      tie_clips=check["tie_clips"])
    print(json.dumps(report, indent=2))
    return 0
