"""`fat logits`: teacher logits for the clips of one or more datafiles, into one HDF5 store;
`fat logits import`: a store from predictions computed elsewhere; `fat logits verify`: check stores."""

from __future__ import annotations

import argparse

from pipeline.cli import add_command
from pipeline.core.errors import FatError
from pipeline.logits.settings import ImportSettings, LogitsSettings, VerifySettings
from pipeline.settings import add_options, from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "logits", "EfficientAT teacher logits for datafile clips → one HDF5 store",
        description=(
            "Run an EfficientAT mn or DyMN teacher (or an ensemble: the mean of several teachers' logits) over\n"
            "every clip of the datafiles at 32 kHz, each padded or cut to --clip-seconds, and write\n"
            "  <out>               ids + logits[N, C] + provenance; `complete` once every clip is in\n"
            "  <out stem>.metrics.json  the teacher's own mAP per datafile (when a label CSV is found)\n"
            "  <out stem>.failed.csv    clips that could not be decoded (only if there are any)\n"
            "Resumable: an interrupted run (even kill -9) leaves its finished batches in <out>.partial/;\n"
            "rerun the same command to finish. Rows of an existing store made with the same teacher and\n"
            "settings are reused. Under torchrun each rank takes a share of the batches and rank 0\n"
            "merges them: torchrun --nproc_per_node 4 -m pipeline.cli logits ...\n"
            "Checkpoints are downloaded once into $FAT_CACHE/teachers (default ~/.cache/fat/teachers);\n"
            "offline, pass the file with --checkpoint. Every row is stored with a checksum. Example:\n"
            "  fat logits --datafile data/datafiles/eval/eval.json --teacher mn10_as --out data/logits/mn10_as.h5\n"
            "Two actions take their own options (see `fat logits import --help`, `fat logits verify --help`):\n"
            "  fat logits import   a store from someone else's predictions (EfficientAT's PaSST ensemble file)\n"
            "  fat logits verify   read every row of stores against their checksums"
        ),
        settings=LogitsSettings,
    )
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=False)
    importer = actions.add_parser(
        "import", help="a store from predictions computed elsewhere (no model runs)",
        formatter_class=parser.formatter_class,
        description=(
            "Rows of someone else's predictions become a teacher store for the datafiles' clips, matched by\n"
            "id as `fat logits` matches its own. Two forms:\n"
            "  EfficientAT's released PaSST ensemble (mAP 0.495): --logits passt_enemble_logits_mAP_495.npy\n"
            "    --index fname_to_index.pkl (a pickled dict clip name → row, read without running anything in it;\n"
            "    upstream's names are YouTube ids, so this fits AudioSet datafiles)\n"
            "  any other teacher: --logits FILE (.npy, .npz or .csv, one row per clip) --ids TXT (one id per line)\n"
            "Writes <out> (rows + provenance: source files and their sha256, --teacher, --published-map),\n"
            "<out stem>.unmatched.txt (the datafiles' clips without a row, if any; the store is then\n"
            "incomplete: fat train --missing-teacher mask) and <out stem>.metrics.json (the teacher's mAP on\n"
            "these clips: a check that names and columns line up). Example:\n"
            "  fat logits import --logits passt_enemble_logits_mAP_495.npy --index fname_to_index.pkl \\\n"
            "    --datafile data/datafiles/eval/eval.json --teacher passt_ensemble_495 --published-map 0.495"
        ),
    )
    add_options(importer, ImportSettings)
    importer.set_defaults(func=run_import)
    verify = actions.add_parser(
        "verify", help="read every row of stores against their checksums", formatter_class=parser.formatter_class,
        description=("Reads every row of each store and compares it with the checksum written beside it (by\n"
                     "`fat logits` and `fat logits import`). Prints one line per store; exits 2 when a store is\n"
                     "damaged (its bad rows are named) or has no checksums (made before they existed)."),
    )
    add_options(verify, VerifySettings)
    verify.set_defaults(func=run_verify)


def run(args: argparse.Namespace) -> int:
    from pipeline.logits.run import run_logits

    settings = from_args(LogitsSettings, args)
    outcome = run_logits(settings)
    if outcome is not None:
        state = "complete" if outcome.complete else "incomplete"
        print(f"{outcome.store}: {state}; {outcome.computed} clips computed, {outcome.reused} reused"
              + (f"; {len(outcome.failed)} excluded" if outcome.failed else ""))
        if outcome.metrics:
            overall = outcome.metrics["all"]
            if "mAP" in overall:
                print(f"teacher mAP {overall['mAP']:.4f} over {overall['clips']} clips "
                      f"(metrics: {settings.metrics_path})")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from pipeline.logits.importing import import_store

    settings = from_args(ImportSettings, args)
    outcome = import_store(settings)
    state = "complete" if outcome.complete else f"INCOMPLETE ({outcome.requested - outcome.matched} listed in " \
                                                f"{outcome.unmatched_list})"
    print(f"{outcome.store}: {state}; {outcome.matched} of {outcome.requested} clips imported")
    if outcome.metrics and "mAP" in outcome.metrics["all"]:
        print(f"teacher mAP {outcome.metrics['all']['mAP']:.4f} over {outcome.metrics['all']['clips']} clips "
              f"(metrics: {settings.metrics_path})")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from pipeline.store import LogitsStore

    settings = from_args(VerifySettings, args)
    failed = []
    for path in settings.stores:
        try:
            with LogitsStore(path, allow_incomplete=True) as store:
                if not store.has_checksums:
                    raise FatError(f"{path}: no row checksums (made before fat stores had them): it cannot be "
                                   "verified; rerun the `fat logits` command that made it to add them")
                damaged = store.damaged_rows()
                if damaged.size:
                    listed = "".join(f"\n  row {row}: {store.ids[row]}" for row in damaged)
                    raise FatError(store.damage_message(damaged) + listed)
                state = "complete" if store.complete else "incomplete"
                print(f"{path}: ok, all {len(store)} rows match their checksums ({state}, teacher "
                      f"{store.attrs.get('teacher', '?')})")
        except FatError as exc:
            print(str(exc))
            failed.append(path)
    if failed:
        raise FatError(f"{len(failed)} of {len(settings.stores)} stores failed verification: "
                       f"{', '.join(map(str, failed))}")
    return 0
