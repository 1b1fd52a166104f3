"""A self-contained HTML report: per-head faithfulness first, then figures inlined as base64 PNG."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..distillation import FaithfulnessReport
from .nearest_neighbours import Hubness
from .uncertainty import SCORE_DESCRIPTIONS, UncertaintyReport

__all__ = ["render_report", "write_report"]

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 3px 9px; text-align: right; }
th { background: #eee; }
td.constant { color: #888; font-style: italic; }
tr.warning td { color: #b00; }
tr.worse td { color: #a00; }
figure { margin: 1.5em 0; }
figcaption { font-size: 0.9em; color: #444; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.6em; }
"""


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _faithfulness_section(report: FaithfulnessReport, head_names: Sequence[str] | None) -> str:
    constant = set(report.constant_heads)
    rows = []
    for head, corr in enumerate(report.pearson_per_head):
        label = html.escape(head_names[head]) if head_names is not None else str(head)
        if head in constant:
            rows.append(f"<tr><td>{label}</td><td class='constant'>constant (excluded)</td></tr>")
        else:
            rows.append(f"<tr><td>{label}</td><td>{_number(corr)}</td></tr>")
    summary = [
        ("mean Pearson (non-constant heads)", _number(report.pearson_mean)),
        ("min Pearson", _number(report.pearson_min)),
        ("constant heads", ", ".join(map(str, report.constant_heads)) or "none"),
        ("examples", str(report.num_samples)),
    ]
    if report.ann_accuracy is not None:
        summary.append(("network accuracy", _number(report.ann_accuracy)))
    if report.gp_accuracy is not None:
        summary.append(("GP accuracy (arg-max of means)", _number(report.gp_accuracy)))
    if report.agreement is not None:
        summary.append(("GP / network agreement", _number(report.agreement)))
    summary_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary)
    return (
        "<section id='faithfulness'><h2>Faithfulness</h2>"
        f"<table class='summary'>{summary_rows}</table>"
        "<table class='per-head'><tr><th>head</th><th>Pearson (GP mean vs network)</th></tr>"
        + "".join(rows)
        + "</table></section>"
    )


def _uncertainty_section(report: UncertaintyReport) -> str:
    counts = f"{report.num_errors} misclassified of {report.num_samples} examples"
    detection = report.detection
    if detection is None:
        note = "AUROC undefined: the network makes no error (or only errors) on these examples."
        return (
            f"<section id='uncertainty'><h2>Uncertainty</h2><p>{html.escape(counts)}. {html.escape(note)}</p></section>"
        )
    level = round(100 * detection.level)
    header = (
        "<tr><th>score (higher = more likely an error)</th><th>AUROC</th>"
        f"<th>{level} % interval</th><th>minus {html.escape(detection.reference)} [{level} % interval]</th>"
        "<th>reading</th></tr>"
    )
    rows = []
    for score in detection.scores:
        description = SCORE_DESCRIPTIONS.get(score.name, score.name)
        interval = f"[{score.ci_low:.3f}, {score.ci_high:.3f}]"
        difference = f"{score.difference:+.3f} [{score.difference_ci_low:+.3f}, {score.difference_ci_high:+.3f}]"
        css = " class='worse'" if score.auroc < 0.5 else ""
        rows.append(
            f"<tr{css}><td>{html.escape(description)}</td><td>{score.auroc:.3f}</td><td>{interval}</td>"
            f"<td>{difference}</td><td>{html.escape(score.verdict())}</td></tr>"
        )
    notes = [
        f"{counts}. AUROC: the probability that a misclassified example scores above a correct one "
        f"(0.5 is chance; below 0.5 the score is lower on errors, i.e. worse than chance). Intervals: stratified "
        f"bootstrap, {detection.num_resamples} resamples (seed {detection.seed}); differences are paired."
    ]
    if report.num_errors < 50:
        notes.append(
            f"Only {report.num_errors} errors: the intervals are wide and a difference between scores is "
            "unlikely to be resolved; at least 50 errors are needed for a useful comparison."
        )
    below = [SCORE_DESCRIPTIONS.get(s.name, s.name) for s in detection.scores if s.auroc < 0.5]
    if below:
        notes.append(
            "Below 0.5, i.e. lower on the misclassified examples than on the correct ones (worse than chance "
            "where the whole interval is below 0.5): " + "; ".join(below) + "."
        )
    paragraphs = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    return f"<section id='uncertainty'><h2>Uncertainty</h2>{paragraphs}<table>{header}{''.join(rows)}</table></section>"


