"""AST-format datafiles, label CSVs and the clip list: the one place that reads and writes them.

labels (the label CSV: `LabelSet`, `load_label_csv`, `LABEL_CSV_NAME`) · clips (`ClipList`,
the columns every stage reads) · reading (`read_entries`, `load_datafile`, `load_clips`) ·
writing (`write_datafile`, `wav_reference`).
"""

from pipeline.datafile.clips import ClipList, PackedStrings
from pipeline.datafile.labels import (
    LABEL_CSV_HEADER,
    LABEL_CSV_NAME,
    LabelSet,
    file_sha256,
    label_csv_beside,
    label_csv_text,
    load_label_csv,
    write_label_csv,
)
from pipeline.datafile.reading import load_clips, load_datafile, read_entries
from pipeline.datafile.writing import DatafileEntry, entry_json, wav_reference, write_datafile

__all__ = [
    "LABEL_CSV_HEADER", "LABEL_CSV_NAME", "ClipList", "DatafileEntry", "LabelSet", "PackedStrings", "entry_json",
    "file_sha256", "label_csv_beside", "label_csv_text", "load_clips", "load_datafile", "load_label_csv",
    "read_entries", "wav_reference", "write_datafile", "write_label_csv",
]
