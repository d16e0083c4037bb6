"""`fat evaluate`: accuracy against speed for one trained student at several merge rates r, beside the teacher.

r is an evaluation setting: the same weights run at every r (ToMe needs no retraining), so the
eval set is read once and each batch goes through the model at every r. Throughput is measured
separately on one fixed batch per setting — model forward only, batched, after warm-up, with the
device synchronised around the timed loop — so the numbers compare settings, not data loading.
Other checkpoints (e.g. the same student trained with a larger patch stride, the cheap
alternative to merging) can be evaluated beside it at r = 0 and land on the same chart.

settings (the options) · rows (one report line) · scoring (every clip at every r) · timing
(clips/s, the shared timer) · teacher (its row, from its logits store) · reports and plot (what
is written) · run (the whole evaluation). Device and precision: pipeline.runtime.

This package file imports nothing, so that the CLI reads EvaluateSettings without loading torch
or matplotlib.
"""
