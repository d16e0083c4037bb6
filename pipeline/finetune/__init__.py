"""`fat finetune-teacher`: a released teacher (mn, DyMN, ...) given a new head and trained on a datafile set,
so that KD on a dataset other than AudioSet has a teacher that knows its classes.

    from pipeline.finetune.settings import FinetuneSettings
    from pipeline.finetune.loop import finetune
    finetune(FinetuneSettings(train=..., valid=..., out=...))

Modules: settings (the options), schedule (EfficientAT's warm-up and ramp-down), augment (the
waveform and mel augmentation of its recipe), data (clips at 32 kHz), loop (the run). Device,
precision and torchrun come from pipeline.runtime; the state file, logs and validation scoring
from pipeline.training. This package file imports nothing, so the CLI reads the settings
without loading torch.
"""
