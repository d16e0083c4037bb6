"""An id → row index for millions of clip ids, held in two numpy arrays.

Open addressing (linear probing) over a fixed-width bytes array of the ids and an int64 slot
table: no Python object per id, so a forked DataLoader worker shares it without copy-on-write
churn and a spawned one receives it by pickle cheaply. Used by the logits store and the packed
shards (`pipeline.packed`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.core.errors import FatError

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


def _encode_ids(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Ids as a fixed-width bytes array (utf-8), the form the index compares."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "S":
        return ids
    return np.array([str(i).encode("utf-8") for i in ids], dtype=bytes) if len(ids) else np.zeros(0, dtype="S1")


def _hash_ids(keys: np.ndarray) -> np.ndarray:
    """FNV-1a over each id's bytes, vectorised over ids; independent of the array's padding width."""
    count = keys.shape[0]
    width = max(keys.dtype.itemsize, 1)
    octets = np.frombuffer(keys.tobytes(), dtype=np.uint8).reshape(count, width) if count else np.zeros((0, width), np.uint8)
    lengths = np.char.str_len(keys) if count else np.zeros(0, dtype=np.int64)
    hashes = np.full(count, _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in range(width):
            inside = column < lengths
            mixed = (hashes ^ octets[:, column].astype(np.uint64)) * _FNV_PRIME
            hashes = np.where(inside, mixed, hashes)
    return hashes


class IdIndex:
    """O(1) id → row lookup: open addressing (linear probing) over numpy arrays.

    Built vectorised; duplicated ids are an error naming the id.
    """

    def __init__(self, ids: Sequence[str] | np.ndarray, source: str = "store") -> None:
        self.keys = _encode_ids(ids)
        count = self.keys.shape[0]
        size = 8
        while size < 2 * count:
            size *= 2
        self.mask = np.uint64(size - 1)
        self.table = np.full(size, -1, dtype=np.int64)
        hashes = _hash_ids(self.keys)
        pending = np.arange(count, dtype=np.int64)
        probe = np.zeros(count, dtype=np.uint64)
        while pending.size:
            slots = ((hashes[pending] + probe[pending]) & self.mask).astype(np.int64)
            occupants = self.table[slots]
            taken = occupants >= 0
            clash = taken & (self.keys[np.where(taken, occupants, 0)] == self.keys[pending])
            if clash.any():
                duplicate = self.keys[pending[np.flatnonzero(clash)[0]]].decode("utf-8", "replace")
                raise FatError(f"{source}: id {duplicate!r} occurs more than once")
            free = ~taken
            winners_slots, first = np.unique(slots[free], return_index=True)
            winners = pending[free][first]
            self.table[winners_slots] = winners
            probe[pending[taken]] += np.uint64(1)  # a slot held by another id: look further
            placed = np.zeros(count, dtype=bool)
            placed[winners] = True
            pending = pending[~placed[pending]]  # losers of a free slot retry it (and meet its winner)

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def rows_of(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each id, −1 where absent."""
        queries = _encode_ids(ids)
        rows = np.full(queries.shape[0], -1, dtype=np.int64)
        if not queries.shape[0] or not len(self):
            return rows
        fits = np.char.str_len(queries) <= self.keys.dtype.itemsize  # longer than every stored id: absent
        active = np.flatnonzero(fits)
        slots = (_hash_ids(queries[active]) & self.mask).astype(np.int64)
        while active.size:
            occupants = self.table[slots]
            empty = occupants < 0
            match = ~empty & (self.keys[np.where(empty, 0, occupants)] == queries[active])
            rows[active[match]] = occupants[match]
            keep = ~empty & ~match
            active, slots = active[keep], (slots[keep] + 1) & int(self.mask)
        return rows

    def row_of(self, clip_id: str) -> int | None:
        row = int(self.rows_of([clip_id])[0])
        return None if row < 0 else row