def _neighbours_section(hubness: Mapping[str, Hubness], metric: str | None) -> str:
    rows = []
    for name, stats in hubness.items():
        flag = " class='warning'" if stats.max_top1_share > 0.1 and stats.num_queries >= 20 else ""
        rows.append(
            f"<tr{flag}><td>{html.escape(name)}</td><td>{stats.num_queries}</td><td>{stats.distinct_top1}</td>"
            f"<td>{stats.distinct}</td><td>{stats.max_occurrence}</td><td>{stats.max_top1_share:.0%} "
            f"(instance {stats.hub})</td></tr>"
        )
    ranked = f"Neighbours are ranked by the kernel {html.escape(metric)}. " if metric else ""
    return (
        "<section id='neighbours'><h2>Neighbours: hubness</h2>"
        f"<p>{ranked}A healthy explanation spreads its neighbours over the training set; rows in red have "
        "one training instance as the top neighbour of more than a tenth of the queries.</p>"
        "<table><tr><th>grid</th><th>queries</th><th>distinct top-1</th><th>distinct in all lists</th>"
        "<th>largest k-occurrence</th><th>largest top-1 share</th></tr>" + "".join(rows) + "</table></section>"
    )


def render_report(
    *,
    title: str,
    faithfulness: FaithfulnessReport,
    figures: Sequence[tuple[str, bytes]] = (),
    uncertainty: UncertaintyReport | None = None,
    head_names: Sequence[str] | None = None,
    notes: str | None = None,
    extra: Mapping[str, Any] | None = None,
    hubness: Mapping[str, Hubness] | None = None,
    metric: str | None = None,
) -> str:
    """The report as one HTML string with no external resources.

    :param faithfulness: shown first, one row per head (constant heads marked and excluded).
    :param figures: ``(caption, png_bytes)`` pairs, inlined as ``data:image/png;base64`` images.
    :param uncertainty: the misclassification section (optional): every score's AUROC with its interval,
        beside the max-softmax and logit-margin baselines, and a reading of each (chance, worse than chance).
    :param head_names: display names of the heads (e.g. class names).
    :param notes: a paragraph of plain text under the title.
    :param extra: any JSON-serialisable details, shown at the end.
    :param hubness: per neighbour grid (caption → :class:`~gpex_gpytorch.explain.Hubness`), the
        hubness diagnostic, shown before the figures.
    :param metric: the similarity the neighbours were ranked by (named in that section).
    """
    if not isinstance(faithfulness, FaithfulnessReport):
        raise TypeError(f"faithfulness: expected a FaithfulnessReport, got {type(faithfulness).__name__}")
    if uncertainty is not None and not isinstance(uncertainty, UncertaintyReport):
        raise TypeError(f"uncertainty: expected an UncertaintyReport or None, got {type(uncertainty).__name__}")
    if head_names is not None and len(head_names) != len(faithfulness.pearson_per_head):
        raise ValueError(
            f"head_names: expected {len(faithfulness.pearson_per_head)} names (one per head), got {len(head_names)}"
        )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if notes:
        parts.append(f"<p>{html.escape(notes)}</p>")
    parts.append(_faithfulness_section(faithfulness, head_names))
    if uncertainty is not None:
        parts.append(_uncertainty_section(uncertainty))
    if hubness:
        parts.append(_neighbours_section(hubness, metric))
    if figures:
        parts.append("<section id='figures'><h2>Explanations</h2>")
        for caption, png in figures:
            encoded = base64.b64encode(png).decode("ascii")
            parts.append(
                f"<figure><img alt='{html.escape(caption, quote=True)}' src='data:image/png;base64,{encoded}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</section>")
    if extra:
        parts.append(
            f"<section id='details'><h2>Details</h2><pre>{html.escape(json.dumps(extra, indent=2))}</pre></section>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, **kwargs: Any) -> Path:
    """:func:`render_report` written to ``path`` (UTF-8); returns the path."""
    path = Path(path)
    path.write_text(render_report(**kwargs), encoding="utf-8")
    return path
