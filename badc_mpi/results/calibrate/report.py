"""The report's "Calibration" section (an HTML fragment; empty when the bundle has no calibration):
per species the calibration curve (verdicts, the fitted P(correct | score), the threshold and its
interval, the target), a table of thresholds, intervals, counts, reasons and the share of the
species' detections the threshold keeps, and a banner when the verdicts are synthetic or the
detections come from the tiny model."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from badc_mpi.results.calibrate.fit import p_correct  # noqa: E402

MAX_CURVES = 24  #: species drawn (most verdicts first); the table lists every species
COLS = 4

KEPT = """
SELECT species_code, count(*) AS detections, count(*) FILTER (WHERE above_threshold) AS kept,
       avg(p_correct) FILTER (WHERE above_threshold) AS expected_precision_kept
FROM calibrated_detections WHERE species_code IN (SELECT species_code FROM thresholds) GROUP BY 1
"""
POINTS = "SELECT species_code, score, verdict FROM verdicts WHERE verdict <> 'unsure' ORDER BY species_code, score"


def _rows(con: Any, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def has_calibration(con: Any) -> bool:
    found = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'calibrated_detections'").fetchall()
    return bool(found[0][0])


def curves_png(fits: Sequence[dict[str, Any]], points: dict[str, list[tuple[float, bool]]]) -> bytes:
    """Small multiples: each species' verdicts (correct at 1, wrong at 0), its fitted curve, the
    threshold (solid) with its interval (shaded) and the target precision (dashed)."""
    n = max(1, len(fits))
    rows = (n + COLS - 1) // COLS
    fig, axes = plt.subplots(rows, COLS, figsize=(3.2 * COLS, 2.6 * rows), squeeze=False)
    grid = np.linspace(0.001, 0.999, 200)
    rng = np.random.default_rng(0)
    for ax, fit in zip(axes.flat, fits):
        pts = points.get(fit["species_code"], [])
        if pts:
            s = np.array([p[0] for p in pts])
            y = np.array([1.0 if p[1] else 0.0 for p in pts])
            ax.scatter(s, y + rng.uniform(-0.04, 0.04, len(y)), s=8, alpha=0.5, c=np.where(y > 0, "tab:green", "tab:red"))
        if fit["slope"] is not None:
            ax.plot(grid, p_correct(grid, fit["intercept"], fit["slope"]), color="black", lw=1.2)
        if fit["threshold"] is not None:
            ax.axvline(fit["threshold"], color="tab:blue", lw=1.2)
            if fit["threshold_low"] is not None:
                ax.axvspan(fit["threshold_low"], fit["threshold_high"], color="tab:blue", alpha=0.15)
        ax.axhline(fit["target_precision"], color="grey", ls="--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.08, 1.08)
        t = "none" if fit["threshold"] is None else f"{fit['threshold']:.2f}"
        ax.set_title(f"{fit['species_code']}: threshold {t} (n={fit['correct'] + fit['wrong']})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(fits) :]:
        ax.axis("off")
    fig.supxlabel("score")
    fig.supylabel("P(correct | score)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def calibration_section(con: Any, summary: dict[str, Any]) -> str:
    """The section's HTML ("" without a calibration in the bundle)."""
    if not has_calibration(con):
        return ""
    settings = _rows(con, "SELECT * FROM calibration_settings")
    settings_row = settings[0] if settings else {}
    fits = _rows(con, "SELECT * FROM thresholds ORDER BY correct + wrong DESC, species_code")
    kept = {r["species_code"]: r for r in _rows(con, KEPT)}
    points: dict[str, list[tuple[float, bool]]] = {}
    for r in _rows(con, POINTS):
        points.setdefault(r["species_code"], []).append((r["score"], r["verdict"] == "correct"))
    esc = html.escape
    parts = ["<h2 id='calibration'>Calibration</h2>"]
    note = str(settings_row.get("note") or "")
    if summary.get("tiny_model") or note:
        text = note or "the detections come from the tiny random-weight model: no listener can have judged them"
        parts.append(f"<div class='banner' id='calibration-banner'>NOT REAL VERDICTS: {esc(text)}</div>")
    target = settings_row.get("target_precision")
    files = json.loads(settings_row["files"]) if isinstance(settings_row.get("files"), str) else []
    parts.append(
        f"<p id='calibration-sub'>{len(fits)} species from {settings_row.get('verdicts', 0):,} verdicts "
        f"({esc(', '.join(files))}); target precision {target}: the threshold is the lowest score whose fitted "
        f"P(correct | score) reaches it (logistic model on logit(score)); interval: {settings_row.get('interval')} "
        f"bootstrap percentile interval of {settings_row.get('bootstrap')} resamples (seed {settings_row.get('seed')}). "
        "Species without a threshold fall back to --min-confidence in exports. Created "
        f"{esc(str(settings_row.get('created_at', '')))}.</p>"
    )
    drawn = [f for f in fits if f["correct"] + f["wrong"] > 0][:MAX_CURVES]
    data = base64.b64encode(curves_png(drawn, points)).decode("ascii")
    parts.append(f'<img class="chart" id="chart-calibration" alt="calibration curves" src="data:image/png;base64,{data}">')
    head = ["species", "threshold", "interval", "reviewed", "correct", "wrong", "unsure", "detections", "kept",
            "expected precision kept", "reason / note"]  # fmt: skip
    body = []
    for f in fits:
        k = kept.get(f["species_code"], {})
        det, n_kept = k.get("detections", 0), k.get("kept", 0)
        share = f"{n_kept:,} ({100 * n_kept / det:.0f} %)" if det else "0"
        interval = "" if f["threshold_low"] is None else f"{f['threshold_low']:.3f} - {f['threshold_high']:.3f}"
        cells = [f["species_code"], f["threshold"], interval, f["reviewed"], f["correct"], f["wrong"], f["unsure"], det,
                 share if f["threshold"] is not None else "", k.get("expected_precision_kept"),
                 " ".join(x for x in (f["reason"], f["note"]) if x)]  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>")
    parts.append(
        "<table id='calibration-table'><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>" + "".join(body) + "</table>"
    )
    return "".join(parts)
