"""Parity assertions for users' own test suites.

    from edgeseg.testing import assert_parity

    def test_deployed_model_matches_training():
        assert_parity("road.edgeseg", load_my_model(), "frames/", labels="labels/", max_miou_drop=0.3)

With pytest, the ``edgeseg_parity`` fixture (registered by the package's
pytest plugin) does the same and writes the HTML report under the test's
temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.bundle import Bundle
from edgeseg.metrics import DEFAULT_MIN_AGREEMENT
from edgeseg.parity import ParityReport, compare

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


def assert_parity(
    bundle: str | os.PathLike[str],
    model: nn.Module,
    images: Any,
    *,
    labels: Any = None,
    precision: str | list[str] | None = None,
    min_agreement: float | None = DEFAULT_MIN_AGREEMENT["fp32"],
    max_miou_drop: float | None = None,
    max_abs_error: float | None = None,
    label_format: str = "auto",
    ignore_index: int | None = None,
    limit: int | None = None,
    report_dir: str | os.PathLike[str] | None = None,
) -> ParityReport:
    """Compares a bundle with the PyTorch model and raises when it drifts.

    Args:
        bundle: the bundle directory.
        model: the PyTorch model the bundle was built from (eval mode is set here).
        images: a folder, a list of image files, or arrays of frames.
        labels: a folder of label images, a mapping name -> ids, or arrays aligned with ``images``.
        precision: a graph precision or a list of them (default: every graph of the bundle).
        min_agreement: lowest fraction of pixels where masks agree (None: not checked).
        max_miou_drop: largest mIoU drop in points against PyTorch (needs labels).
        max_abs_error: largest absolute logit difference.
        label_format: ``auto``, ``ids``, ``voc`` or ``cityscapes``.
        ignore_index: label value left out of mIoU.
        limit: compare at most this many images.
        report_dir: also write the HTML report there.

    Returns:
        The report, when every threshold holds.

    Raises:
        AssertionError: with every failing figure and the summary table.
    """
    precisions = [precision] if isinstance(precision, str) else precision
    report = compare(
        bundle,
        model,
        images,
        labels=labels,
        label_format=label_format,
        ignore_index=ignore_index,
        precisions=precisions,
        limit=limit,
    )
    report.check(min_agreement=min_agreement, max_miou_drop=max_miou_drop, max_abs_error=max_abs_error)
    if report_dir is not None:
        from edgeseg.report import write_report

        palette = Bundle.load(bundle, verify=False).manifest.palette
        write_report(report, Path(report_dir), np.asarray(palette, dtype=np.uint8))
    if not report.passed:
        where = f"\nreport: {Path(report_dir) / 'index.html'}" if report_dir is not None else ""
        raise AssertionError(
            f"parity of {bundle} against PyTorch failed:\n  "
            + "\n  ".join(report.failures)
            + "\n"
            + report.table()
            + where
        )
    return report
