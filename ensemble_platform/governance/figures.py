"""Report figures, drawn from the reports' JSON numbers only (so picture and numbers agree).

Figures are built with matplotlib's object API (no pyplot global state, safe in a Dagster
worker) and saved as PNG without a Software stamp, so the same numbers give the same bytes.
"""

from __future__ import annotations

import functools
import io
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import ParamSpec, TypedDict, TypeVar

import matplotlib
import numpy as np
from matplotlib.figure import Figure as MplFigure

from ensemble_platform.evaluation.agreement_report import VoteLevel
from ensemble_platform.evaluation.batch_performance import PerformanceEntry
from ensemble_platform.evaluation.fairness import Gap
from ensemble_platform.governance.rendering import Figure

_DPI = 96
_ENSEMBLE_COLOUR = "#1f2328"
_STATUS_COLOURS = {"pass": "#2da44e", "warn": "#d4a72c", "fail": "#cf222e", "thin": "#8c959f"}


class ReliabilityRow(TypedDict):
    """One bin of `evaluation.calibration.reliability_table`, as JSON (NaN written as None)."""

    bin: int
    lower: float
    upper: float
    count: int
    mean_predicted: float | None  # None: empty bin
    observed_rate: float | None
    gap: float | None


_P = ParamSpec("_P")
_R = TypeVar("_R")


def plain_text(draw: Callable[_P, _R]) -> Callable[_P, _R]:
    """Draw with matplotlib's mathtext off: labels, titles and legends carry column, category and member
    names, and a name with two `$` in it was parsed as a formula (an unknown `\\foo` in it raised, so the
    report failed). Wraps the whole drawing and the saving, where tick labels are made."""
    @functools.wraps(draw)
    def drawn(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return drawn


def _png(fig: MplFigure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None}, bbox_inches="tight")
    return buffer.getvalue()


@plain_text
def reliability_figure(tables: Mapping[str, Sequence[ReliabilityRow]], highlight: str) -> Figure:
    """Reliability curves of the ensemble (bold) and members on one axis; bin counts below."""
    fig = MplFigure(figsize=(7.5, 7))
    curve_ax, count_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    curve_ax.plot([0, 1], [0, 1], color="#8c959f", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, rows in tables.items():
        filled = [r for r in rows if r["count"]]
        x = [r["mean_predicted"] for r in filled]
        y = [r["observed_rate"] for r in filled]
        bold = name == highlight
        curve_ax.plot(x, y, marker="o", markersize=4 if bold else 3, linewidth=2.5 if bold else 1,
                      alpha=1 if bold else 0.6, color=_ENSEMBLE_COLOUR if bold else None, label=name)
    curve_ax.set_ylabel("observed positive rate")
    curve_ax.set_xlim(0, 1)
    curve_ax.set_ylim(0, 1)
    curve_ax.legend(fontsize=7, loc="upper left")
    curve_ax.set_title("Reliability diagram (holdout)")
    rows = tables[highlight]
    centres = [(r["lower"] + r["upper"]) / 2 for r in rows]
    widths = [(r["upper"] - r["lower"]) * 0.9 for r in rows]
    bars = count_ax.bar(centres, [r["count"] for r in rows], width=widths, color="#57606a")
    count_ax.bar_label(bars, fontsize=6)
    count_ax.set_ylabel(f"rows ({highlight})", fontsize=8)
    count_ax.set_xlabel("predicted probability")
    return Figure("reliability", f"Reliability diagram of {highlight} and members, with bin counts", _png(fig))


@plain_text
def frontier_figure(frontier: Mapping[str, Mapping[str, object]], max_cost_ratio: float | None = None) -> Figure:
    """Out-of-fold log loss against expected cost per row (relative to the cheapest member) of every
    candidate strategy; the chosen point is marked, ineligible ones are hollow, the budget dashed."""
    fig = MplFigure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    for name, row in frontier.items():
        x, y = row.get("cost_ratio"), row.get("log_loss")
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            continue
        chosen, eligible = bool(row.get("chosen")), bool(row.get("eligible", True))
        ax.scatter([x], [y], s=140 if chosen else 40, marker="*" if chosen else "o",
                   facecolors=_ENSEMBLE_COLOUR if eligible or chosen else "none", edgecolors=_ENSEMBLE_COLOUR)
        ax.annotate(name + (" (chosen)" if chosen else ""), (x, y), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    if max_cost_ratio is not None:
        ax.axvline(max_cost_ratio, color="#cf222e", linestyle="--", linewidth=1, label="cost budget")
        ax.legend(fontsize=7)
    ax.set_xlabel("expected predict cost per row / cheapest member's")
    ax.set_ylabel("out-of-fold log loss")
    ax.set_title("Accuracy-cost frontier (out of fold; hollow: not eligible)")
    return Figure("frontier", "Out-of-fold log loss against expected cost per row, chosen strategy starred", _png(fig))


@plain_text
def vote_share_figure(levels: Sequence[VoteLevel], review_threshold: float) -> Figure:
    """Rows per vote share, coloured by whether they go to review, with accuracy per level."""
    fig = MplFigure(figsize=(7, 3.5))
    ax = fig.subplots()
    shares = [float(level["vote_share"]) for level in levels]
    colours = ["#cf222e" if s < review_threshold else "#2da44e" for s in shares]
    labels = [f"{s:.2f}" for s in shares]
    bars = ax.bar(labels, [level["rows"] for level in levels], color=colours)
    ax.bar_label(bars, labels=[f"acc {float(level['accuracy']):.2f}" for level in levels], fontsize=7)
    ax.set_xlabel(f"share of members agreeing with the ensemble (red: below review threshold {review_threshold:g})")
    ax.set_ylabel("holdout rows")
    ax.set_title("Member agreement with the ensemble's decision")
    return Figure("vote_share", "Vote-share distribution and ensemble accuracy per level", _png(fig))


@plain_text
def matrix_figure(name: str, title: str, matrix: Sequence[Sequence[float | None]], labels: Sequence[str],
                  vmin: float, vmax: float) -> Figure:
    """A labelled heat map with the value in each cell (pairwise member matrices)."""
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    fig = MplFigure(figsize=(1.2 * len(labels) + 2, 1.0 * len(labels) + 1.5))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels=labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels=labels, fontsize=8)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v < (vmin + vmax) / 2 else "black")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title)
    return Figure(name, title, _png(fig))


