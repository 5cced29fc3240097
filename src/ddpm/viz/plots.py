"""Line plots: the variance schedules (linear vs cosine) and a run's training loss.

Drawn with matplotlib's object API (``Figure``, no pyplot), so plotting keeps no global state and
works without a display.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from ddpm.diffusion.schedule import SCHEDULES, make_schedule
from ddpm.io import save_figure_atomic


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def schedule_curves(name: str, timesteps: int) -> dict[str, np.ndarray]:
    """beta_t, alpha-bar_t, the signal and noise scales and log-SNR of a schedule, from ``make_schedule``.

    Ho et al. Eq. 4: x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps, so the last two are the
    weights of the image and of the noise in x_t; log-SNR = log(alpha-bar_t / (1 - alpha-bar_t)).
    """
    s = make_schedule(name, timesteps)
    return {
        "beta": s.betas.numpy(),
        "alpha_bar": s.alphas_cumprod.numpy(),
        "signal": s.sqrt_alphas_cumprod.numpy(),
        "noise": s.sqrt_one_minus_alphas_cumprod.numpy(),
        "log_snr": s.log_snr().numpy(),
    }


def table_steps(timesteps: int) -> list[int]:
    """The rows of the schedule table: the first, a few in between, and the last step (0-based)."""
    fractions = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
    return sorted({min(timesteps - 1, round(f * timesteps)) for f in fractions})


def schedule_table(timesteps: int = 1000, names: tuple[str, ...] = SCHEDULES) -> str:
    """A plain-text table of the curves at a few steps, one block per schedule."""
    cols = ("beta", "alpha_bar", "signal", "noise", "log_snr")
    lines = [f"T = {timesteps}; t is 0-based (t = {timesteps - 1} is the paper's t = {timesteps}); "
             "signal = sqrt(alpha_bar), noise = sqrt(1 - alpha_bar), log_snr = log(alpha_bar / (1 - alpha_bar))"]
    for name in names:
        c = schedule_curves(name, timesteps)
        head = f"{name:>7} {'t':>5}" + "".join(f"{col:>12}" for col in cols)
        lines += ["", head, "-" * len(head)]
        for t in table_steps(timesteps):
            lines.append(f"{'':>7} {t:>5}" + "".join(f"{c[col][t]:>12.4g}" for col in cols))
    return "\n".join(lines)


def plot_schedules(path: str | Path, timesteps: int = 1000, names: tuple[str, ...] = SCHEDULES) -> Path:
    """One column per schedule: beta_t (log scale); alpha-bar_t with the signal and noise scales; log-SNR.

    Rows share their y axis so the schedules compare at a glance.
    """
    fig = _figure(4.2 * len(names), 8.4)
    axes = fig.subplots(3, len(names), sharex=True, sharey="row", squeeze=False)
    t = np.arange(timesteps)
    for j, name in enumerate(names):
        c = schedule_curves(name, timesteps)
        ax = axes[0, j]
        ax.plot(t, c["beta"], color="C3")
        ax.set_yscale("log")
        ax.set_title(f"{name} schedule (T = {timesteps})")
        ax.set_ylabel(r"$\beta_t$")
        ax = axes[1, j]
        ax.plot(t, c["alpha_bar"], label=r"$\bar\alpha_t$", color="C0")
        ax.plot(t, c["signal"], label=r"$\sqrt{\bar\alpha_t}$ (signal scale)", color="C2")
        ax.plot(t, c["noise"], label=r"$\sqrt{1-\bar\alpha_t}$ (noise scale)", color="C1")
        ax.set_ylim(-0.03, 1.03)
        if j == 0:  # one legend for the row, above the figure, where it hides no curve
            fig.legend(loc="outside upper center", ncols=3, fontsize=9)
        ax = axes[2, j]
        ax.plot(t, c["log_snr"], color="C4")
        ax.axhline(0.0, color="0.6", lw=0.8, ls="--")
        ax.set_ylabel(r"log-SNR $= \log\,\bar\alpha_t/(1-\bar\alpha_t)$")
        ax.set_xlabel("t (0-based step)")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    return save_figure_atomic(fig, path)


def read_log(path: str | Path) -> list[dict]:
    """The records of a run's log.jsonl (a half-written last line, from a crash, is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def save_loss_plot(log_path: str | Path, path: str | Path) -> Path | None:
    """Plot every ``loss*`` series in a run's log.jsonl against the step; None when there is nothing yet.

    A plotting failure only warns: a picture must never stop a training run.
    """
    log_path = Path(log_path)
    try:
        records = read_log(log_path) if log_path.is_file() else []
        keys = sorted({k for r in records for k in r if k.startswith("loss")})
        if not keys:
            return None
        fig = _figure(6.4, 3.8)
        ax = fig.subplots()
        for k in keys:
            pts = [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
            if pts:
                steps, values = zip(*pts)
                main = k == "loss"
                # loss_qI (ddpm.training.objective): the loss where t lies in quarter I of 0..T-1.
                label = f"t in quarter {int(k[6:]) + 1} of T" if k[6:].isdigit() and k.startswith("loss_q") else k
                ax.plot(steps, values, label=label, lw=1.6 if main else 0.8, alpha=1.0 if main else 0.6,
                        color="k" if main else None, marker="o" if len(pts) < 20 and main else None, ms=3)
        if all(r[k] > 0 for r in records for k in keys if isinstance(r.get(k), (int, float))):
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("loss (mean over the log interval)")
        ax.set_title(f"training loss: {log_path.parent.name}")
        ax.grid(alpha=0.3, which="both")
        if len(keys) > 1:
            ax.legend(fontsize=8)
        return save_figure_atomic(fig, path)  # a viewer never sees half a PNG
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"could not draw {path}: {e}", stacklevel=2)
        return None
