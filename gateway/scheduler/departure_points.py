"""A departure distribution cut down to the few points the LP prices a shortfall at. Pure.

The plan prices a shortfall at each point by the probability of leaving there, so every sample
has to be counted at a point no later than itself (the plan stays cautious) and the points should
move as little probability as possible, as little time earlier. Fixed quantile buckets did not:
the first bucket of a depot's evening arrivals (5 % of the mass, planned at its lower edge) held
the one van in a hundred that stayed 1.5 h and four that left at dawn, so every unannounced van
was charged at the evening's peak price in case it left by eight (docs/benchmarks-scheduler.md).

Here the samples are binned to the plan's finest step and neighbours are merged greedily, each
time the pair whose later mass moves earlier least (mass x time moved), until ``points`` are left:
a rare short stay keeps its own small weight, and a tight cluster collapses to its first sample.
"""

from __future__ import annotations

import heapq
from functools import lru_cache

import numpy as np

from gateway.scheduler.forecast import FloatArr

POINTS = 6  # the most points one EV's departure is planned at (each adds one row and column)
BIN_S = 300.0  # the plan's finest step: departures closer than this are one point


def departure_points(samples: FloatArr, points: int = POINTS) -> tuple[list[float], list[float]]:
    """(times, probabilities) for ``samples`` (POSIX seconds, ascending, not empty): at most
    ``points`` times, ascending, each at or before every sample it stands for; probabilities sum to 1."""
    base = float(samples[0])
    bins, counts = np.unique(np.floor((samples - base) / BIN_S).astype(np.int64), return_counts=True)
    at, mass = _merge(bins.tobytes(), counts.tobytes(), points)
    n = float(len(samples))
    return [base + b * BIN_S for b in at], [m / n for m in mass]


@lru_cache(maxsize=4096)
def _merge(bins_b: bytes, counts_b: bytes, points: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Greedy merging on bins (cached: the EVs of one arrival hour share their history, and a
    re-plan asks for every EV)."""
    t = np.frombuffer(bins_b, dtype=np.int64).tolist()
    w = np.frombuffer(counts_b, dtype=np.int64).tolist()
    m = len(t)
    if m <= points:
        return tuple(t), tuple(w)
    nxt = [*range(1, m), -1]
    prv = [-1, *range(m - 1)]
    alive = [True] * m
    version = [0] * m
    # (cost of merging i's next neighbour into i, i, version of i when pushed)
    heap = [(w[i + 1] * (t[i + 1] - t[i]), i, 0) for i in range(m - 1)]
    heapq.heapify(heap)
    left = m
    while left > points:
        _, i, ver = heapq.heappop(heap)
        j = nxt[i]
        if not alive[i] or ver != version[i] or j < 0:
            continue  # stale: i changed since this entry was pushed
        w[i] += w[j]
        alive[j] = False
        nxt[i] = nxt[j]
        if nxt[j] >= 0:
            prv[nxt[j]] = i
        left -= 1
        version[i] += 1
        if nxt[i] >= 0:
            heapq.heappush(heap, (w[nxt[i]] * (t[nxt[i]] - t[i]), i, version[i]))
        p = prv[i]
        if p >= 0:  # i's mass grew: moving it into p now costs more
            version[p] += 1
            heapq.heappush(heap, (w[i] * (t[i] - t[p]), p, version[p]))
    keep = [i for i in range(m) if alive[i]]
    return tuple(t[i] for i in keep), tuple(w[i] for i in keep)
