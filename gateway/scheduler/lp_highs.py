"""The site LP (see problem.py) handed to HiGHS directly as a sparse matrix.

Variables exist only where an EV is connected, so an idle EVSE or an offline per-EV slot over a
long episode costs nothing; cvxpy's canonicalisation, the wall at thousands of slots, is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    si: NDArray[np.int64]
    ti: NDArray[np.int64]
    lk: NDArray[np.int64]
    ls: NDArray[np.int64]
    offsets: tuple[int, ...]


def solve(p: Prepared, time_limit_s: float) -> RawSolution:
    return run(build(p), time_limit_s)


def build(p: Prepared) -> Built:
    s, n = p.shape
    si, ti = np.nonzero(p.conn)  # connected cells, slot-major then time order
    k = len(si)
    hk = p.h[ti]
    # Column layout.
    oc, od, oe = 0, k, 2 * k
    ou = 3 * k
    oimp = ou + s
    oexp, oxi, oxe = oimp + n, oimp + 2 * n, oimp + 3 * n
    opk = oimp + 4 * n
    ncol = opk + 1

    cost = np.zeros(ncol)
    lo = np.zeros(ncol)
    hi = np.full(ncol, INF)
    cost[oc:od] = EPS_PER_KWH * hk
    cost[od:oe] = (p.wear[ti] + EPS_PER_KWH * hk)
    cost[ou:oimp] = p.unmet_penalty
    # The grid-event payment adds to both prices (see problem.py); its constant part is left out.
    cost[oimp:oexp] = (p.price_imp + p.pay + EPS_PER_KWH) * p.h
    cost[oexp:oxi] = (-p.price_exp - p.pay + EPS_PER_KWH) * p.h
    cost[oxi:opk] = EXCESS_PENALTY_PER_KWH * np.tile(p.h, 2)
    cost[opk] = p.demand
    lo[oc:od] = p.cmin[si, ti]
    hi[oc:od] = p.cmax[si, ti]
    hi[od:oe] = p.dmax[si, ti]
    lo[oe:ou] = p.floor[si]
    hi[oe:ou] = p.cap[si]
    has = p.conn.any(axis=1)
    hi[ou:oimp] = np.where(has, INF, 0.0)
    lo[opk] = p.peak0

    rows: list[FloatArr] = []
    cols: list[FloatArr] = []
    vals: list[FloatArr] = []

    def add(r: FloatArr, c: FloatArr, v: FloatArr) -> None:
        rows.append(np.asarray(r, dtype=np.int64))
        cols.append(np.asarray(c, dtype=np.int64))
        vals.append(np.asarray(v, dtype=float))

    kk = np.arange(k)
    first = np.ones(k, dtype=bool)
    first[1:] = si[1:] != si[:-1]
    # Dynamics: E_k - E_prev - h eff_c c_k + h / eff_d d_k = (E0 if first else 0).
    add(kk, oe + kk, np.ones(k))
    prev = kk[~first]
    add(prev, oe + prev - 1, -np.ones(len(prev)))
    add(kk, oc + kk, -hk * p.eff_c[si])
    add(kk, od + kk, hk / p.eff_d[si])
    rlo = [np.where(first, p.e0[si], 0.0)]
    rhi = [rlo[0].copy()]
    r0 = k
    # Target: E_last + u >= target, for connected slots.
    last = np.ones(k, dtype=bool)
    last[:-1] = si[:-1] != si[1:]
    lk = kk[last]
    ls = si[last]
    nt = len(lk)
    add(r0 + np.arange(nt), oe + lk, np.ones(nt))
    add(r0 + np.arange(nt), ou + ls, np.ones(nt))
    rlo.append(p.target[ls])
    rhi.append(np.full(nt, INF))
    r0 += nt
    tt = np.arange(n)
    one = np.ones(n)
    # Balance: imp - exp - sum c + sum d = building.
    add(r0 + tt, oimp + tt, one)
    add(r0 + tt, oexp + tt, -one)
    add(r0 + ti, oc + kk, -np.ones(k))
    add(r0 + ti, od + kk, np.ones(k))
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
    # Peak epigraph.
    add(r0 + tt, oimp + tt, one)
    add(r0 + tt, np.full(n, opk), -one)
    rlo.append(np.full(n, -INF))
    rhi.append(np.zeros(n))
    r0 += n

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
    return Built(lp=lp, p=p, si=si, ti=ti, lk=lk, ls=ls, offsets=(oc, od, oe, ou, oimp, oexp, oxi, oxe, opk, ncol))


def run(b: Built, time_limit_s: float) -> RawSolution:
    p, si, ti, lk, ls = b.p, b.si, b.ti, b.lk, b.ls
    s, n = p.shape
    oc, od, oe, ou, oimp, oexp, oxi, oxe, opk, ncol = b.offsets
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("solver", "ipm")
    h.setOptionValue("run_crossover", "off")
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
    d[si, ti] = x[od:oe]
    e_end = p.e0.copy()
    e_end[ls] = x[oe + lk]
    return RawSolution(
        c=c, d=d, e_end=e_end, u=x[ou:oimp], imp=x[oimp:oexp], exp=x[oexp:oxi], xi=x[oxi:oxe],
        xe=x[oxe:opk], peak=float(x[opk]), status=h.modelStatusToString(status),
        ok=ok,
    )
