"""One very large site as several smaller LPs that share its headroom. Pure: no I/O.

The site LP (problem.py) couples slots only through the site balance: the import and export limits,
the demand-charge peak and the netting of one EV's discharge against another's charge or the
building. Its solve time grows faster than the slots (bench/scheduler_scaling.py, 35 steps: about
1.4 s at 1,000 slots, 45-50 s at 10,000), so :class:`DecomposedPlanner` deals the slots into groups of at
most ``max_slots_per_lp``, gives each group a share of every step's building load, import limit and
export limit and of the peak so far (the shares sum to the site's), solves each group with the
ordinary :class:`Planner` as it is, and puts the plans together.

Why the site limit holds: each group keeps ``building_g + net_g <= import_limit_g`` and
``-(building_g + net_g) <= export_limit_g`` at every step and the shares add up to the site's, so the
sums keep the site's limits; a last pass trims solver round-off so they hold exactly.

Why the groups are interleaved: slots sorted by departure, arrival, discharge right and need are dealt
in snake order, so every group is a small replica of the site. Replicas value a kW at the same step
alike, so import shares in proportion to the power each group needs (each EV's need spread over its
stay) are close to what the joint LP would give them. Grouping by departure instead would need the
price of headroom per group (duals, which the Planner does not give) to share it well.

Coordination rounds: each group keeps what it imported; the rest of the headroom goes first to
groups with EVs short of energy that could draw more, then to groups that used their whole share.
With a demand charge the site's headroom is capped at the peak the round reached, and a group given
more gets a peak floor at its new limit, since below that peak the site pays no more. Only groups
that received headroom they asked for are solved again; the others keep their plans, which fit.

What is lost against the joint LP: a group's discharge nets only against its own charging and
building share; each group prices its own peak, not the site's; and the shares move only where a
group was short or bound. Measured (objective above the joint LP's, priced on the whole site by
:func:`problem.finish`): on the bench site, and on it with the limit at 15 % of the chargers and no
peak so far (the demand charge binds), 0 and 2e-4 at 4,000 slots in groups of 250, 0 and 4e-5 in
groups of 500 or 1,000, 0 and 1.2e-4 at 10,000 in groups of 250; no coordination round was needed.
Small groups are far from replicas: 60 slots in groups of 20 cost 0-1.5 % more (up to 9 % before
coordination), so keep groups large.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
from numpy.typing import NDArray

from gateway.scheduler.problem import (
    BoolArr,
    FloatArr,
    Planner,
    PlanResult,
    Prepared,
    RawSolution,
    SiteInputs,
    SlotInput,
    finish,
    prepare,
)

IntArr = NDArray[np.int64]

# Slots per LP. One LP's time grows faster than its slots, so smaller groups are faster until the
# per-LP overhead shows: 10,000 slots (35 steps) took 9.3 s of CPU in groups of 250 and 9.6 s in 500
# on the bench site, 13.6 s and 17.1 s with a binding demand charge (where 10 LPs of 1,000 took 27 s),
# at gaps to the joint LP of 0 and 1.2e-4 (250) against 0 and 7e-5 (500). The 30 s target is wall
# time on 2 shared cores, so the faster one.
DEFAULT_MAX_SLOTS_PER_LP = 250
# Rounds of solves at most: the first with shares by need, then re-sharing headroom. Later rounds solve
# only groups that received headroom they wanted, so on large, evenly dealt sites they cost nothing
# (none ran at 4,000 or 10,000 slots); at 60 slots in groups of 20 the third round still helped.
DEFAULT_ROUNDS = 3
# No coordination round starts that would, at the pace of the last one, end after this (s): the
# first round of 10,000 slots takes 10-18 s of wall time here, and the plan is due within 30 s.
DEFAULT_TIME_BUDGET_S = 20.0
# A group is taken to have hit its share at a step when less than this is left (kW): above the
# solver's feasibility tolerance (1e-7, relative), below anything that matters to a plan.
BINDING_TOL_KW = 1e-3
# An EV missing more than this at departure counts as short of energy when headroom is re-shared.
SHORT_KWH = 1e-3
# A group is solved again only if it received at least this much headroom it asked for at some step.
GAIN_TOL_KW = 1e-2
# Share of a charger's power counted toward its group's import share whatever the EV needs.
NEED_FREE_SHARE = 0.05


@dataclasses.dataclass
class _Group:
    idx: IntArr  # the group's slots, as indices into the site's slot list
    site: SiteInputs  # the site as the group sees it: its shares of load, limits and peak
    result: PlanResult | None = None


class DecomposedPlanner:
    """Plans a site with more than ``max_slots_per_lp`` slots as several LPs (see the module docstring);
    smaller sites go to one :class:`Planner` unchanged. Same ``solve`` contract as :class:`Planner`:
    never raises for solver trouble, and a group whose LP fails gets the greedy plan within its shares.

    ``time_budget_s``: coordination rounds are skipped when the round just run, scaled to the groups
    that would be solved again, would end past this many seconds from the start of ``solve``."""

    def __init__(self, *, max_slots_per_lp: int = DEFAULT_MAX_SLOTS_PER_LP, rounds: int = DEFAULT_ROUNDS,
                 time_limit_s: float = 60.0, time_budget_s: float | None = DEFAULT_TIME_BUDGET_S,
                 planner: Planner | None = None) -> None:
        if max_slots_per_lp < 1 or rounds < 1:
            raise ValueError("max_slots_per_lp and rounds must be at least 1")
        self.max_slots_per_lp = max_slots_per_lp
        self.rounds = rounds
        self.time_budget_s = time_budget_s
        self.planner = planner if planner is not None else Planner(time_limit_s=time_limit_s)
        # What the last solve did, for benchmarks and logs: groups, rounds run, LPs solved per round.
        self.last_groups = 0
        self.last_solves_per_round: list[int] = []

    def split(self, site: SiteInputs, slots: list[SlotInput]) -> list[tuple[IntArr, SiteInputs]]:
        """The groups the first round solves: each one's slot indices (into ``slots``) and the site as it
        sees it. One group with the site unchanged when the site is small enough for one LP."""
        if len(slots) <= self.max_slots_per_lp:
            return [(np.arange(len(slots), dtype=np.int64), site)]
        groups = _initial_groups(site, prepare(site, slots), self._n_groups(len(slots)))
        return [(g.idx, g.site) for g in groups]

    def _n_groups(self, n_slots: int) -> int:
        return math.ceil(n_slots / self.max_slots_per_lp)

    def solve(self, site: SiteInputs, slots: list[SlotInput]) -> PlanResult:
        t0 = time.perf_counter()
        if len(slots) <= self.max_slots_per_lp:
            self.last_groups, self.last_solves_per_round = 1, [1]
            return self.planner.solve(site, slots)
        p = prepare(site, slots)
        groups = _initial_groups(site, p, self._n_groups(len(slots)))
        self.last_groups = len(groups)
        self.last_solves_per_round = []
        todo = list(range(len(groups)))
        for rnd in range(self.rounds):
            tr = time.perf_counter()
            for g in todo:
                grp = groups[g]
                grp.result = self.planner.solve(grp.site, [slots[i] for i in grp.idx])
            self.last_solves_per_round.append(len(todo))
            if rnd + 1 == self.rounds:
                break
            todo = _reshare(groups, p)
            if not todo:
                break
            took = time.perf_counter() - tr
            if (self.time_budget_s is not None and
                    time.perf_counter() - t0 + took * len(todo) / max(self.last_solves_per_round[-1], 1)
                    > self.time_budget_s):
                break
        return _combine(site, slots, p, groups, time.perf_counter() - t0)


def _initial_groups(site: SiteInputs, p: Prepared, n_groups: int) -> list[_Group]:
    s, n = p.shape
    conn_any = p.conn.any(axis=1)
    last = np.where(conn_any, n - 1 - np.argmax(p.conn[:, ::-1], axis=1), -1)
    first = np.where(conn_any, np.argmax(p.conn, axis=1), -1)
    need = np.maximum(p.target - p.e0, 0.0)
    bidi = p.dmax.any(axis=1)
    # np.lexsort sorts by the last key first: departure, then arrival, discharge right, need.
    order = np.lexsort((need, bidi, first, last))
    # Snake order (0..G-1, G-1..0, ...) so no group always gets the first of each run of G.
    pos = np.arange(s) % (2 * n_groups)
    member = np.where(pos < n_groups, pos, 2 * n_groups - 1 - pos)
    idx = [np.sort(order[member == g]).astype(np.int64) for g in range(n_groups)]
    # Import shares follow the power each group needs: every EV's need spread evenly over its stay
    # (at most its charger), plus a little of its charger so a step where nobody needs energy is
    # still shared by who could take it. Shares by charger power alone starved a group whose EVs
    # arrive later with large needs (measured: 13 % above the joint LP at 60 slots in 3 groups).
    hours = (p.conn * p.h[None, :]).sum(axis=1)
    rate = need / (p.eff_c * np.maximum(hours, 1e-9))
    want = np.minimum(p.cmax, rate[:, None] * p.conn) + NEED_FREE_SHARE * p.cmax
    w_imp = _weights(np.stack([want[i].sum(axis=0) for i in idx]), np.array([len(i) for i in idx], float))
    cap_exp = np.stack([p.dmax[i].sum(axis=0) for i in idx])  # (G, T) connected discharge power
    w_exp = _weights(cap_exp, w_imp)
    # The peak floor is a scalar: share it as each group's mean weight over the billing steps.
    mask = p.demand_mask if p.demand_mask.any() else np.ones(n, dtype=bool)
    w_peak = w_imp[:, mask].mean(axis=1)
    # Where the building alone is over the import limit (an import cap), only discharge brings the
    # site back under it: that part of the building goes by each group's discharge power, so a
    # group that has little cannot be left over its share while another's batteries sit idle.
    over = np.maximum(p.building - p.imp_lim, 0.0)
    groups = []
    for g, members in enumerate(idx):
        gsite = dataclasses.replace(
            site, building_load_kw=w_imp[g] * (p.building - over) + w_exp[g] * over,
            import_limit_kw=w_imp[g] * p.imp_lim,
            export_limit_kw=w_exp[g] * p.exp_lim, peak_so_far_kw=float(w_peak[g] * p.peak0),
            peak_price_steps=tuple((float(w_peak[g] * lv), x) for lv, x in site.peak_price_steps),
        )
        groups.append(_Group(idx=members, site=gsite))
    return groups


def _weights(cap: FloatArr, fallback: FloatArr) -> FloatArr:
    """Per step, each group's share of ``cap`` (G, T); where no group has any, by ``fallback``
    ((G,) or (G, T)), so the shares always sum to one."""
    fb = np.broadcast_to(fallback if fallback.ndim == 2 else fallback[:, None], cap.shape)
    tot = cap.sum(axis=0)
    fb_tot = fb.sum(axis=0)
    return np.where(tot > 0, cap / np.where(tot > 0, tot, 1.0), fb / np.where(fb_tot > 0, fb_tot, 1.0))


def _reshare(groups: list[_Group], p: Prepared) -> list[int]:
    """New shares from the last round's plans; returns the groups to solve again (those that gained).

    Import: every group keeps what it imported, so its plan still fits. The rest of each step's
    headroom goes first to groups with EVs still short of energy that could draw more then, then to
    groups that used their whole share (they may want it for a cheaper hour), then back where it was
    unused. With a demand charge the site's headroom is capped at the peak the last round reached
    (at least the peak so far): below it a kW costs no demand charge, so groups get a peak floor at
    their new limit and stop flattening their own peaks, which the site does not pay for.

    Export: headroom a group left unused goes to groups whose share bound and that could discharge more.
    """
    n = p.shape[1]
    g_n = len(groups)
    imp_lim = np.stack([np.asarray(g.site.import_limit_kw, dtype=float) for g in groups])
    exp_lim = np.stack([np.asarray(g.site.export_limit_kw, dtype=float) for g in groups])
    building = np.stack([np.asarray(g.site.building_load_kw, dtype=float) for g in groups])
    imp = np.zeros((g_n, n))
    exp = np.zeros((g_n, n))
    short = np.zeros((g_n, n))  # kW more that EVs short of energy could draw
    room_c = np.zeros((g_n, n))  # kW more the group's chargers could draw
    room_d = np.zeros((g_n, n))
    for g, grp in enumerate(groups):
        res = grp.result
        assert res is not None
        net = building[g] + res.power_kw.sum(axis=0)
        imp[g] = np.maximum(net, 0.0)
        exp[g] = np.maximum(-net, 0.0)
        spare_c = np.maximum(p.cmax[grp.idx] - np.maximum(res.power_kw, 0.0), 0.0)
        short[g] = spare_c[res.unmet_kwh > SHORT_KWH].sum(axis=0)
        room_c[g] = spare_c.sum(axis=0)
        room_d[g] = np.maximum(p.dmax[grp.idx] - np.maximum(-res.power_kw, 0.0), 0.0).sum(axis=0)
    cap = p.imp_lim.copy()
    priced = p.demand > 0 or bool(p.peak_extra.any())  # the peak has a price
    if priced:
        peak = max(p.peak0, float(imp.sum(axis=0)[p.demand_mask].max(initial=0.0)))
        cap = np.where(p.demand_mask, np.minimum(cap, peak), cap)
    extra = np.maximum(cap - imp.sum(axis=0), 0.0)
    binding = imp_lim - imp <= BINDING_TOL_KW
    wanted, back = _deal(extra, [short, np.where(binding, room_c, 0.0)], np.maximum(imp_lim - imp, 0.0))
    new_imp = imp + wanted + back
    # Export: what a non-binding group did not use (less a tolerance) moves to binding groups.
    binding_e = exp_lim - exp <= BINDING_TOL_KW
    give = np.where(binding_e, 0.0, np.maximum(exp_lim - exp - BINDING_TOL_KW, 0.0))
    moved, _ = _deal(give.sum(axis=0), [np.where(binding_e, room_d, 0.0)], None)
    gave = give.sum(axis=0)
    new_exp = exp_lim - give * np.where(gave > 0, moved.sum(axis=0) / np.maximum(gave, 1e-12), 0.0) + moved
    # Only a group that received headroom someone wanted can do better; the rest keep their plans, which
    # fit their new limits (re-solving them all doubled the time at 10,000 slots for no gain).
    again: BoolArr = np.any((wanted > GAIN_TOL_KW) | (moved > GAIN_TOL_KW), axis=1)
    if priced:
        # A group that paid for its own peak while it had EVs short of energy with chargers to spare was
        # held back by a peak the site need not have: with its new peak floor it may draw more.
        paid = np.array([g.result is not None and g.result.terms["demand_charge"] > GAIN_TOL_KW * max(p.demand, 1e-3)
                         for g in groups])
        again = again | (paid & (short > GAIN_TOL_KW).any(axis=1))
    for g, grp in enumerate(groups):
        floor = grp.site.peak_so_far_kw
        if priced and again[g]:
            floor = max(floor, float(new_imp[g][p.demand_mask].max(initial=0.0)))
        grp.site = dataclasses.replace(grp.site, import_limit_kw=new_imp[g], export_limit_kw=new_exp[g],
                                       peak_so_far_kw=floor)
    return [int(g) for g in np.flatnonzero(again)]


def _deal(amount: FloatArr, tiers: list[FloatArr], rest: FloatArr | None) -> tuple[FloatArr, FloatArr]:
    """Deals ``amount`` (T) out to groups (G, T): tier by tier, each group at most its tier value, in
    proportion to it; what is left in proportion to ``rest`` (None: left undealt). Returns what the
    tiers got and what ``rest`` got."""
    dealt = np.zeros_like(tiers[0])
    left = amount.copy()
    for tier in tiers:
        tot = tier.sum(axis=0)
        take = np.minimum(left, tot)
        dealt += tier * np.where(tot > 0, take / np.maximum(tot, 1e-12), 0.0)
        left = left - take
    back = np.zeros_like(dealt)
    if rest is not None:
        tot = rest.sum(axis=0)
        back = np.where(tot[None, :] > 0, rest / np.maximum(tot, 1e-12), 1.0 / rest.shape[0]) * left
    return dealt, back


def _combine(site: SiteInputs, slots: list[SlotInput], p: Prepared, groups: list[_Group],
             solve_s: float) -> PlanResult:
    s, n = p.shape
    power = np.zeros((s, n))
    delivered = np.zeros(s)
    statuses: list[str] = []
    fallback = False
    simultaneous = 0.0
    for grp in groups:
        res = grp.result
        assert res is not None
        power[grp.idx] = res.power_kw
        delivered[grp.idx] = res.delivered_kwh
        statuses.append(res.status)
        fallback |= res.fallback
        simultaneous = max(simultaneous, res.terms.get("simultaneous_kw_max", 0.0))
    c = np.maximum(power, 0.0)
    d = np.maximum(-power, 0.0)
    e_end = p.e0 + delivered
    c, d, e_end = _trim_to_limits(p, c, d, e_end)
    site_kw = p.building + (c - d).sum(axis=0)
    imp = np.maximum(site_kw, 0.0)
    exp = np.maximum(-site_kw, 0.0)
    peak_steps = imp[p.demand_mask]
    failed = sorted({st for st in statuses if st.startswith("fallback")})
    status = failed[0] if failed else statuses[0] if len(set(statuses)) == 1 else "+".join(sorted(set(statuses)))
    raw = RawSolution(
        c=c, d=d, e_end=e_end, u=np.maximum(p.target - e_end, 0.0), imp=imp, exp=exp,
        xi=np.maximum(imp - p.imp_lim, 0.0), xe=np.maximum(exp - p.exp_lim, 0.0),
        peak=max(float(peak_steps.max(initial=0.0)), p.peak0), status=status, ok=not fallback,
    )
    res = finish(site, slots, p, raw, solve_s, fallback)
    # Netting per slot hides any charge-and-discharge at once inside a group; report the groups' own.
    res.terms["simultaneous_kw_max"] = simultaneous
    return res


def _trim_to_limits(p: Prepared, c: FloatArr, d: FloatArr, e_end: FloatArr) -> tuple[FloatArr, FloatArr, FloatArr]:
    """Removes solver round-off above the site limits: each group is within its share up to the
    solver's tolerance, and the sum of ten such errors should not show as a limit excess. Where the
    building alone is over the limit (reported as excess, as the joint LP does) charging is cut down
    to zero only. Energy at departure drops by what is trimmed (micro-kWh)."""
    site_kw = p.building + (c - d).sum(axis=0)
    over_imp = np.maximum(site_kw - np.maximum(p.imp_lim, p.building - d.sum(axis=0)), 0.0)
    charge = c.sum(axis=0)
    cut = np.where(charge > 0, np.minimum(over_imp, charge) / np.where(charge > 0, charge, 1.0), 0.0)
    over_exp = np.maximum(-site_kw - p.exp_lim, 0.0)
    dis = d.sum(axis=0)
    cut_d = np.where(dis > 0, np.minimum(over_exp, dis) / np.where(dis > 0, dis, 1.0), 0.0)
    if not cut.any() and not cut_d.any():
        return c, d, e_end
    dc = c * cut[None, :]
    dd = d * cut_d[None, :]
    e_end = e_end - (dc * p.h[None, :]).sum(axis=1) * p.eff_c + (dd * p.h[None, :]).sum(axis=1) / p.eff_d
    return c - dc, d - dd, e_end
