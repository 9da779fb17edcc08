"""The evaluator's HTML report: one self-contained file (plotly.js inlined, no network to view).

Time series are drawn for the first episode (the bill table covers all of them): site power
against the limit with building load and price, per-EV power heatmaps (one row per EV over its
stay), SoC curves per policy, and the bill's parts per policy.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from gateway.scheduler.evaluate import Run

MAX_SOC_CURVES = 25  # more lines than this is unreadable


def _bill_parts(result: dict[str, Any]) -> go.Figure:
    pols = result["policies"]
    names = list(pols)
    fig = go.Figure()
    parts = (("energy_cost", "energy"), ("demand_charge", "demand charge"), ("wear_cost", "battery wear"),
             ("shortfall_cost", "undelivered energy (priced)"))
    for key, label in parts:
        vals = [pols[n].get(key, 0.0) for n in names]
        fig.add_bar(name=label, x=names, y=vals)
    fig.add_bar(name="grid-event revenue (-)", x=names, y=[-pols[n]["grid_event_revenue"] for n in names])
    fig.add_scatter(name="total cost", x=names, y=[pols[n]["total_cost"] for n in names], mode="markers",
                    marker={"size": 12, "symbol": "diamond", "color": "black"})
    fig.update_layout(barmode="relative", title="Cost per policy (all episodes)", yaxis_title="currency")
    return fig


def _site(runs: list[Run]) -> go.Figure:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    first = runs[0]
    fig.add_scatter(x=first.times, y=first.building_kw, name="building load", line={"color": "grey"})
    fig.add_scatter(x=first.times, y=first.limit_kw, name="import limit",
                    line={"color": "red", "dash": "dash"})
    for r in runs:
        fig.add_scatter(x=r.times, y=r.net_kw, name=f"site import: {r.policy}", line={"width": 1.5})
    fig.add_scatter(x=first.times, y=first.price, name="import price",
                    line={"color": "orange", "shape": "hv"}, secondary_y=True)
    fig.update_layout(title=f"Site power vs limit ({first.episode})")
    fig.update_yaxes(title_text="kW", secondary_y=False)
    fig.update_yaxes(title_text="price per kWh", secondary_y=True)
    return fig


def _heatmap(r: Run) -> go.Figure:
    """One row per EV: its EVSE's power while it was plugged in (blank before and after)."""
    z = np.full((len(r.evs), len(r.times)), np.nan)
    for i, t in enumerate(r.evs):
        z[i, t.first:t.last] = r.evse_power[t.key][t.first:t.last]
    labels = [f"{t.arrival.id} ({t.key[0]}/{t.key[1]})" for t in r.evs]
    fig = go.Figure(go.Heatmap(z=z, x=r.times, y=labels, colorscale="RdBu", zmid=0.0,
                               colorbar={"title": "kW"}, hoverongaps=False))
    fig.update_layout(title=f"Power per EV: {r.policy} (+ charge, - discharge)",
                      height=max(300, 8 * len(r.evs)))
    return fig


def _soc(r: Run) -> go.Figure:
    fig = go.Figure()
    for t in r.evs[:MAX_SOC_CURVES]:
        fig.add_scatter(x=r.times, y=t.curve, name=t.arrival.id, mode="lines", line={"width": 1})
    fig.update_layout(title=f"State of charge: {r.policy} (first {MAX_SOC_CURVES} EVs)", yaxis_title="SoC",
                      showlegend=False)
    return fig


def _table(result: dict[str, Any]) -> str:
    cols = ("bill", "grid_event_revenue", "total_cost", "savings_capture", "savings_capture_total",
            "peak_import_kw", "energy_requested_kwh", "energy_deliverable_kwh", "energy_delivered_kwh",
            "deliverable_served_share", "evs_fully_served_share", "limit_excess_kw_max", "solve_s_p50",
            "solve_s_p95")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("policy", *cols))
    rows = []
    for name, res in result["policies"].items():
        cells = []
        for c in cols:
            v = res.get(c)
            if v is None:
                # A capture that cannot be had (see evaluate.summarise): read as the table prints it.
                cells.append("<td>n/a</td>")
            else:
                cells.append(f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>")
        rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def write_report(path: str | Path, result: dict[str, Any], runs: list[Run]) -> None:
    first_ep = runs[0].episode if runs else ""
    mine = [r for r in runs if r.episode == first_ep]
    figs = [_bill_parts(result)]
    if mine:
        figs.append(_site(mine))
        figs += [_heatmap(r) for r in mine]
        figs += [_soc(r) for r in mine]
    parts = [pio.to_html(f, include_plotlyjs=(i == 0), full_html=False) for i, f in enumerate(figs)]
    eps = ", ".join(html.escape(e) for e in result.get("episodes", []))
    body = "\n".join(f"<div>{p}</div>" for p in parts)
    warnings = "".join(f"<p><strong>Warning:</strong> {html.escape(w)}</p>" for w in result.get("warnings", []))
    Path(path).write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Charging policy evaluation</title>"
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>"
        f"<h1>Charging policy evaluation</h1><p>Episodes: {eps}</p>{warnings}{_table(result)}{body}</body></html>\n"
    )
