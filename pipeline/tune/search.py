"""The search: the constant r values and ToMe's decreasing schedules first, measured together with
r = 0, then a bounded local search among per-block lists from the best schedule that meets the budget.

Every candidate's accuracy is measured on the validation features and its throughput on the device;
analytic FLOPs only decide which neighbours are worth measuring (a neighbour is measured when the
speed-up the measured schedules predict for its FLOPs meets the budget). The chosen schedule is the
most accurate one whose measured throughput meets the budget in a last timing of it, the best
constant r and r = 0 together; the constants are candidates too, so the answer is never worse than
the best constant r (equal when no per-block list beats it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pipeline.core.errors import FatError
from pipeline.evaluate.settings import TimingSettings
from pipeline.tune.candidates import Schedule, constant, decreasing, moves, useful_constants
from pipeline.tune.measure import FeatureCache, accuracy, name_of, throughput
from student.flops import analytic_gflops
from student.tome import tokens_per_layer

log = logging.getLogger(__name__)

NEIGHBOURS_PER_STEP = 6  # neighbours measured per local-search step


@dataclass(frozen=True)
class Budget:
    """One of: speed-up over r = 0, clips per second, analytic GFLOPs per clip."""

    speedup: float | None = None
    clips_per_s: float | None = None
    gflops: float | None = None

    def describe(self) -> str:
        if self.speedup is not None:
            return f"speed-up ≥ {self.speedup:g}× over r = 0"
        if self.clips_per_s is not None:
            return f"≥ {self.clips_per_s:g} clips/s"
        return f"≤ {self.gflops:g} GFLOPs/clip"

    def meets(self, candidate: "Candidate") -> bool:
        if self.gflops is not None:
            return candidate.gflops <= self.gflops
        if candidate.clips_per_s is None:
            return False
        if self.clips_per_s is not None:
            return candidate.clips_per_s >= self.clips_per_s
        return candidate.speedup is not None and candidate.speedup >= self.speedup

    def needed_speedup(self, base_clips_per_s: float, base_gflops: float) -> float:
        """The speed-up over r = 0 the budget asks for (a FLOPs budget as its FLOPs ratio)."""
        if self.speedup is not None:
            return self.speedup
        if self.clips_per_s is not None:
            return self.clips_per_s / base_clips_per_s
        return base_gflops / self.gflops


@dataclass
class Candidate:
    """One measured schedule."""

    schedule: Schedule
    kind: str  # "constant", "decreasing" (ToMe's r:-1) or "searched"
    label: str  # r=8, r=8:-1, or the per-block list
    metric: float
    metrics: dict[str, float]
    gflops: float
    tokens_out: int
    clips_per_s: float | None = None
    speedup: float | None = None  # clips/s over r = 0's, both from the same timing call

    def to_json(self) -> dict[str, Any]:
        return {"r": list(self.schedule), "kind": self.kind, "label": self.label, "metric": _finite(self.metric),
                "metrics": {k: _finite(v) for k, v in self.metrics.items()}, "gflops": round(self.gflops, 4),
                "tokens_out": self.tokens_out, "clips_per_second": self.clips_per_s, "speedup": self.speedup}


@dataclass
class TuneResult:
    chosen: Candidate
    best_constant: Candidate | None
    base: Candidate
    candidates: list[Candidate]
    final: dict[str, Candidate]  # chosen / best constant / r=0 as timed together at the end
    budget: Budget
    main: str
    evaluations: int
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """"beats" / "equals" the best constant r that meets the budget (or "no constant" when none does)."""
        if self.best_constant is None:
            return "no constant r meets the budget"
        return "beats" if self.chosen.metric > self.best_constant.metric else "equals"


class Search:
    """Measures schedules of one model on one feature cache; counts accuracy evaluations against a bound."""

    def __init__(self, model: Any, cache: FeatureCache, timing: TimingSettings, multi_label: bool, main: str,
                 max_evaluations: int, progress: Callable[[str], None] = log.info) -> None:
        self.model, self.cache, self.timing = model, cache, timing
        self.multi_label, self.main, self.max_evaluations = multi_label, main, max_evaluations
        self.depth, self.tokens = len(model.tome_r), model.num_tokens
        self.batch = cache.timing_batch(timing.batch_size)
        self.base_schedule: Schedule = (0,) * self.depth
        self.measured: dict[Schedule, Candidate] = {}
        self.evaluations = 0
        self.progress = progress

    def measure(self, entries: Sequence[tuple[Schedule, str, str]]) -> list[Candidate]:
        """Score and time new schedules (name and kind per entry), timed with r = 0 in the same call."""
        unseen = {s: (s, kind, label) for s, kind, label in reversed(entries) if s not in self.measured}
        fresh = list(reversed(unseen.values()))[: max(0, self.max_evaluations - self.evaluations)]
        if not fresh:
            return []
        schedules = [s for s, _, _ in fresh]
        metrics = accuracy(self.model, self.cache, schedules, self.timing, self.multi_label)
        self.evaluations += len(fresh)
        speeds = throughput(self.model, self.batch, [self.base_schedule, *schedules], self.timing)
        base = speeds[self.base_schedule]
        out = []
        for schedule, kind, label in fresh:
            candidate = Candidate(schedule, kind, label, metrics[schedule].get(self.main, float("nan")),
                                  metrics[schedule], analytic_gflops(self.model, list(schedule)),
                                  tokens_per_layer(self.model, list(schedule))[-1], speeds[schedule],
                                  speeds[schedule] / base)
            self.measured[schedule] = candidate
            out.append(candidate)
        self.progress(f"tune-r: {self.evaluations}/{self.max_evaluations} schedules scored; best of this round: "
                      f"{max(out, key=lambda c: c.metric).label} {self.main} "
                      f"{max(c.metric for c in out):.4f}")
        return out

    def predicted_speedup(self, schedule: Schedule) -> float:
        """The speed-up the measured schedules predict for this one's FLOPs (interpolated over FLOPs ratios)."""
        base_flops = analytic_gflops(self.model, list(self.base_schedule))
        points = sorted((base_flops / c.gflops, c.speedup) for c in self.measured.values() if c.speedup)
        ratios, speedups = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        return float(np.interp(base_flops / analytic_gflops(self.model, list(schedule)), ratios, speedups))


