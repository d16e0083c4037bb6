"""`fat train`: the AST student on λ·label + (1 − λ)·KD with precomputed teacher logits.

    from pipeline.training import TrainConfig, train
    result = train(TrainConfig(train=..., valid=..., labels=..., out=..., teacher=...))

Modules: config (settings), loop (the run), schedule (warm-up + step decay), averaging (weight
averaging), precision (AMP), distributed (torchrun), validation, logs (CSV + DVCLive), state (resume).
"""

from pipeline.training.config import TrainConfig
from pipeline.training.loop import INTERRUPTED_EXIT, MODEL_NAME, RESULT_NAME, RunResult, train

__all__ = ["INTERRUPTED_EXIT", "MODEL_NAME", "RESULT_NAME", "RunResult", "TrainConfig", "train"]
