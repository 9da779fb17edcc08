"""The site LP (see problem.py) in cvxpy with Parameters (DPP): compiled once per shape, re-solved
by updating parameters.

Every Parameter sits in an affine position (bounds, right-hand sides, cost vectors) except one
length-T vector scaling the import in the peak epigraph: a Parameter multiplying an S x T variable
makes DPP compilation explode. That is why the variables are energies per step (kWh), not powers:
step lengths then only scale right-hand sides, so a new grid of the same length reuses the model.
Efficiencies are per-slot *constants* (they change the matrix), part of the cache key.

The battery taper (problem.py) multiplies the energy by the step's length, so it is the second
Parameter times a variable, kept to the tapering slots only (their indices are part of the cache
key: an EV whose battery becomes known, or leaves, compiles a new model; the highs backend builds
every LP anew anyway). Above ``TAPER_SLOTS_MAX`` tapering slots that product is the wall again
(1,000 slots x 31 steps: 70 s to compile, 40 s per re-solve, against 2.5 s without it), so this
backend then plans without the taper, as before the LP had one; the highs backend, the default,
always plans it.
"""
# cvxpy's atoms are re-exported in ways mypy cannot see, and its solve() is untyped.
# mypy: disable-error-code="attr-defined,no-untyped-call"

from __future__ import annotations

from typing import Any

import cvxpy as cp
import numpy as np

from gateway.scheduler.problem import EPS_PER_KWH, EXCESS_PENALTY_PER_KWH, Prepared, RawSolution


def risks_per_slot(p: Prepared) -> int:
    """The most earlier possible departures any one slot has (the model's risk columns per slot)."""
    return int(np.bincount(p.risk_slot).max()) if len(p.risk_slot) else 0


def shape_key(p: Prepared) -> tuple[Any, ...]:
    s, n = p.shape
    return (s, n, risks_per_slot(p), len(p.peak_levels), tuple(np.round(p.eff_c, 4)), tuple(np.round(p.eff_d, 4)),
            tuple(int(i) for i in tapering(p)))


TAPER_SLOTS_MAX = 100


def tapering(p: Prepared) -> Any:
    """The slots with a taper row (those with a cell where it may bind); none above TAPER_SLOTS_MAX."""
    slots = np.unique(p.taper_slot)
    return slots if len(slots) <= TAPER_SLOTS_MAX else slots[:0]


