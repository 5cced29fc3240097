"""Improved DDPM's diagnostic plots (Nichol & Dhariwal 2021, Fig. 2 and §3.3) as PNG files:
the training loss per quartile of t, and the terms of the variational bound against t.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot), so plotting never touches global
backend state or opens a window.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ddpm.io import save_figure_atomic


def read_quartile_log(log_path: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{"loss_q0": (steps, values), ...}`` from a run's log.jsonl (keys ``<term>_q<0..3>``)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for line in Path(log_path).read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        for k, v in rec.items():
            if "_q" in k and k.rsplit("_q", 1)[1] in ("0", "1", "2", "3"):
                steps, values = series.setdefault(k, ([], []))
                steps.append(rec["step"])
                values.append(v)
    return series


def plot_loss_quartiles(log_path: str | Path, path: str | Path) -> Path:
    """One panel per logged term (loss, mse, vb), one line per quartile of t; log-scale y."""
    series = read_quartile_log(log_path)
    if not series:
        raise ValueError(f"{log_path} holds no per-quartile losses (keys like loss_q0)")
    present = {k.rsplit("_q", 1)[0] for k in series}
    terms = [t for t in ("loss", "mse", "vb") if t in present] + sorted(present - {"loss", "mse", "vb"})
    fig = Figure(figsize=(4.2 * len(terms), 3.4), constrained_layout=True)
    axes = fig.subplots(1, len(terms), squeeze=False)[0]
    for ax, term in zip(axes, terms):
        for q in range(4):
            if f"{term}_q{q}" in series:
                steps, values = series[f"{term}_q{q}"]
                ax.plot(steps, values, label=f"t in quartile {q}")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_title(term + (" (bits/dim)" if term == "vb" else ""))
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_vlb_terms(result: dict, path: str | Path, label: str | None = None, others: dict[str, dict] | None = None) -> Path:
    """The bound's terms against t, as Improved DDPM Fig. 2, from ``evaluate_nll`` results (bits/dim).

    Left: each term L_t against t + 1 (log-log, so the decoder and the first steps, where nearly all
    of the bound is, are spread out); right: their running sum, whose end is the bound less L_T.
    ``result`` (and optionally ``others``, name -> result) hold ``per_t``; the legend gives each total.
    """
    runs = {label or "model": result, **(others or {})}
    fig = Figure(figsize=(10, 4), constrained_layout=True)
    terms_ax, sum_ax = fig.subplots(1, 2)
    for name, r in runs.items():
        per_t = np.asarray(r["per_t"])
        steps = np.arange(1, len(per_t) + 1)
        terms_ax.plot(steps, per_t, label=f"{name}: {r['bpd']:.3f} bits/dim (L_T {r['prior_bpd']:.1e})")
        sum_ax.plot(steps, np.cumsum(per_t), label=name)
    terms_ax.set_yscale("log")
    terms_ax.set_ylabel("loss term L_t (bits/dim)")
    terms_ax.set_title("terms of the variational bound")
    sum_ax.set_ylabel("sum of L_0 .. L_t (bits/dim)")
    sum_ax.set_title("running sum")
    for ax in (terms_ax, sum_ax):
        ax.set_xscale("log")
        ax.set_xlabel("t + 1 (0-based t; t = 0 is the decoder L_0)")
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    return save_figure_atomic(fig, path, dpi=120)
