"""`fat evaluate`: accuracy against speed for one trained student at several merge rates r, beside the teacher.

r is an evaluation setting: the same weights run at every r (ToMe needs no retraining), so the
eval set is read once and each batch goes through the model at every r. Throughput is measured
separately on one fixed batch per setting — model forward only, batched, after warm-up, with the
device synchronised around the timed loop — so the numbers compare settings, not data loading.
Other checkpoints (e.g. the same student trained with a larger patch stride, the cheap
alternative to merging) can be evaluated beside it at r = 0 and land on the same chart.

rows (one report line) · scoring (every clip at every r) · timing (clips/s, the shared timer) ·
teacher (its row, from its logits store) · reports and plot (what is written) · run (the whole
evaluation). Device and precision: pipeline.runtime.
"""

from pipeline.evaluate.plot import tradeoff_plot
from pipeline.evaluate.reports import markdown_table, rows_to_json, write_reports
from pipeline.evaluate.rows import RANDOM_INIT_WARNING, EvalRow
from pipeline.evaluate.run import EvalRequest, run_evaluation
from pipeline.evaluate.timing import TimingSettings

__all__ = ["RANDOM_INIT_WARNING", "EvalRequest", "EvalRow", "TimingSettings", "markdown_table", "rows_to_json",
           "run_evaluation", "tradeoff_plot", "write_reports"]
