"""The dense CRF's kernel settings, tuned on labelled frames (``edgeseg crf-tune``).

DeepLab's published kernel settings were tuned for the fully connected CRF
(pydensecrf, normalised messages from the whole image). edgeseg's CRF sums
unnormalised messages over a small window on a coarser grid
(:mod:`converters.crf`), so the same numbers mean something else there: its
weights and widths have to be tuned for it, on frames with labels.

The search (:func:`search_params`) is a bounded coordinate (pattern) search
in log space, from the current settings:

- it moves ``w_bilateral``, ``theta_alpha``, ``theta_beta``, ``w_gaussian``
  and ``theta_gamma`` (:data:`TUNED`) within :data:`SPACE`, one at a time,
  by a factor (first 2); a move that raises the score is kept and repeated in
  the same direction; when a whole round over the settings finds nothing,
  the factor shrinks to its square root, down to :data:`MIN_FACTOR` (1.19);
- ``iterations``, ``window``, ``dilation`` and ``downsample`` are never moved: they set
  the CRF's cost and reach, so a tuned CRF costs exactly what the untuned one did
  (``benchmarks/crf_tune.py`` measures what changing them gains and costs);
- at most ``budget`` evaluations (:data:`DEFAULT_BUDGET`, 40), the start
  included; an evaluation is one CRF run over every tuning frame, so the work
  is bounded by ``budget x frames`` CRF runs plus one model run per frame
  (the model's logits are computed once and kept).

The score is the mIoU (void ignored) of the CRF's masks over all the frames
(one confusion matrix). The settings kept are never worse on those frames
than the ones the search started from.

:func:`tune_bundle` is the command's engine: it checks the bundle and the
frames, runs the bundle's model once per frame in ONNX Runtime, searches,
and rewrites the bundle atomically with the new ``crf.onnx``, the tuned
settings and a :class:`~edgeseg.manifest.CrfTuningRecord`; on any error
nothing is written.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.crf import crf_graph, crf_reference
from edgeseg.errors import ConfigError
from edgeseg.manifest import CRFParams, CrfTuningRecord

log = logging.getLogger(__name__)

Say = Callable[[str], None]

TUNED = ("w_bilateral", "theta_alpha", "theta_beta", "w_gaussian", "theta_gamma")
# (low, high) of each tuned setting; the search moves in log space and stays inside.
SPACE: dict[str, tuple[float, float]] = {
    "w_bilateral": (0.25, 64.0),
    "theta_alpha": (2.0, 200.0),  # full-resolution pixels
    "theta_beta": (1.0, 64.0),  # colour, 0..255 units
    "w_gaussian": (0.0625, 32.0),
    "theta_gamma": (0.5, 32.0),  # full-resolution pixels
}
DEFAULT_BUDGET = 40
DEFAULT_LIMIT = 32
START_FACTOR = 2.0
MIN_FACTOR = 2**0.25
MIN_GAIN = 1e-6  # a move must raise the mIoU (a fraction) by more than this to be kept

Scorer = Callable[[CRFParams], float]


@dataclass(frozen=True)
class Trial:
    """One evaluation of the search."""

    params: CRFParams
    score: float


@dataclass(frozen=True)
class Search:
    """What :func:`search_params` found: the best settings, the start's score and every trial."""

    best: CRFParams
    score: float
    start_score: float
    trials: tuple[Trial, ...]
    budget: int

    @property
    def evaluations(self) -> int:
        return len(self.trials)


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def _moved(params: CRFParams, name: str, factor: float, space: dict[str, tuple[float, float]]) -> CRFParams | None:
    """``params`` with ``name`` times ``factor``, kept inside ``space``; None when that changes nothing."""
    low, high = space[name]
    value = float(getattr(params, name))
    if value <= 0:  # a switched-off kernel can only be switched on, at the bottom of its range
        new = low if factor > 1 else value
    else:
        new = min(max(value * factor, low), high)
    new = _round(new)
    if new == value:
        return None
    changed: dict[str, Any] = {name: new}
    return dataclasses.replace(params, **changed)