def tune(model: Any, cache: FeatureCache, timing: TimingSettings, budget: Budget, multi_label: bool, main: str,
         max_evaluations: int, progress: Callable[[str], None] = log.info) -> TuneResult:
    """Constants and ToMe's schedules, then the local search; the chosen schedule confirmed by a last timing."""
    search = Search(model, cache, timing, multi_label, main, max_evaluations, progress)
    depth, tokens = search.depth, search.tokens
    base_flops = analytic_gflops(model, 0)
    grid = useful_constants(depth, tokens)
    # r = 0 first; then the grid, cut past the first two constants whose FLOPs ratio is 1.5× what is asked
    # (merging more only loses accuracy; a quick timing of r = 0 turns a clips/s budget into a speed-up);
    # ToMe's decreasing schedules over the same range; at most half the evaluations, the rest is the search
    base_speed = throughput(model, search.batch, [search.base_schedule], timing)[search.base_schedule]
    needed = budget.needed_speedup(base_speed, base_flops)
    constants: list[tuple[Schedule, str, str]] = [(search.base_schedule, "constant", "r=0")]
    beyond = 0
    for r in grid[1:]:
        constants.append((constant(r, depth, tokens), "constant", f"r={r}"))
        beyond += base_flops / analytic_gflops(model, list(constants[-1][0])) > 1.5 * needed
        if beyond == 2:
            break
    rs = [int(label[2:]) for _, _, label in constants[1:]]
    decreasing_ones = [(decreasing(r, depth, tokens), "decreasing", f"r={r}:-1") for r in rs]
    room = max(max_evaluations // 2 - len(constants), 2)
    keep = np.linspace(0, len(decreasing_ones) - 1, min(room, len(decreasing_ones))).round().astype(int)
    entries = constants + [decreasing_ones[i] for i in sorted(set(keep.tolist()))]
    progress(f"tune-r: {budget.describe()} (about {needed:.2f}× r = 0's speed); {len(entries)} constant and "
             f"decreasing schedules first, at most {max_evaluations} in all")
    search.measure(entries)
    feasible = [c for c in search.measured.values() if budget.meets(c)]
    if not feasible:
        fastest = max(search.measured.values(), key=lambda c: c.speedup or 0)
        raise FatError(f"no schedule meets the budget ({budget.describe()}): the fastest measured, {fastest.label}, "
                       f"runs {fastest.clips_per_s:.1f} clips/s, {fastest.speedup:.2f}× r = 0, "
                       f"{fastest.gflops:.3f} GFLOPs/clip; ask for less")
    current = max(feasible, key=lambda c: (c.metric, c.speedup or 0))
    while search.evaluations < max_evaluations:
        neighbours = [s for s in moves(current.schedule, tokens) if s not in search.measured]
        if budget.gflops is not None:
            hopeful = [s for s in neighbours if analytic_gflops(model, list(s)) <= budget.gflops]
            cost = {s: -analytic_gflops(model, list(s)) for s in hopeful}
        else:
            predicted = {s: search.predicted_speedup(s) for s in neighbours}
            hopeful = [s for s in neighbours if predicted[s] >= needed]
            cost = predicted
        # the least merging that should still meet the budget first: it keeps the most tokens
        hopeful.sort(key=lambda s: cost[s])
        step = search.measure([(s, "searched", name_of(s)) for s in hopeful[:NEIGHBOURS_PER_STEP]])
        better = [c for c in step if budget.meets(c) and c.metric > current.metric]
        if not better:
            break
        current = max(better, key=lambda c: (c.metric, c.speedup or 0))
    return _confirm(search, budget, main)


def _confirm(search: Search, budget: Budget, main: str) -> TuneResult:
    """Time the best schedules again, with the best constant and r = 0, with twice the rounds: the chosen
    schedule is the most accurate one that meets the budget in this last measurement."""
    candidates = list(search.measured.values())
    base = search.measured[search.base_schedule]
    ranked = sorted((c for c in candidates if budget.meets(c)), key=lambda c: (-c.metric, -(c.speedup or 0)))
    constants = [c for c in ranked if c.kind == "constant"]
    finalists = list(dict.fromkeys([c.schedule for c in ranked[:3]] + [c.schedule for c in constants[:2]]))
    timing = replace(search.timing, rounds=2 * search.timing.rounds)
    speeds = throughput(search.model, search.batch, [search.base_schedule, *finalists], timing)
    final = {s: replace(search.measured[s], clips_per_s=speeds[s], speedup=speeds[s] / speeds[search.base_schedule])
             for s in finalists}
    confirmed = [final[s] for s in finalists if budget.meets(final[s])]
    notes = []
    if not confirmed:  # noise moved every finalist under the budget: keep the first measurement's ranking
        notes.append("no finalist met the budget again in the last timing; chosen from the first measurements")
        confirmed = [final[s] for s in finalists]
    chosen = max(confirmed, key=lambda c: (c.metric, c.speedup or 0))
    confirmed_constants = [c for c in confirmed if c.kind == "constant"]
    best_constant = max(confirmed_constants, key=lambda c: (c.metric, c.speedup or 0)) if confirmed_constants else None
    final_named = {"chosen": chosen, "r=0": replace(base, clips_per_s=speeds[search.base_schedule], speedup=1.0)}
    if best_constant is not None:
        final_named["best_constant"] = best_constant
    return TuneResult(chosen, best_constant, base, candidates, final_named, budget, main, search.evaluations, notes)


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The measured schedules no other one beats in both accuracy and throughput, fastest last."""
    ordered = sorted((c for c in candidates if c.clips_per_s), key=lambda c: (-c.clips_per_s, -c.metric))
    front, best = [], -np.inf
    for candidate in ordered:
        if candidate.metric > best:
            front.append(candidate)
            best = candidate.metric
    return front[::-1]


def _finite(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and np.isfinite(value) else None
