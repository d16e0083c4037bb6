"""`fat validate`: find every bad clip, say why, lose nothing.

`checks` judges one file (reason codes, thresholds); `runner` streams a split through worker
processes and writes the AST datafile of the clips that pass, the rejection report and a summary.
"""

from pipeline.validate.checks import REASONS, Thresholds, Verdict, check_file
from pipeline.validate.runner import (
    ClipSource, ValidateSettings, run_validate, source_from_datafile, source_from_metadata,
)

__all__ = [
    "REASONS", "ClipSource", "Thresholds", "ValidateSettings", "Verdict", "check_file", "run_validate",
    "source_from_datafile", "source_from_metadata",
]
