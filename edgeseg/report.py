"""The parity report for people: one HTML page with its PNGs, no JavaScript, no CDN.

``index.html`` holds the verdict, the summary table, per-class IoU bars
(PyTorch and each artefact side by side from one baseline, with the deltas)
and, for each artefact's worst images, the frame, both masks and a
disagreement heat map on a fixed, labelled scale: the logit error relative to
PyTorch's largest logit, from 1e-6 to 1 on a log scale, so that a 1e-6 error
looks as small as it is.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from edgeseg.parity import ParityReport, WorstImage
from edgeseg.runtime.overlay import colorize

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0} td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.pass{color:#070;font-weight:bold} .fail{color:#b00;font-weight:bold}
.bar{height:10px;display:inline-block;vertical-align:middle}
.track{display:inline-block;width:300px;vertical-align:middle}
.bars td{border:none;padding:1px 6px;text-align:left} .legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}
.scale{width:300px;font-size:.8em;margin:.5em 0 1em}
.scale .ramp{height:12px;background:linear-gradient(to right,#000,#f00,#ff0);border:1px solid #ccc}
.scale .ticks{display:flex;justify-content:space-between}
.worst img{width:220px;image-rendering:pixelated;border:1px solid #ccc;margin:2px}
.worst figure{display:inline-block;margin:4px;text-align:center;font-size:.85em}
"""
_SERIES_COLORS = ["#555", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
# The heat map's fixed range: log10 of |Δlogit| relative to the reference's largest |logit|.
HEAT_DECADES = (-6, 0)


def write_report(report: ParityReport, out_dir: str | os.PathLike[str], palette: np.ndarray) -> Path:
    """Writes ``index.html``, ``report.json`` and the images under ``out_dir``.

    Returns:
        The path of ``index.html``.
    """
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>edgeseg parity</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Parity: {_e(Path(report.bundle).name)} against PyTorch</h1>",
        _verdict(report),
        _summary_table(report),
    ]
    if report.reference_iou is not None:
        parts.append(_class_bars(report))
    for index, artefact in enumerate(report.artefacts):
        if artefact.worst:
            scale = float(artefact.figures.get("max_abs_logit", 0.0))
            parts.append(f"<h2>Worst images: {_e(artefact.name)}</h2>")
            parts.append(_heat_legend(scale))
            parts.append("<div class='worst'>")
            for rank, worst in enumerate(artefact.worst):
                parts.append(_worst_row(worst, images, f"a{index}-{rank}", palette, scale))
            parts.append("</div>")
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def _e(text: object) -> str:
    return html.escape(str(text))


def _num(value: float, digits: int, sign: bool = False) -> str:
    """``value`` rounded to ``digits``, never as negative zero (``-0.00``)."""
    rounded = round(value, digits) + 0.0  # -0.0 + 0.0 is 0.0
    return f"{rounded:{'+' if sign else ''}.{digits}f}"


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else _num(100 * value, digits)


def _verdict(report: ParityReport) -> str:
    thresholds = ", ".join(f"{k} {v}" for k, v in report.thresholds.items() if v is not None) or "none"
    head = (
        f"<p><span class='{'pass' if report.passed else 'fail'}'>{'PASSED' if report.passed else 'FAILED'}</span> "
        f"&mdash; {report.images} images ({report.labelled} labelled), reference {_e(report.reference)}, "
        f"thresholds: {_e(thresholds)}</p>"
    )
    if report.failures:
        head += "<ul>" + "".join(f"<li class='fail'>{_e(f)}</li>" for f in report.failures) + "</ul>"
    return head


