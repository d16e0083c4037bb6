"""`fat logits`: datafiles → one teacher logits store (`pipeline.store`), resumable and shardable.

settings (what a run is asked; its clips come from `pipeline.datafile.load_clips`) · teachers
(members, identity, provenance) · compute (forward passes → work log) · worklog (crash-safe
records) · run (reuse, resume, batches, ranks) · assemble (the store) · failures
(`.failed.csv`) · teacher_metrics (the teacher's own mAP). Device, precision and torchrun:
`pipeline.runtime`.

    from pipeline.logits.run import run_logits
    from pipeline.logits.settings import LogitsSettings

This package file imports nothing, so that the CLI reads LogitsSettings without loading torch.
"""