@plain_text
def fairness_gap_figure(attribute: str, gaps: Mapping[str, Mapping[str, Gap]]) -> Figure:
    """Each gap per model (ensemble first), coloured by status, for one attribute: the differences
    on the left, the ratios (demographic parity ratio; lower is worse) on their own 0-1 scale."""
    models = list(gaps)
    names = list(next(iter(gaps.values())))
    differences = [g for g in names if g.endswith("difference")]
    ratios = [g for g in names if not g.endswith("difference")]
    fig = MplFigure(figsize=(8, 3.8))
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(len(differences), 1), max(len(ratios), 1) * 0.8]}) \
        if ratios else [fig.subplots()]
    width = 0.8 / len(models)
    for ax, gap_names, offset in ((axes[0], differences, 0.003), *(((axes[1], ratios, 0.01),) if ratios else ())):
        for i, model in enumerate(models):
            xs = np.arange(len(gap_names)) + i * width
            values = [gaps[model][g]["value"] for g in gap_names]
            colours = [_STATUS_COLOURS[gaps[model][g]["status"]] for g in gap_names]
            ax.bar(xs, [0.0 if v is None else v for v in values], width=width * 0.95, color=colours,
                   edgecolor=_ENSEMBLE_COLOUR if i == 0 else "none", linewidth=1.5)
            for x, v in zip(xs, values):
                ax.text(x, (v or 0.0) + offset, "E" if i == 0 else str(i), ha="center", fontsize=6)
        ax.set_xticks(np.arange(len(gap_names)) + 0.4 - width / 2,
                      labels=[textwrap.fill(g.replace("_", " "), 16) for g in gap_names], fontsize=8)
    axes[0].set_ylabel("gap (absolute difference)")
    if ratios:
        axes[1].set_ylim(0, 1.1)
        axes[1].set_ylabel("ratio (lower is worse)")
    legend = ", ".join(f"{i}={m}" for i, m in enumerate(models) if i) or "ensemble only"
    fig.suptitle(f"Fairness gaps by {attribute}: E=ensemble, {legend}", fontsize=8)
    return Figure(f"fairness_gaps_{_slug(attribute)}",
                  f"Fairness gaps by {attribute} (green pass, amber warn, red fail, grey thin)", _png(fig))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).lower()


@plain_text
def performance_history_figure(history: Sequence[PerformanceEntry], metric: str = "accuracy") -> Figure:
    """One line per model over labelled batches in arrival order; the ensemble bold."""
    fig = MplFigure(figsize=(8, 3.8))
    ax = fig.subplots()
    x = np.arange(len(history))
    models = list(history[0]["performance"]) if history else []
    for model in models:
        values = [_metric(h, model, metric) for h in history]
        bold = model == "ensemble"
        ax.plot(x, [np.nan if v is None else v for v in values], marker="o", markersize=4 if bold else 3,
                linewidth=2.5 if bold else 1, alpha=1 if bold else 0.6,
                color=_ENSEMBLE_COLOUR if bold else None, label=model)
    ax.set_xticks(x, [str(h["batch_id"]) for h in history], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} on labelled batches, in arrival order")
    ax.legend(fontsize=7)
    return Figure(f"performance_{metric}", f"{metric} of the ensemble and its members on each labelled batch",
                  _png(fig))


def _metric(entry: PerformanceEntry, model: str, metric: str) -> float | None:
    """`metric` of `model` on one batch; None when the model or the metric is absent (or undefined)."""
    metrics: Mapping[str, object] = entry["performance"].get(model, {})
    value = metrics.get(metric)
    return float(value) if isinstance(value, (int, float)) else None
