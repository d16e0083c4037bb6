"""Which merge schedules to try: constant r, ToMe's decreasing schedules, and per-block moves from a schedule.

A schedule is a tuple of per-block merge counts, each within what its block can merge (half the
unprotected tokens left), so every candidate is a valid schedule file as it stands.
"""

from __future__ import annotations

from collections.abc import Iterable

from student.tome import parse_r

Schedule = tuple[int, ...]
PROTECTED = 2  # class and distillation tokens


def capped(values: Iterable[int], tokens: int) -> Schedule:
    """`values` with each block's count cut to what it can merge given the tokens left before it."""
    out = []
    for value in values:
        value = max(0, min(int(value), (tokens - PROTECTED) // 2))
        out.append(value)
        tokens -= value
    return tuple(out)


def useful_constants(depth: int, tokens: int) -> list[int]:
    """Constant r values from 0 up to the first that merges all it can in the first block, spaced
    about 1.25× apart (every integer while small): the grid a user would sweep by hand."""
    top = (tokens - PROTECTED) // 2
    values, r = [0], 1
    while r < top:
        values.append(r)
        r = max(r + 1, round(r * 1.25))
    values.append(top)
    # beyond the r at which the last block would have nothing left to merge, constants only repeat
    distinct: dict[Schedule, int] = {}
    for value in values:
        distinct.setdefault(capped([value] * depth, tokens), value)
    return sorted(distinct.values())


def constant(r: int, depth: int, tokens: int) -> Schedule:
    return capped([r] * depth, tokens)


def decreasing(r: int, depth: int, tokens: int) -> Schedule:
    """ToMe's decreasing schedule (r, −1): 2r in the first block down to 0 in the last."""
    return capped(parse_r(depth, (r, -1.0)), tokens)


def moves(schedule: Schedule, tokens: int, steps: Iterable[int] = (1, 2, 4)) -> list[Schedule]:
    """Neighbours of `schedule`: `step` merges moved from one block to another (same total, other
    cost: earlier merges are cheaper), and one block's count raised or lowered by `step`."""
    depth = len(schedule)
    found: dict[Schedule, None] = {}
    for step in steps:
        for i in range(depth):
            for delta in (step, -step):
                raised = list(schedule)
                raised[i] += delta
                found.setdefault(capped(raised, tokens))
            for j in range(depth):
                if i == j or schedule[i] < step:
                    continue
                moved = list(schedule)
                moved[i] -= step
                moved[j] += step
                found.setdefault(capped(moved, tokens))
    found.pop(schedule, None)
    return list(found)
