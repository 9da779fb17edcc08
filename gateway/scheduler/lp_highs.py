"""The site LP (see problem.py) handed to HiGHS directly as a sparse matrix.

Variables exist only where an EV is connected, so an idle EVSE or an offline per-EV slot over a
long episode costs nothing; cvxpy's canonicalisation, the wall at thousands of slots, is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import highspy
import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from gateway.scheduler.problem import (
    EPS_PER_KWH,
    EXCESS_PENALTY_PER_KWH,
    FloatArr,
    Prepared,
    RawSolution,
)

INF = highspy.kHighsInf


@dataclass
class Built:
    """An assembled LP and where each variable block starts."""

    lp: highspy.HighsLp
    p: Prepared
    si: NDArray[np.int64]  # slot of each connected cell (charge columns)
    ti: NDArray[np.int64]  # step of each connected cell
    dk: NDArray[np.int64]  # cells of slots that may discharge (discharge and energy columns)
    lk: NDArray[np.int64]  # per dischargeable slot, its last cell's index into dk
    ls: NDArray[np.int64]  # and that slot
    offsets: tuple[int, ...]


def solve(p: Prepared, time_limit_s: float) -> RawSolution:
    return run(build(p), time_limit_s)


def build(p: Prepared, reduce_charge_only: bool = False) -> Built:
    """Columns: charge, discharge and battery energy per connected cell; unmet energy per slot;
    the shortfall at each earlier possible departure; site import, export and the two limit slacks per step; the peak;
    the peak above each priced level.

    ``reduce_charge_only``: slots that cannot discharge get no discharge or energy columns (their
    floor holds by itself and only the final energy can reach the ceiling, so two rows replace
    the dynamics). Same optimum, a third fewer columns at half bidirectional slots."""
    s, n = p.shape
    si, ti = np.nonzero(p.conn)  # connected cells, slot-major then time order
    k = len(si)
    hk = p.h[ti]
    # Measured: the reduced charge-only form is slower in HiGHS' IPM (the per-slot sum rows fill
    # the normal equations more than the banded dynamics do), so it is off by default.
    # (A tapering slot keeps its energy columns: its taper rows read them.)
    dis_slot: NDArray[np.bool_] = p.dmax.any(axis=1) | (p.taper > 0) | np.full(s, not reduce_charge_only)
    dk = np.flatnonzero(dis_slot[si])
    kd = len(dk)
    sd, td = si[dk], ti[dk]
    oc, od, oe = 0, k, k + kd
    ou = k + 2 * kd
    nr = len(p.risk_slot)
    orisk = ou + s  # shortfall at each earlier possible departure
    oimp = orisk + nr
    oexp, oxi, oxe = oimp + n, oimp + 2 * n, oimp + 3 * n
    opk = oimp + 4 * n
    nz = len(p.peak_levels)
    ncol = opk + 1 + nz  # then the peak above each priced level

    cost = np.zeros(ncol)
    lo = np.zeros(ncol)
    hi = np.full(ncol, INF)
    cost[oc:od] = (EPS_PER_KWH + p.charge_bias[ti] * p.urgency[si]) * hk
    cost[od:oe] = (p.wear[td] + EPS_PER_KWH * p.h[td])
    cost[ou:orisk] = p.unmet_penalty
    cost[orisk:oimp] = p.risk_penalty
    # The grid-event payment adds to both prices (see problem.py); its constant part is left out.
    cost[oimp:oexp] = (p.price_imp + p.pay + EPS_PER_KWH) * p.h
    cost[oexp:oxi] = (-p.price_exp - p.pay + EPS_PER_KWH) * p.h
    cost[oxi:opk] = EXCESS_PENALTY_PER_KWH * np.tile(p.h, 2)
    cost[opk] = p.demand
    cost[opk + 1:] = p.peak_extra
    lo[oc:od] = p.cmin[si, ti]
    hi[oc:od] = p.cmax[si, ti]
    hi[od:oe] = p.dmax[sd, td]
    lo[oe:ou] = p.floor[sd]
    hi[oe:ou] = p.cap[sd]
    has = p.conn.any(axis=1)
    hi[ou:orisk] = np.where(has, INF, 0.0)
    lo[opk] = p.peak0

    rows: list[NDArray[np.int64]] = []
    cols: list[NDArray[np.int64]] = []
    vals: list[FloatArr] = []

    def add(r: NDArray[Any], c: NDArray[Any], v: NDArray[Any]) -> None:
        rows.append(np.asarray(r, dtype=np.int64))
        cols.append(np.asarray(c, dtype=np.int64))
        vals.append(np.asarray(v, dtype=float))

    jj = np.arange(kd)
    first = np.ones(kd, dtype=bool)
    first[1:] = sd[1:] != sd[:-1]
    # Dynamics: E_j - E_prev - h eff_c c + h / eff_d d_j = (E0 if first else 0).
    add(jj, oe + jj, np.ones(kd))
    prev = jj[~first]
    add(prev, oe + prev - 1, -np.ones(len(prev)))
    add(jj, oc + dk, -p.h[td] * p.eff_c[sd])
    add(jj, od + jj, p.h[td] / p.eff_d[sd])
    rlo = [np.where(first, p.e0[sd], 0.0)]
    rhi = [rlo[0].copy()]
    r0 = kd
    # Target, dischargeable slots: E_last + u >= target.
    last = np.ones(kd, dtype=bool)
    last[:-1] = sd[:-1] != sd[1:]
    lk = jj[last]
    ls = sd[last]
    nt = len(lk)
    add(r0 + np.arange(nt), oe + lk, np.ones(nt))
    add(r0 + np.arange(nt), ou + ls, np.ones(nt))
    rlo.append(p.target[ls])
    rhi.append(np.full(nt, INF))
    r0 += nt
    # Charge-only slots: energy added + u >= target - E0, energy added <= cap - E0.
    mk = np.flatnonzero(~dis_slot[si])
    ms = np.unique(si[mk])
    nm = len(ms)
    mrow = np.searchsorted(ms, si[mk])
    gain = hk[mk] * p.eff_c[si[mk]]
    add(r0 + mrow, oc + mk, gain)
    add(r0 + np.arange(nm), ou + ms, np.ones(nm))
    rlo.append(p.target[ms] - p.e0[ms])
    rhi.append(np.full(nm, INF))
    r0 += nm
    add(r0 + mrow, oc + mk, gain)
    rlo.append(np.full(nm, -INF))
    rhi.append(p.cap[ms] - p.e0[ms])
    r0 += nm
    # Earlier possible departures: E at that step + shortfall >= target (dischargeable slots), or
    # the energy added up to that step + shortfall >= target - E0 (reduced charge-only slots).
    if nr:
        rr = np.arange(nr)
        on_e = dis_slot[p.risk_slot]
        re_ = rr[on_e]
        # Energy columns are slot-major then time, so (slot, step) sorts as slot * n + step.
        cell = np.searchsorted(sd * n + td, p.risk_slot[re_] * n + p.risk_step[re_])
        add(r0 + re_, oe + cell, np.ones(len(re_)))
        for j in rr[~on_e]:
            sel = np.flatnonzero((si == p.risk_slot[j]) & (ti <= p.risk_step[j]))
            add(np.full(len(sel), r0 + j), oc + sel, hk[sel] * p.eff_c[p.risk_slot[j]])
        add(r0 + rr, orisk + rr, np.ones(nr))
        rlo.append(np.where(on_e, p.risk_target, p.risk_target - p.e0[p.risk_slot]))
        rhi.append(np.full(nr, INF))
        r0 += nr
    # The taper: c + k E <= k F, E the energy at the step's end.
    nt_ = len(p.taper_slot)
    if nt_:
        tr = r0 + np.arange(nt_)
        ts, tts = p.taper_slot, p.taper_step
        kk = p.taper[ts]
        add(tr, oc + np.searchsorted(si * n + ti, ts * n + tts), np.ones(nt_))
        add(tr, oe + np.searchsorted(sd * n + td, ts * n + tts), kk)
        rlo.append(np.full(nt_, -INF))
        rhi.append(kk * p.taper_full[ts])
        r0 += nt_
    tt = np.arange(n)
    one = np.ones(n)
    # Balance: imp - exp - sum c + sum d = building.
    add(r0 + tt, oimp + tt, one)
    add(r0 + tt, oexp + tt, -one)
    add(r0 + ti, oc + np.arange(k), -np.ones(k))
    add(r0 + td, od + jj, np.ones(kd))
    rlo.append(p.building)
    rhi.append(p.building)
    r0 += n
    # Limits, with slacks that only building load should ever need.
    add(r0 + tt, oimp + tt, one)
    add(r0 + tt, oxi + tt, -one)
    rlo.append(np.full(n, -INF))
    rhi.append(p.imp_lim)
    r0 += n
    add(r0 + tt, oexp + tt, one)
    add(r0 + tt, oxe + tt, -one)
    rlo.append(np.full(n, -INF))
    rhi.append(p.exp_lim)
    r0 += n
    # Peak epigraph, over the steps of this billing period.
    tm = np.flatnonzero(p.demand_mask)
    nm_ = len(tm)
    add(r0 + np.arange(nm_), oimp + tm, np.ones(nm_))
    add(r0 + np.arange(nm_), np.full(nm_, opk), -np.ones(nm_))
    rlo.append(np.full(nm_, -INF))
    rhi.append(np.zeros(nm_))
    r0 += nm_
    # The peak above each priced level: z_j - peak >= -level_j.
    if nz:
        zz = np.arange(nz)
        add(r0 + zz, opk + 1 + zz, np.ones(nz))
        add(r0 + zz, np.full(nz, opk), -np.ones(nz))
        rlo.append(-p.peak_levels)
        rhi.append(np.full(nz, INF))
        r0 += nz

    a = sp.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r0, ncol)
    )
    lp = highspy.HighsLp()
    lp.num_col_ = ncol
    lp.num_row_ = r0
    lp.col_cost_ = cost
    lp.col_lower_ = lo
    lp.col_upper_ = hi
    lp.row_lower_ = np.concatenate(rlo)
    lp.row_upper_ = np.concatenate(rhi)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr
    lp.a_matrix_.index_ = a.indices
    lp.a_matrix_.value_ = a.data
    offsets = (oc, od, oe, ou, orisk, oimp, oexp, oxi, oxe, opk, ncol)
    return Built(lp=lp, p=p, si=si, ti=ti, dk=dk, lk=lk, ls=ls, offsets=offsets)


def run(b: Built, time_limit_s: float) -> RawSolution:
    p, si, ti, lk, ls = b.p, b.si, b.ti, b.lk, b.ls
    s, n = p.shape
    oc, od, oe, ou, orisk, oimp, oexp, oxi, oxe, opk, ncol = b.offsets
    h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    # Dual simplex (serial): on bench/scheduler_scaling.py at 1,000 slots x 35 steps (the grid then) it
    # took 1.3-1.5 s of CPU per re-solve against 2.2-2.4 s for the IPM (ipx, crossover off), same
    # objective to 1e-9 (on a slower machine later: 2.55 s against 2.79 s; the primal simplex 22 s);
    # also faster at 10 and 100 slots, within 10 % either way on the evaluator's 5-minute offline LPs,
    # about even at 10,000 slots (45 s). Looser feasibility tolerances (1e-6) made it slower, other edge
    # weights or scaling no faster. This highspy build has no HiPO ("hipo" is refused: no BLAS/METIS).
    h.setOptionValue("solver", "simplex")
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("threads", 1)
    h.passModel(b.lp)
    h.run()
    status = h.getModelStatus()
    ok = status == highspy.HighsModelStatus.kOptimal
    x = np.asarray(h.getSolution().col_value, dtype=float) if ok else np.zeros(ncol)
    c = np.zeros((s, n))
    d = np.zeros((s, n))
    c[si, ti] = x[oc:od]
    d[si[b.dk], ti[b.dk]] = x[od:oe]
    # Charge-only slots: the energy added; dischargeable ones: the last energy column.
    e_end = p.e0 + (c * p.h[None, :] * p.eff_c[:, None]).sum(axis=1)
    e_end[ls] = x[oe + lk]
    return RawSolution(
        c=c, d=d, e_end=e_end, u=x[ou:orisk], imp=x[oimp:oexp], exp=x[oexp:oxi], xi=x[oxi:oxe],
        xe=x[oxe:opk], peak=float(x[opk]), status=h.modelStatusToString(status),
        ok=ok,
    )