def search_params(
    score: Scorer,
    start: CRFParams,
    *,
    budget: int = DEFAULT_BUDGET,
    names: Sequence[str] = TUNED,
    space: dict[str, tuple[float, float]] | None = None,
    say: Say | None = None,
) -> Search:
    """The settings among at most ``budget`` evaluations of ``score`` that score highest
    (see the module docstring for the search).

    Args:
        score: settings -> score to maximise (mIoU of the CRF's masks on the tuning frames).
        start: the settings to start from (scored first).
        budget: evaluations at most, the start included.
        names: the settings to move (a subset of :data:`TUNED`).
        space: (low, high) of each setting (default :data:`SPACE`).
        say: called with a line after each improvement.

    Raises:
        ConfigError: ``budget`` < 1, or a name that cannot be tuned.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"crf tuning budget must be an integer >= 1, got {budget!r}")
    space = dict(SPACE if space is None else space)
    unknown = [n for n in names if n not in space]
    if unknown:
        raise ConfigError(f"cannot tune crf setting(s) {unknown}; tunable: {', '.join(space)}")
    seen: dict[tuple[Any, ...], float] = {}
    trials: list[Trial] = []

    def evaluate(params: CRFParams) -> float:
        key = tuple(params.to_json().values())
        if key not in seen:
            seen[key] = float(score(params))
            trials.append(Trial(params, seen[key]))
        return seen[key]

    best = start
    best_score = start_score = evaluate(start)
    factor = START_FACTOR
    while len(trials) < budget and factor >= MIN_FACTOR:
        improved = False
        for name in names:
            for step in (factor, 1 / factor):
                moved = False
                while len(trials) < budget:
                    candidate = _moved(best, name, step, space)
                    if candidate is None or tuple(candidate.to_json().values()) in seen:
                        break
                    value = evaluate(candidate)
                    if not value > best_score + MIN_GAIN:
                        break
                    best, best_score, moved = candidate, value, True
                    if say is not None:
                        say(f"trial {len(trials)}/{budget}: {name}={getattr(best, name):g} -> mIoU {100 * value:.2f}")
                if moved:
                    improved = True
                    break  # the other direction cannot be better from here
        if not improved:
            factor = math.sqrt(factor)
    return Search(best, best_score, start_score, tuple(trials), budget)


# --------------------------------------------------------------------------- scoring


def miou_of(masks: Sequence[np.ndarray], labels: Sequence[np.ndarray], num_classes: int,
            ignore_index: int | None) -> float:
    """mIoU (a fraction) of masks against labels, one confusion matrix over all frames."""
    from edgeseg.metrics import confusion_matrix, mean_iou

    cm = np.zeros((num_classes, num_classes), np.int64)
    for mask, label in zip(masks, labels, strict=True):
        cm += confusion_matrix(mask, label, num_classes, ignore_index=ignore_index)
    value = mean_iou(cm)
    return 0.0 if math.isnan(value) else value


@dataclass
class GraphScorer:
    """Scores settings by running edgeseg's CRF graph (ONNX Runtime, CPU) on cached logits.

    Attributes:
        images: (N, H, W, C) uint8 frames, as the graph takes them.
        logits: (N, num_classes, H, W) float32 logits of those frames.
        labels: (N, H, W) class ids.
        ignore_index: label id left out of the mIoU.
        threads: ONNX Runtime threads (None: its default for this machine).
    """

    images: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    ignore_index: int | None = None
    threads: int | None = None
    _tmp: Path = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="edgeseg-crf-tune-"))

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    def masks(self, params: CRFParams) -> list[np.ndarray]:
        from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

        _, h, w, channels = self.images.shape
        path = self._tmp / "crf.onnx"
        path.write_bytes(crf_graph(params, self.num_classes, height=h, width=w, channels=channels).SerializeToString())
        with OnnxRuntimeBackend(path, threads=self.threads) as crf:
            return [
                crf.infer({"image": image[None], "logits": logits[None]}, ["mask"])["mask"][0]
                for image, logits in zip(self.images, self.logits, strict=True)
            ]

    def __call__(self, params: CRFParams) -> float:
        return miou_of(self.masks(params), list(self.labels), self.num_classes, self.ignore_index)

    def model_score(self) -> float:
        """mIoU of the logits' own masks (no CRF)."""
        return miou_of(list(self.logits.argmax(axis=1)), list(self.labels), self.num_classes, self.ignore_index)

    def close(self) -> None:
        import shutil

        shutil.rmtree(self._tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the bundle


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune_bundle` found, and the bundle (rewritten, or as it was on a dry run)."""

    bundle: Any  # edgeseg.bundle.Bundle
    search: Search
    record: CrfTuningRecord
    written: bool

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "bundle": str(self.bundle.path),
            "written": self.written,
            "frames": r.frames,
            "evaluations": r.evaluations,
            "budget": r.budget,
            "miou_model": 100 * r.miou_model,
            "miou_before": 100 * r.miou_before,
            "miou_after": 100 * r.miou_after,
            "previous": r.previous.to_json(),
            "params": self.search.best.to_json(),
            "tuned": list(r.tuned),
        }


def load_labelled(
    images: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    spec: Any,
    num_classes: int,
    *,
    ignore_index: int | None,
    label_format: str = "auto",
    limit: int | None = DEFAULT_LIMIT,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Frames of the folder ``images`` and their labels, prepared for the bundle's input.

    Every image must have a label of the same size (matched by name,
    :func:`edgeseg.labels.pair_labels`), and every label id must be a class
    (< ``num_classes``) or ``ignore_index``. Images are resized to the
    bundle's input as the runtime does, labels nearest.

    Returns:
        (N, H, W, C) uint8 images, (N, H, W) uint8 labels, the picked file names.

    Raises:
        ConfigError: a folder is missing or empty, an image has no label, a label
            differs in size from its image or holds an id that is not a class.
        InputError: an image or label cannot be read.
    """
    from edgeseg.labels import pair_labels, read_label
    from edgeseg.runtime.frames import stratified_picks
    from edgeseg.runtime.image import NearestResizer, prepare
    from edgeseg.runtime.sources import list_images, read_image

    folder, label_dir = Path(images), Path(labels)
    if not folder.is_dir():
        raise ConfigError(f"--images {folder} {'is not a folder' if folder.exists() else 'does not exist'}")
    files = list_images(folder)
    if not files:
        raise ConfigError(f"--images {folder} holds no images")
    pairs = pair_labels(files, label_dir)
    unlabelled = [f.name for f in files if f not in pairs]
    if unlabelled:
        raise ConfigError(
            f"{len(unlabelled)} of {len(files)} images in {folder} have no label in {label_dir} "
            f"(e.g. {unlabelled[0]}); labels are matched by name (x.png <-> x.png)"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--limit must be an integer >= 1, got {limit!r}")
    picks = stratified_picks(len(files), limit if limit is not None else len(files), seed)
    resize = NearestResizer()
    out_images, out_labels, names = [], [], []
    for i in picks:
        file = files[int(i)]
        label_file = pairs[file]
        frame = read_image(file)
        label = read_label(label_file, format=label_format)
        if label.shape != frame.shape[:2]:
            raise ConfigError(
                f"label {label_file} is {label.shape[0]}x{label.shape[1]} but image {file} is "
                f"{frame.shape[0]}x{frame.shape[1]}: labels must match their images pixel for pixel"
            )
        bad = np.unique(label[(label >= num_classes) & (label != (-1 if ignore_index is None else ignore_index))])
        if bad.size:
            hint = (
                "pass --ignore-index for the void id" if ignore_index is None
                else f"only ids 0..{num_classes - 1} and the ignore index {ignore_index} may occur"
            )
            raise ConfigError(
                f"label {label_file} has class id(s) {', '.join(map(str, bad[:5].tolist()))} but the bundle has "
                f"{num_classes} classes (0..{num_classes - 1}); {hint}"
            )
        image = prepare(frame, spec)[0]
        out_images.append(image)
        out_labels.append(resize(label, image.shape[:2]))
        names.append(file.name)
    return np.stack(out_images), np.stack(out_labels), names


def model_logits(graph: Path, images: np.ndarray, say: Say | None = None) -> np.ndarray:
    """(N, C, H, W) float32 logits of a bundle graph (its ``logits`` output) for each frame, in ONNX Runtime."""
    from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

    out = []
    with OnnxRuntimeBackend(graph) as model:
        for i, image in enumerate(images):
            out.append(model.infer({"image": image[None]}, ["logits"])["logits"][0].astype(np.float32))
            if say is not None and (i + 1) % 16 == 0:
                say(f"model logits: {i + 1}/{len(images)} frames")
    return np.stack(out)


def tune_bundle(
    bundle: str | os.PathLike[str],
    images: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    *,
    ignore_index: int | None = None,
    label_format: str = "auto",
    limit: int | None = DEFAULT_LIMIT,
    budget: int = DEFAULT_BUDGET,
    seed: int = 0,
    dry_run: bool = False,
    progress: Say | None = None,
) -> TuneResult:
    """Tunes the kernel settings of a bundle's separate CRF on labelled frames and writes them in.

    Args:
        bundle: a bundle built with a separate CRF (``--crf separate``).
        images: a folder of frames.
        labels: their label images (class ids), matched by name, of the same size.
        ignore_index: the label id left out of the mIoU (void; CamVid: 11).
        label_format: how labels are read (:func:`edgeseg.labels.read_label`).
        limit: tune on at most this many frames, spread over the folder (None: all).
        budget: CRF evaluations at most (each one runs the CRF on every frame).
        seed: which frames ``limit`` picks.
        dry_run: search and report, but leave the bundle as it is.
        progress: called with a short message as each step starts.

    Returns:
        The result; its bundle is the rewritten one (or the loaded one on a dry run).

    Raises:
        ConfigError: the bundle has no CRF, or a fused one; bad options; the frames or
            labels do not fit (see :func:`load_labelled`). Nothing is written.
        BundleError: the bundle is missing or altered, or changed while this ran.
    """
    from converters.tensorrt import op_types_of
    from edgeseg.bundle import Bundle, write_bundle
    from edgeseg.labels import default_ignore_index

    say = progress if progress is not None else log.info
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"--trials must be an integer >= 1, got {budget!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed must be an integer >= 0, got {seed!r}")
    if ignore_index is not None and not 0 <= ignore_index <= 255:
        raise ConfigError(f"--ignore-index must be a label id in 0..255, got {ignore_index}")
    loaded = Bundle.load(bundle)
    manifest = loaded.manifest
    crf = manifest.crf
    if crf is None:
        raise ConfigError(
            f"bundle {loaded.path} has no CRF stage to tune; build one with it: edgeseg build ... --crf separate "
            "(edgeseg.build(..., crf='separate'))"
        )
    if crf.mode != "separate" or crf.graph is None:
        raise ConfigError(
            f"the CRF of {loaded.path} is fused into the model's graphs, which crf-tune does not rewrite; build "
            "with --crf separate, tune that bundle, then (for a fused CRF) build with --crf fused and the tuned "
            "values as --crf-param KEY=VALUE"
        )
    if ignore_index is None:
        ignore_index = default_ignore_index(label_format)
    spec = manifest.input
    num_classes = manifest.num_classes
    frames, label_maps, names = load_labelled(
        images, labels, spec, num_classes, ignore_index=ignore_index, label_format=label_format,
        limit=limit, seed=seed,
    )
    precision = manifest.precision
    say(f"running the {precision} model on {len(names)} frames (ONNX Runtime)")
    logits = model_logits(loaded.graph(precision), frames, say)
    scorer = GraphScorer(frames, logits, label_maps, ignore_index)
    try:
        model_score = scorer.model_score()
        say(f"model alone: mIoU {100 * model_score:.2f}; searching the CRF's kernel settings "
            f"(at most {budget} evaluations on {len(names)} frames)")
        found = search_params(scorer, crf.params, budget=budget, say=say)
        say(f"CRF mIoU {100 * found.start_score:.2f} -> {100 * found.score:.2f} after {found.evaluations} evaluations")
        record = CrfTuningRecord(
            images=str(Path(images)), labels=str(Path(labels)), frames=len(names), ignore_index=ignore_index,
            seed=seed, logits=precision, tuned=TUNED, budget=budget, evaluations=found.evaluations,
            miou_model=model_score, miou_before=found.start_score, miou_after=found.score, previous=crf.params,
        )
        if dry_run:
            return TuneResult(loaded, found, record, written=False)
        _, h, w, channels = frames.shape
        graph = crf_graph(found.best, num_classes, height=h, width=w, channels=channels)
        agreement = _reference_agreement(scorer, found.best)
    finally:
        scorer.close()
    stale = {e.file for e in manifest.engines if e.stage == "crf"}  # built from the old crf.onnx
    files: dict[str, bytes | Path] = {
        n: loaded.path / n for n in manifest.files if n != crf.graph and n not in stale
    }
    files[crf.graph] = graph.SerializeToString()
    parity = manifest.parity
    if parity is not None:
        parity = dataclasses.replace(parity, crf_agreement=agreement)
    updated = manifest.replace(
        crf=dataclasses.replace(crf, params=found.best, tuning=record),
        engines=tuple(e for e in manifest.engines if e.stage != "crf"),
        op_types={**manifest.op_types, crf.graph: sorted(op_types_of(graph))},
        parity=parity,
        files={},  # write_bundle records the files it writes
    )
    if stale:
        say(f"dropping the CRF engine(s) built from the old crf.onnx: {', '.join(sorted(stale))} "
            "(edgeseg engine BUNDLE builds them again)")
    say(f"writing {loaded.path}")
    written = write_bundle(loaded.path, updated, files, overwrite=True, base=loaded)
    return TuneResult(written, found, record, written=True)


def _reference_agreement(scorer: GraphScorer, params: CRFParams, frames: int = 2) -> float:
    """Pixel agreement of the new graph with the NumPy reference on the first frames' logits
    (what a build records as ``parity.crf_agreement``)."""
    n = min(frames, len(scorer.images))
    sub = GraphScorer(scorer.images[:n], scorer.logits[:n], scorer.labels[:n], scorer.ignore_index)
    try:
        got = sub.masks(params)
    finally:
        sub.close()
    agree = [
        float((mask == crf_reference(image, logits, params).argmax(axis=0)).mean())
        for mask, image, logits in zip(got, sub.images, sub.logits, strict=True)
    ]
    return float(np.mean(agree))


__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_LIMIT",
    "SPACE",
    "TUNED",
    "GraphScorer",
    "Search",
    "TuneResult",
    "Trial",
    "load_labelled",
    "model_logits",
    "search_params",
    "tune_bundle",
]
