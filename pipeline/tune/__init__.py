"""`fat tune-r`: the per-block merge schedule that meets a speed budget on this device at the best accuracy.

r is a per-block choice and the cost of merging is the device's (FLOPs are not time: gathers and the
size-biased attention cost more on some devices than others), so schedules are measured, not
predicted: throughput with the timer `fat evaluate` uses, accuracy with its scoring, on a validation
set whose features are computed once. The search is bounded (--max-evaluations) and always holds
the constant r values and ToMe's decreasing schedules, so its answer is never worse than the best
constant r that meets the budget.

settings (the options) · candidates (which schedules to try) · measure (features cached once,
accuracy of many schedules per pass, throughput) · search (constants, then a local search among
per-block lists) · report (schedule.json, pareto.json, pareto.png, tune.md) · run (the stage).

This package file imports nothing, so that the CLI reads TuneSettings without loading torch.
"""
