"""Parity assertions for users' own test suites.

    from edgeseg.testing import assert_parity

    def test_deployed_model_matches_training():
        assert_parity("road.edgeseg", load_my_model(), "frames/", labels="labels/", max_miou_drop=0.3)

Each graph is held to the agreement its precision is built to
(:data:`edgeseg.metrics.DEFAULT_MIN_AGREEMENT`: fp32 99.9 %, fp16 99.5 %,
int8 99 % of pixels), so the same three lines pass on an INT8 bundle that its
build accepted; ``min_agreement=0.999`` holds every graph to one figure.

With pytest, the ``edgeseg_parity`` fixture (registered by the package's
pytest plugin) does the same and writes the HTML report under the test's
temporary directory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.bundle import Bundle
from edgeseg.errors import ConfigError
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
    min_agreement: float | Mapping[str, float] | None = DEFAULT_MIN_AGREEMENT,
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
        min_agreement: lowest fraction of pixels where masks agree: one figure for every
            graph, or one per precision (the default, :data:`edgeseg.metrics.DEFAULT_MIN_AGREEMENT`:
            what each precision's build targets); None: not checked.
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
        ConfigError: ``min_agreement`` maps no figure to a precision that is compared.
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
    manifest = Bundle.load(bundle, verify=False).manifest
    if isinstance(min_agreement, Mapping):
        _check_by_precision(report, manifest.graphs, min_agreement, max_miou_drop, max_abs_error)
    else:
        report.check(min_agreement=min_agreement, max_miou_drop=max_miou_drop, max_abs_error=max_abs_error)
    if report_dir is not None:
        from edgeseg.report import write_report

        write_report(report, Path(report_dir), np.asarray(manifest.palette, dtype=np.uint8))
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


def _check_by_precision(
    report: ParityReport,
    graphs: Mapping[str, str],
    targets: Mapping[str, float],
    max_miou_drop: float | None,
    max_abs_error: float | None,
) -> None:
    """``report.check`` with each artefact held to the agreement target of its precision.

    Raises:
        ConfigError: ``targets`` has no figure for a compared precision.
    """
    precision_of = {graph: precision for precision, graph in graphs.items()}
    failures: list[str] = []
    used: dict[str, float] = {}
    for artefact in report.artefacts:
        precision = precision_of.get(artefact.graph, artefact.name.split(" ", 1)[0])
        if precision not in targets:
            raise ConfigError(
                f"min_agreement has no figure for {precision} ({artefact.graph}); "
                f"it has {', '.join(targets)}"
            )
        used[precision] = targets[precision]
        alone = dataclasses.replace(report, artefacts=[artefact])
        failures += alone.check(
            min_agreement=targets[precision], max_miou_drop=max_miou_drop, max_abs_error=max_abs_error
        )
    report.thresholds = {
        **{f"min_agreement ({precision})": target for precision, target in used.items()},
        "max_miou_drop": max_miou_drop,
        "max_abs_error": max_abs_error,
    }
    report.failures = failures
