"""The report's "Next steps" and "Files" section: what to run now, and links to what is there.

Links are relative to the bundle folder (``report.html`` sits in it), so the folder can be moved
or copied whole: the exports (``exports/``, with their ``export.json``), review packs
(``review/<round>/review.html``), the quicklook CSVs and the DuckDB database. Commands are
shell-quoted; nothing here runs anything.
"""

from __future__ import annotations

import glob
import html
import os
import shlex
from typing import Any


def _link(rel: str, text: str | None = None) -> str:
    href = html.escape("/".join(rel.split(os.sep)), quote=True)
    return f"<a href='{href}'>{html.escape(text or rel)}</a>"


def found_files(folder: str) -> dict[str, list[str]]:
    """What is in the bundle folder to link, as paths relative to it (sorted)."""

    def rel(paths: list[str]) -> list[str]:
        return sorted(os.path.relpath(p, folder) for p in paths)

    exports = os.path.join(folder, "exports")
    return {
        "exports": rel([p for p in glob.glob(os.path.join(exports, "*")) if os.path.basename(p) != "export.json"]),
        "export_list": rel(glob.glob(os.path.join(exports, "export.json"))),
        "review": rel(glob.glob(os.path.join(folder, "review", "*", "review.html"))),
        "thresholds": rel(glob.glob(os.path.join(folder, "thresholds.csv"))),
    }


def next_steps(summary: dict[str, Any], folder: str, files: dict[str, list[str]]) -> list[str]:
    """The next steps as HTML list items (pure, but for the folder's name in commands)."""
    c = summary["counts"]
    q = shlex.quote(folder)
    steps = []
    if summary.get("tiny_model"):
        steps.append(
            "These detections come from the <b>tiny test model</b>: run again with the real HawkEars model "
            "(<code>make hawkears-models</code> stages it, or <code>--hawkears-data-root DIR</code>; then <code>make infer MANIFEST=...</code>) before using them."
        )
    unfinished = c.get("failed", 0) + c.get("not_analysed", 0)
    if unfinished:
        steps.append(
            f"{unfinished:,} chunk(s) were not analysed (<a href='#failures'>the table</a>): run the manifest again "
            "with <code>--resume</code> (<code>make resume MANIFEST=...</code>), then bundle again."
        )
    if not files["exports"]:
        steps.append(
            "Write the exports (WildTrax upload, Raven selection tables, the lab's tables, detection histories): "
            f"<code>badc-mpi export {html.escape(q)} --format all</code> (into <code>exports/</code> here)."
        )
    if not files["review"]:
        steps.append(
            "Check a sample of detections by ear: "
            f"<code>badc-mpi review {html.escape(q)} --all-species</code> (or <code>make review BUNDLE=...</code>) "
            "writes a pack at <code>review/&lt;round&gt;/review.html</code> in this folder, linked here; "
            "open it, give verdicts, export <code>verdicts.csv</code>."
        )
    elif not files.get("thresholds"):
        steps.append(
            "Turn the verdicts into per-species thresholds: "
            f"<code>badc-mpi calibrate {html.escape(q)} --verdicts verdicts.csv</code>, then export with "
            "<code>--thresholds thresholds.csv</code>."
        )
    steps.append(
        "Query everything: <code>bundle.duckdb</code> (views label_summary, recording_summary, timeline, "
        f"worker_throughput) with <code>duckdb {html.escape(shlex.quote(os.path.join(folder, 'bundle.duckdb')))}</code>, "
        "or the CSVs in <code>quicklook/</code>."
    )
    return steps


def guide_html(summary: dict[str, Any], folder: str) -> str:
    """The section: next steps, then links to the files that are there."""
    files = found_files(folder)
    items = "".join(f"<li>{s}</li>" for s in next_steps(summary, folder, files))
    links = []
    if files["exports"]:
        listed = ", ".join(_link(p, os.path.basename(p)) for p in files["exports"])
        extra = f" ({_link(files['export_list'][0], 'list of files')})" if files["export_list"] else ""
        links.append(f"<li id='link-exports'>Exports: {listed}{extra}</li>")
    else:
        links.append("<li id='link-exports'>Exports: none yet (see the next steps)</li>")
    if files["review"]:
        listed = ", ".join(_link(p, p.split(os.sep)[-2]) for p in files["review"])
        links.append(f"<li id='link-review'>Review packs: {listed}</li>")
    else:
        links.append("<li id='link-review'>Review packs: none yet</li>")
    links.append(
        "<li>Tables: "
        + ", ".join(_link(f"quicklook/{v}.csv", v) for v in ("label_summary", "recording_summary", "timeline"))
        + f", {_link('summary.json')}, {_link('detections.parquet')}</li>"
    )
    return (
        f"<div class='next' id='next-steps'><h2>Next steps</h2><ol>{items}</ol>"
        f"<h3>Files</h3><ul id='files'>{''.join(links)}</ul></div>"
    )