def _summary_table(report: ParityReport) -> str:
    labelled = report.reference_miou is not None
    cols = ["artefact", "pixel agreement %", "worst image %", "max |Δlogit|", "mean |Δlogit|"]
    if labelled:
        cols += ["mIoU", "Δ mIoU (points)"]
    rows = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
    if labelled:
        rows.append(
            "<tr><td>PyTorch (reference)</td><td></td><td></td><td></td><td></td>"
            f"<td>{_pct(report.reference_miou)}</td><td></td></tr>"
        )
    for a in report.artefacts:
        f = a.figures
        cells = [
            _e(a.name),
            _pct(f["agreement"], 4),
            _pct(f["worst_image_agreement"], 4),
            f"{f['max_abs_error']:.3g}",
            f"{f['mean_abs_error']:.3g}",
        ]
        if labelled:
            drop = report.miou_drop(a)
            cells += [_pct(a.miou), "n/a" if drop is None else _num(-drop, 2, sign=True)]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _class_bars(report: ParityReport) -> str:
    series = [("PyTorch", report.reference_iou or [])] + [(a.name, a.iou or []) for a in report.artefacts]
    legend = "".join(
        f"<span style='background:{_SERIES_COLORS[i % len(_SERIES_COLORS)]}'></span>{_e(name)}"
        for i, (name, _) in enumerate(series)
    )
    rows = [f"<h2>IoU per class (%)</h2><p class='legend'>{legend}</p><table class='bars'>"]
    for c, name in enumerate(report.classes):
        bars = []
        for i, (_, values) in enumerate(series):
            v = values[c] if c < len(values) else float("nan")
            width = 0 if math.isnan(v) else int(round(300 * v))
            color = _SERIES_COLORS[i % len(_SERIES_COLORS)]
            delta = ""
            if i > 0 and not math.isnan(v) and not math.isnan(series[0][1][c]):
                delta = f" ({_num(100 * (v - series[0][1][c]), 2, sign=True)})"
            # every bar starts at the left of a track of full width: one baseline for all
            bars.append(
                f"<div class='iou'><span class='track'><span class='bar' style='width:{width}px;"
                f"background:{color}'></span></span> {_pct(v)}{delta}</div>"
            )
        rows.append(f"<tr><td>{_e(name)}</td><td>{''.join(bars)}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _worst_row(worst: WorstImage, folder: Path, key: str, palette: np.ndarray, scale: float) -> str:
    frame = worst.image[:, :, 0] if worst.image.shape[2] == 1 else worst.image
    files = {
        "frame": frame,
        "pytorch": colorize(worst.reference, palette),
        "artefact": colorize(worst.artefact, palette),
        "disagreement": _heatmap(worst.error, worst.reference != worst.artefact, scale),
    }
    figures = []
    for label, array in files.items():
        name = f"{key}-{label}.png"
        Image.fromarray(np.ascontiguousarray(array)).save(folder / name)
        figures.append(f"<figure><img src='images/{name}' alt='{label}'><figcaption>{label}</figcaption></figure>")
    return (
        f"<p><b>{_e(worst.name)}</b>: agreement {100 * worst.agreement:.3f}%, "
        f"max |Δlogit| {float(worst.error.max()):.3g}</p>" + "".join(figures)
    )


def _heat_legend(scale: float) -> str:
    """The heat map's colour bar, its ticks and what it measures."""
    low, high = HEAT_DECADES
    ticks = "".join(f"<span>{'1' if d == 0 else f'1e{d}'}</span>" for d in range(low, high + 1))
    return (
        "<div class='scale'><div class='ramp'></div>"
        f"<div class='ticks'>{ticks}</div>"
        f"disagreement: |Δlogit| relative to PyTorch's largest |logit| ({scale:.3g}), log scale; "
        "black at or below 1e-6; white: the two masks differ</div>"
    )


def _heatmap(error: np.ndarray, differs: np.ndarray, scale: float) -> np.ndarray:
    """|Δlogit| / ``scale`` on the fixed log range as black -> red -> yellow; differing pixels white.

    The range is :data:`HEAT_DECADES` whatever the image's own errors, so colours
    compare across images and reports: 1e-6 and below is black, 1e-3 full red,
    1 (an error as large as the largest logit) yellow.
    """
    low, high = HEAT_DECADES
    relative = np.asarray(error, np.float64) / scale if scale > 0 else np.asarray(error, np.float64)
    with np.errstate(divide="ignore"):
        decades = np.log10(relative)  # -inf where there is no error at all
    t = np.clip((decades - low) / (high - low), 0.0, 1.0)
    rgb = np.zeros((*error.shape, 3), np.float32)
    rgb[..., 0] = np.clip(2 * t, 0, 1)
    rgb[..., 1] = np.clip(2 * t - 1, 0, 1)
    out = (255 * rgb).astype(np.uint8)
    out[differs] = 255
    return out