class CvxModel:
    def __init__(self, p: Prepared) -> None:
        s, n = p.shape
        self.amax = cp.Parameter((s, n), nonneg=True)
        self.amin = cp.Parameter((s, n), nonneg=True)
        self.bmax = cp.Parameter((s, n), nonneg=True)
        self.e0 = cp.Parameter(s)
        self.floor = cp.Parameter((s, n))
        self.cap = cp.Parameter((s, n))
        self.target = cp.Parameter(s)
        self.building_h = cp.Parameter(n)
        self.imp_lim_h = cp.Parameter(n)
        self.exp_lim_h = cp.Parameter(n)
        self.inv_h = cp.Parameter(n, nonneg=True)
        # 0 inside the billing period; a bound no import reaches outside it (a Parameter cannot
        # select rows, and a Parameter times a variable would break fast DPP compilation).
        self.peak_slack = cp.Parameter(n, nonneg=True)
        self.c_imp = cp.Parameter(n)
        self.c_exp = cp.Parameter(n)
        self.c_charge = cp.Parameter(n, nonneg=True)
        # The urgency's share of the early-charge preference, per slot, on the step-time ramp of
        # the problem this shape was compiled for (a constant: a per-slot Parameter times a
        # per-step one is not DPP, and a (slots, steps) Parameter compiled to a dense map, out
        # of memory at 1,000 slots). It only orders EVs that tie, so a later grid of the same
        # shape, whose steps are a few minutes off, orders them the same.
        self.urgency = cp.Parameter(s, nonneg=True)
        self._ramp = np.asarray(p.charge_bias, dtype=float).copy()
        self.wear = cp.Parameter(n, nonneg=True)  # per AC kWh discharged in each step
        self.demand = cp.Parameter(nonneg=True)
        self.peak0 = cp.Parameter()
        nz = len(p.peak_levels)  # priced peak levels (part of the shape key)
        self.peak_levels = cp.Parameter(nz) if nz else None
        self.peak_extra = cp.Parameter(nz, nonneg=True) if nz else None
        self.unmet = cp.Parameter(s, nonneg=True)
        # The taper of the slots in ``self.tapered``, at every step: a + G E <= R with G = k h
        # and R = k h F. A row holds at a step the EV is not plugged in too (a = 0, E <= cap <= F).
        self.tapered = tapering(p)
        m = len(self.tapered)
        self.taper_g = cp.Parameter((m, n), nonneg=True) if m else None
        self.taper_r = cp.Parameter((m, n)) if m else None
        # Earlier possible departures, dense over (slot, step): the target where there is one and
        # the floor elsewhere (always met), and the price per kWh short there (EPS elsewhere, so the
        # unused shortfall variables stay bounded for the interior-point solver).
        # Up to k per slot. Which step each one is at changes between solves, and a Parameter that
        # selects a step would multiply a variable: so the j-th shortfall of a slot holds against
        # every step, with the target as right-hand side at its step and the floor (always met)
        # elsewhere; presolve drops the rows that cannot bind. Its price is a vector of s x k
        # entries: a Parameter cost vector compiles in time that grows with the square of its
        # size (s x T entries took 130 s at 1,000 slots; s x k with k <= 5 takes seconds).
        self.k = k = risks_per_slot(p)
        self.risk_target = [cp.Parameter((s, n)) for _ in range(k)]
        self.risk_price = cp.Parameter(s * k, nonneg=True) if k else None

        a = cp.Variable((s, n), nonneg=True)  # AC kWh charged in the step
        b = cp.Variable((s, n), nonneg=True)  # AC kWh discharged in the step
        e = cp.Variable((s, n))  # battery kWh at the end of the step
        u = cp.Variable(s, nonneg=True)
        r = cp.Variable((s, k), nonneg=True) if k else None  # kWh short at an earlier possible departure
        imp = cp.Variable(n, nonneg=True)  # kWh imported in the step
        exp = cp.Variable(n, nonneg=True)
        xi = cp.Variable(n, nonneg=True)
        xe = cp.Variable(n, nonneg=True)
        peak = cp.Variable()
        above = cp.Variable(nz, nonneg=True) if nz else None  # the peak above each priced level
        ec = np.repeat(p.eff_c[:, None], n, axis=1)
        ed = np.repeat(1.0 / p.eff_d[:, None], n, axis=1)
        flow = cp.multiply(ec, a) - cp.multiply(ed, b)
        cons = [
            a <= self.amax,
            a >= self.amin,
            b <= self.bmax,
            e[:, 0] == self.e0 + flow[:, 0],
            e >= self.floor,
            e <= self.cap,
            e[:, n - 1] + u >= self.target,
            imp - exp - cp.sum(a, axis=0) + cp.sum(b, axis=0) == self.building_h,
            imp - xi <= self.imp_lim_h,
            exp - xe <= self.exp_lim_h,
            cp.multiply(self.inv_h, imp) <= peak + self.peak_slack,
            peak >= self.peak0,
        ]
        if above is not None:
            cons.append(above >= peak - self.peak_levels)
        if n > 1:
            cons.append(e[:, 1:] == e[:, :-1] + flow[:, 1:])
        if self.taper_g is not None and self.taper_r is not None:
            cons.append(a[self.tapered, :] + cp.multiply(self.taper_g, e[self.tapered, :]) <= self.taper_r)
        across = np.ones((1, n))
        if r is not None:
            for j in range(k):
                cons.append(e + cp.reshape(r[:, j], (s, 1), order="F") @ across >= self.risk_target[j])
        obj = (
            self.c_imp @ imp - self.c_exp @ exp
            + self.c_charge @ cp.sum(a, axis=0)
            + self.urgency @ (a @ self._ramp)
            + self.demand * peak
            + (self.peak_extra @ above if above is not None and self.peak_extra is not None else 0.0)
            + self.wear @ cp.sum(b, axis=0)
            + self.unmet @ u
            + (self.risk_price @ cp.vec(r, order="F") if r is not None and self.risk_price is not None else 0.0)
            + EXCESS_PENALTY_PER_KWH * cp.sum(xi + xe)
            + EPS_PER_KWH * (cp.sum(a) + cp.sum(b) + cp.sum(imp) + cp.sum(exp))
        )
        self.vars = (a, b, e, u, imp, exp, xi, xe, peak)
        self.problem = cp.Problem(cp.Minimize(obj), cons)
        self._compiled = False

    def _set(self, p: Prepared) -> None:
        h = p.h
        has = p.conn.any(axis=1)
        self.amax.value = p.cmax * h
        self.amin.value = np.minimum(p.cmin, p.cmax) * h
        self.bmax.value = p.dmax * h
        self.e0.value = p.e0
        self.floor.value = np.repeat(p.floor[:, None], len(h), axis=1)
        self.cap.value = np.repeat(p.cap[:, None], len(h), axis=1)
        # A slot with nothing connected must not count as unmet.
        self.target.value = np.where(has, p.target, p.e0)
        self.building_h.value = p.building * h
        self.imp_lim_h.value = p.imp_lim * h
        self.exp_lim_h.value = p.exp_lim * h
        self.inv_h.value = 1.0 / h
        big = 10.0 * (float(np.max(p.imp_lim)) + float(np.max(np.abs(p.building))) + 1.0)
        self.peak_slack.value = np.where(p.demand_mask, 0.0, big)
        self.c_imp.value = p.price_imp + p.pay
        self.c_exp.value = p.price_exp + p.pay
        self.c_charge.value = p.charge_bias
        self.urgency.value = np.maximum(p.urgency - 1.0, 0.0)
        self.wear.value = p.wear / h
        self.demand.value = p.demand
        self.peak0.value = p.peak0
        if self.peak_levels is not None and self.peak_extra is not None:
            self.peak_levels.value = p.peak_levels
            self.peak_extra.value = p.peak_extra
        self.unmet.value = p.unmet_penalty
        if self.taper_g is not None and self.taper_r is not None:
            kh = p.taper[self.tapered, None] * h[None, :]
            self.taper_g.value = kh
            self.taper_r.value = kh * p.taper_full[self.tapered, None]
        if self.k and self.risk_price is not None:
            s = len(p.e0)
            # The j-th earlier departure of each slot, in the order prepare() listed them.
            nth = np.zeros(len(p.risk_slot), dtype=int)
            seen: dict[int, int] = {}
            for i, slot in enumerate(p.risk_slot):
                nth[i] = seen.get(int(slot), 0)
                seen[int(slot)] = nth[i] + 1
            price = np.full((s, self.k), EPS_PER_KWH)  # unused shortfall columns stay bounded
            for j in range(self.k):
                tgt = np.repeat(p.floor[:, None], len(h), axis=1)
                sel = nth == j
                tgt[p.risk_slot[sel], p.risk_step[sel]] = p.risk_target[sel]
                price[p.risk_slot[sel], j] = p.risk_penalty[sel]
                self.risk_target[j].value = tgt
            self.risk_price.value = price.flatten(order="F")

    def solve(self, p: Prepared, time_limit_s: float) -> RawSolution:
        self._set(p)
        s, n = p.shape
        try:
            self.problem.solve(
                solver=cp.HIGHS, warm_start=False, canon_backend=cp.SCIPY_CANON_BACKEND,
                highs_options={"solver": "ipm", "run_crossover": "off", "time_limit": float(time_limit_s),
                               "threads": 1},
            )
            status = str(self.problem.status)
        except cp.error.SolverError as exc:
            status = f"solver error: {exc}"
        a, b, e, u, imp, exp, xi, xe, peak = self.vars
        ok = status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) and a.value is not None
        h = p.h
        if not ok:
            z = np.zeros((s, n))
            return RawSolution(c=z, d=z, e_end=p.e0.copy(), u=np.zeros(s), imp=np.zeros(n), exp=np.zeros(n),
                               xi=np.zeros(n), xe=np.zeros(n), peak=p.peak0, status=status, ok=False)
        return RawSolution(
            c=np.asarray(a.value) / h, d=np.asarray(b.value) / h, e_end=np.asarray(e.value)[:, -1],
            u=np.asarray(u.value), imp=np.asarray(imp.value) / h, exp=np.asarray(exp.value) / h,
            xi=np.asarray(xi.value) / h, xe=np.asarray(xe.value) / h, peak=float(np.asarray(peak.value)),
            status=status, ok=True,
        )
