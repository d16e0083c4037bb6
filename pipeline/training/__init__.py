"""`fat train`: the AST student on λ·label + (1 − λ)·KD with precomputed teacher logits.

    from pipeline.training.config import TrainConfig
    from pipeline.training.loop import train
    result = train(TrainConfig(train=..., valid=..., out=..., teacher=...))

Modules: config (the settings, which are also the `fat train` options), loop (the run), schedule
(warm-up + step decay, and what a run never reaches of it), averaging (weight averaging), scoring
(per-epoch validation scores), logs (CSV + DVCLive), state (resume), session (the epoch loop, SIGTERM stop and
state that `fat finetune-teacher` shares), head_prior (the head's starting
bias), label_noise (the KD test bed), lengths (how the clips fit --target-frames). Device, precision and torchrun: pipeline.runtime. This package file
imports nothing, so that the CLI can read TrainConfig without loading torch.
"""
