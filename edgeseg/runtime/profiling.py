"""Latency profiling: per-stage timings of a frame pipeline, and ONNX Runtime's per-layer profile.

A :class:`Profiler` collects one :class:`FrameTiming` per frame (the
``(start, end)`` of each stage in :func:`time.perf_counter` seconds) from the
pipeline's threads, and summarises a rolling window of them as percentiles
(:class:`ProfileSummary`). The kept frames can be written as a Chrome /
Perfetto trace (:func:`write_chrome_trace`) or drawn (:func:`plot`, needs
matplotlib). :func:`layer_timings_from_onnxruntime` reads the JSON profile
that ONNX Runtime writes when a backend is created with ``profile_dir=``.

Deploy-time module: it imports only the standard library and NumPy;
matplotlib is imported by :func:`plot` alone.

Example:
    >>> import time
    >>> profiler = Profiler(window=500)
    >>> t0 = time.perf_counter()
    >>> t1 = t0 + 0.002
    >>> t2 = t1 + 0.010
    >>> timing = profiler.record_stages(0, {"preprocess": (t0, t1), "infer": (t1, t2)})
    >>> round(timing.end_to_end_ms, 3)
    12.0
    >>> profiler.summary().stages["infer"].count
    1
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import ConfigError, InputError, MissingDependencyError

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("capture", "preprocess", "infer", "postprocess")
"""The usual stages, in pipeline order. Any other stage name is accepted too."""

_KERNEL_SUFFIX = "_kernel_time"


# --------------------------------------------------------------------------- per-frame timings


@dataclass(frozen=True)
class FrameTiming:
    """When each stage of one frame ran.

    Attributes:
        frame_index: the frame's number in its stream.
        stages: stage name -> ``(start, end)`` in :func:`time.perf_counter` seconds.
        end_to_end_ms: from the capture start (or the first stage's start) to
            the result being ready, in milliseconds; NaN for a frame dropped
            by :meth:`Profiler.record_drop`.
        dropped: the frame was dropped, not processed. Dropped frames are
            counted and shown in traces but left out of every statistic.
    """

    frame_index: int
    stages: dict[str, tuple[float, float]]
    end_to_end_ms: float
    dropped: bool = False

    def durations_ms(self) -> dict[str, float]:
        """Stage name -> duration in milliseconds."""
        return {name: (end - start) * 1e3 for name, (start, end) in self.stages.items()}


@dataclass(frozen=True)
class Percentiles:
    """Statistics of one series of durations, in milliseconds.

    All values are NaN when ``count`` is 0.

    Attributes:
        count: how many durations.
        mean: their mean.
        p50: median (linear interpolation, as :func:`numpy.percentile`).
        p90: 90th percentile.
        p99: 99th percentile.
        max: the largest.
        min: the smallest.
        jitter: population standard deviation of the durations.
    """

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float
    min: float
    jitter: float

    @classmethod
    def of(cls, durations_ms: Sequence[float] | np.ndarray) -> Percentiles:
        """Computes the statistics of ``durations_ms`` (NaN everywhere when empty)."""
        values = np.asarray(durations_ms, dtype=np.float64)
        if values.size == 0:
            nan = math.nan
            return cls(count=0, mean=nan, p50=nan, p90=nan, p99=nan, max=nan, min=nan, jitter=nan)
        p50, p90, p99 = np.percentile(values, [50.0, 90.0, 99.0])
        return cls(
            count=int(values.size),
            mean=float(values.mean()),
            p50=float(p50),
            p90=float(p90),
            p99=float(p99),
            max=float(values.max()),
            min=float(values.min()),
            jitter=float(values.std()),
        )

    def to_json(self) -> dict[str, float | int]:
        """The statistics as a dict (milliseconds rounded to 0.1 µs; NaN stays NaN)."""
        out: dict[str, float | int] = {"count": self.count}
        for key in ("mean", "p50", "p90", "p99", "max", "min", "jitter"):
            value = float(getattr(self, key))
            out[key] = value if math.isnan(value) else round(value, 4)
        return out


@dataclass(frozen=True)
class ProfileSummary:
    """Statistics of a :class:`Profiler`'s window.

    A profiler that has seen no processed frame gives ``frames=0``, NaN
    ``fps``, no stages and an ``end_to_end`` whose values are all NaN.

    Attributes:
        frames: processed frames in the window.
        dropped: dropped frames recorded in total (since creation or reset).
        fps: processed frames in the window / wall time from the first stage
            start to the last stage end among them; NaN below 2 frames.
        stages: stage name -> statistics of its durations; the names of
            :data:`STAGES` first, in that order, then others in first-seen order.
        end_to_end: statistics of the frames' end-to-end latencies.
    """

    frames: int
    dropped: int
    fps: float
    stages: dict[str, Percentiles]
    end_to_end: Percentiles

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN values are kept as ``float('nan')``)."""
        return {
            "frames": self.frames,
            "dropped": self.dropped,
            "fps": self.fps if math.isnan(self.fps) else round(self.fps, 3),
            "stages": {name: p.to_json() for name, p in self.stages.items()},
            "end_to_end": self.end_to_end.to_json(),
        }

    def table(self) -> str:
        """An aligned text table: one row per stage and ``end-to-end``, times in ms.

        Example::

            stage         p50     p90     p99     max    mean  jitter
            preprocess   1.20    1.41    1.90    2.03    1.25    0.15
            infer        9.87   10.50   12.02   12.40   10.01    0.52
            end-to-end  11.30   12.10   13.80   14.00   11.40    0.60
            frames 1000  fps 87.6  dropped 3
        """
        columns = ("p50", "p90", "p99", "max", "mean", "jitter")
        rows = [(name, p) for name, p in self.stages.items()]
        rows.append(("end-to-end", self.end_to_end))
        width = max(len("stage"), *(len(name) for name, _ in rows))
        cells = [[_ms(getattr(p, c)) for c in columns] for _, p in rows]
        col_width = max(6, *(len(cell) for row in cells for cell in row))
        lines = ["stage".ljust(width) + "".join(f"  {c:>{col_width}}" for c in columns)]
        for (name, _), row in zip(rows, cells, strict=True):
            lines.append(name.ljust(width) + "".join(f"  {cell:>{col_width}}" for cell in row))
        fps = "n/a" if math.isnan(self.fps) else f"{self.fps:.1f}"
        lines.append(f"frames {self.frames}  fps {fps}  dropped {self.dropped}  (times in ms)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


# --------------------------------------------------------------------------- the profiler


class Profiler:
    """Collects per-frame stage timings and summarises a rolling window of them.

    Thread-safe: :meth:`record` (and the other ``record_*``) may be called from
    the pipeline's threads while :meth:`summary` is called from another. The
    lock is held only to append or to copy the window; statistics are computed
    outside it.

    Args:
        window: how many of the latest frames (per stage) the statistics cover.
        keep_trace: how many of the latest :class:`FrameTiming` (dropped ones
            included) :meth:`timings` keeps for traces and plots; 0 keeps none.

    Raises:
        ConfigError: ``window`` < 1 or ``keep_trace`` < 0.
    """

    def __init__(self, window: int = 1000, keep_trace: int = 10_000) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"Profiler window must be an int >= 1, got {window!r}")
        if isinstance(keep_trace, bool) or not isinstance(keep_trace, int) or keep_trace < 0:
            raise ConfigError(f"Profiler keep_trace must be an int >= 0, got {keep_trace!r}")
        self.window = window
        self.keep_trace = keep_trace
        self._lock = threading.Lock()
        self._stage_ms: dict[str, deque[float]] = {}
        # per processed frame in the window: (first stage start, last stage end, end-to-end ms)
        self._frames_window: deque[tuple[float, float, float]] = deque(maxlen=window)
        self._trace: deque[FrameTiming] = deque(maxlen=keep_trace)
        self._frames = 0
        self._dropped = 0

    def record(self, timing: FrameTiming) -> None:
        """Adds one frame's timing.

        Raises:
            ConfigError: a processed frame without stages, or a stage that ends
                before it starts.
        """
        if not timing.dropped:
            if not timing.stages:
                raise ConfigError(f"frame {timing.frame_index}: a processed frame needs at least one stage")
            for name, (start, end) in timing.stages.items():
                if end < start:
                    raise ConfigError(
                        f"frame {timing.frame_index}: stage {name!r} ends ({end}) before it starts ({start})"
                    )
        with self._lock:
            if self.keep_trace:
                self._trace.append(timing)
            if timing.dropped:
                self._dropped += 1
                return
            self._frames += 1
            first = math.inf
            last = -math.inf
            for name, (start, end) in timing.stages.items():
                series = self._stage_ms.get(name)
                if series is None:
                    series = self._stage_ms[name] = deque(maxlen=self.window)
                series.append((end - start) * 1e3)
                first = min(first, start)
                last = max(last, end)
            self._frames_window.append((first, last, timing.end_to_end_ms))

    def record_stages(
        self,
        frame_index: int,
        stages: Mapping[str, tuple[float, float]],
        *,
        end: float | None = None,
    ) -> FrameTiming:
        """Builds a :class:`FrameTiming` from stage ``(start, end)`` times and records it.

        Args:
            frame_index: the frame's number.
            stages: stage name -> ``(start, end)`` in :func:`time.perf_counter` seconds.
            end: when the result was ready; default: the latest stage end.
                The end-to-end latency runs from the earliest stage start to it.

        Returns:
            The recorded timing.

        Raises:
            ConfigError: no stages, a stage that ends before it starts, or
                ``end`` before the first stage start.
        """
        if not stages:
            raise ConfigError(f"frame {frame_index}: record_stages needs at least one stage")
        spans = {str(name): (float(s), float(e)) for name, (s, e) in stages.items()}
        for name, (start, stop) in spans.items():
            if stop < start:
                raise ConfigError(f"frame {frame_index}: stage {name!r} ends ({stop}) before it starts ({start})")
        first = min(s for s, _ in spans.values())
        last = float(end) if end is not None else max(e for _, e in spans.values())
        if last < first:
            raise ConfigError(f"frame {frame_index}: end ({last}) is before the first stage start ({first})")
        timing = FrameTiming(frame_index=frame_index, stages=spans, end_to_end_ms=(last - first) * 1e3)
        self.record(timing)
        return timing

    def record_drop(self, frame_index: int) -> None:
        """Counts a dropped frame, at the current :func:`time.perf_counter` time.

        In traces it is an instant on the ``drops`` track; its timing has a
        single zero-length ``"drop"`` span and a NaN end-to-end latency. A
        frame dropped after some stages ran can instead be recorded with
        ``record(FrameTiming(..., dropped=True))`` and those stages.
        """
        now = time.perf_counter()
        self.record(
            FrameTiming(frame_index=frame_index, stages={"drop": (now, now)}, end_to_end_ms=math.nan, dropped=True)
        )

    def reset(self) -> None:
        """Forgets every frame, the counters and the trace."""
        with self._lock:
            self._stage_ms.clear()
            self._frames_window.clear()
            self._trace.clear()
            self._frames = 0
            self._dropped = 0

    @property
    def frames(self) -> int:
        """Processed frames recorded in total (not only those in the window)."""
        with self._lock:
            return self._frames

    @property
    def dropped(self) -> int:
        """Dropped frames recorded in total."""
        with self._lock:
            return self._dropped

    def timings(self) -> list[FrameTiming]:
        """The kept trace (the last ``keep_trace`` frames, dropped ones included), oldest first."""
        with self._lock:
            return list(self._trace)

    def summary(self) -> ProfileSummary:
        """Statistics of the window.

        Never raises for lack of data: with no processed frame it returns
        ``frames=0``, NaN ``fps`` and NaN percentiles.
        """
        with self._lock:
            stage_ms = {name: np.array(series, dtype=np.float64) for name, series in self._stage_ms.items()}
            window = list(self._frames_window)
            dropped = self._dropped
        stages = {name: Percentiles.of(stage_ms[name]) for name in _stage_order(stage_ms)}
        end_to_end = Percentiles.of([e2e for _, _, e2e in window])
        fps = math.nan
        if len(window) >= 2:
            wall = max(last for _, last, _ in window) - min(first for first, _, _ in window)
            if wall > 0:
                fps = len(window) / wall
        return ProfileSummary(frames=len(window), dropped=dropped, fps=fps, stages=stages, end_to_end=end_to_end)

    def __repr__(self) -> str:
        return f"Profiler(window={self.window}, keep_trace={self.keep_trace}, frames={self.frames})"


def _stage_order(names: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """STAGES first in their order, then the others in their given (first-seen) order."""
    order = list(names)
    return [s for s in STAGES if s in order] + [n for n in order if n not in STAGES]


# --------------------------------------------------------------------------- files


def write_json(
    summary: ProfileSummary,
    path: str | os.PathLike[str],
    *,
    layers: Sequence[LayerTiming] | None = None,
) -> None:
    """Writes ``summary`` (and per-layer timings, if given) as strict JSON.

    The file holds :meth:`ProfileSummary.to_json` plus a ``"layers"`` list when
    ``layers`` is given; NaN values are written as ``null``. Missing parent
    folders are created.
    """
    data = summary.to_json()
    if layers is not None:
        data["layers"] = [asdict(layer) for layer in layers]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_nan_to_none(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    log.debug("wrote profile summary to %s", out)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


def write_chrome_trace(timings: Sequence[FrameTiming], path: str | os.PathLike[str]) -> None:
    """Writes frame timings as a Chrome / Perfetto trace-event JSON file.

    Open it in https://ui.perfetto.dev or ``chrome://tracing``. Each stage of
    each processed frame is an ``"X"`` (complete) event on its stage's track
    (one ``tid`` per stage, named by ``"M"`` ``thread_name`` events), with
    ``ts`` and ``dur`` in microseconds from the earliest start and
    ``args={"frame": index}``. Dropped frames are ``"i"`` instant events on a
    ``drops`` track, at the end of their latest span.

    Args:
        timings: e.g. :meth:`Profiler.timings`.
        path: the ``.json`` file to write; missing parent folders are created.
    """
    processed = [t for t in timings if not t.dropped]
    dropped = [t for t in timings if t.dropped and t.stages]
    seen: dict[str, None] = {}
    for t in processed:
        for name in t.stages:
            seen.setdefault(name, None)
    stage_names = _stage_order(seen)
    tids = {name: i + 1 for i, name in enumerate(stage_names)}
    drops_tid = len(stage_names) + 1

    starts = [s for t in timings for s, _ in t.stages.values()]
    origin = min(starts) if starts else 0.0

    def us(seconds: float) -> float:
        return round(seconds * 1e6, 3)

    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "edgeseg"}}
    ]
    tracks = [(name, tids[name]) for name in stage_names]
    if dropped:
        tracks.append(("drops", drops_tid))
    for name, tid in tracks:
        events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid, "args": {"sort_index": tid}})
    for t in processed:
        for name, (start, end) in t.stages.items():
            events.append(
                {
                    "name": name,
                    "cat": "stage",
                    "ph": "X",
                    "pid": 1,
                    "tid": tids[name],
                    "ts": us(start - origin),
                    "dur": us(end - start),
                    "args": {"frame": t.frame_index},
                }
            )
    for t in dropped:
        at = max(e for _, e in t.stages.values())
        events.append(
            {
                "name": "drop",
                "cat": "drop",
                "ph": "i",
                "s": "t",
                "pid": 1,
                "tid": drops_tid,
                "ts": us(at - origin),
                "args": {"frame": t.frame_index},
            }
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}), encoding="utf-8")
    log.debug("wrote %d trace events to %s", len(events), out)


# --------------------------------------------------------------------------- ONNX Runtime layers


@dataclass(frozen=True)
class LayerTiming:
    """Time spent in one graph node, from ONNX Runtime's profile.

    Attributes:
        name: the node's name as ORT ran it. ORT's graph optimisations rename
            or merge nodes (a Conv followed by Relu can run as one
            ``FusedConv``; a layout-transformed Conv is named after its output
            with ``_nchwc``), so names may differ from the ONNX file's.
        op: the operator type ORT ran (``Conv``, ``FusedConv``, ...).
        calls: how many times it ran in the profile.
        total_ms: summed kernel time.
        mean_ms: ``total_ms / calls``.
        share: ``total_ms`` / the summed kernel time of every node (0..1).
    """

    name: str
    op: str
    calls: int
    total_ms: float
    mean_ms: float
    share: float


def layer_timings_from_onnxruntime(profile_json: str | os.PathLike[str]) -> list[LayerTiming]:
    """Reads ONNX Runtime's JSON profile into per-node timings, slowest first.

    The profile is what ``OnnxRuntimeBackend(..., profile_dir=DIR)`` followed
    by ``backend.end_profiling()`` writes: a list of trace events in which each
    node run is ``{"cat": "Node", "name": "<node>_kernel_time", "dur": <µs>,
    "args": {"op_name": ...}}``. Session events (loading, ``model_run``) are
    ignored. A profile wrapped as ``{"traceEvents": [...]}`` is read too.

    Args:
        profile_json: the profile file.

    Returns:
        One :class:`LayerTiming` per node name, sorted by ``total_ms``
        descending (ties by name); empty when the profile has no node events.

    Raises:
        ConfigError: the file does not exist.
        InputError: it is not JSON or not an ONNX Runtime profile.
    """
    path = Path(profile_json)
    if not path.is_file():
        raise ConfigError(f"ONNX Runtime profile {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"ONNX Runtime profile {path} cannot be read as JSON: {err}") from err
    if isinstance(data, dict) and isinstance(data.get("traceEvents"), list):
        data = data["traceEvents"]
    if not isinstance(data, list):
        raise InputError(f"{path} is not an ONNX Runtime profile (expected a list of trace events)")

    totals: dict[str, float] = {}
    calls: dict[str, int] = {}
    ops: dict[str, str] = {}
    for event in data:
        if not isinstance(event, dict) or event.get("cat") != "Node":
            continue
        raw = event.get("name")
        if not isinstance(raw, str) or not raw.endswith(_KERNEL_SUFFIX):
            continue  # e.g. "_fence_before" / "_fence_after" of older releases
        name = raw[: -len(_KERNEL_SUFFIX)]
        dur = event.get("dur")
        if not isinstance(dur, int | float) or isinstance(dur, bool):
            raise InputError(f"{path}: node event {raw!r} has no numeric 'dur'")
        args = event.get("args")
        op = args.get("op_name", "") if isinstance(args, dict) else ""
        totals[name] = totals.get(name, 0.0) + float(dur) / 1e3
        calls[name] = calls.get(name, 0) + 1
        ops.setdefault(name, str(op))
    grand = sum(totals.values())
    layers = [
        LayerTiming(
            name=name,
            op=ops[name],
            calls=calls[name],
            total_ms=total,
            mean_ms=total / calls[name],
            share=total / grand if grand > 0 else 0.0,
        )
        for name, total in totals.items()
    ]
    layers.sort(key=lambda layer: (-layer.total_ms, layer.name))
    log.debug("read %d node timings from %s", len(layers), path)
    return layers


def top_layers(layers: Sequence[LayerTiming], n: int = 10) -> list[LayerTiming]:
    """The ``n`` slowest layers by total time.

    Raises:
        ConfigError: ``n`` < 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"top_layers n must be an int >= 1, got {n!r}")
    return sorted(layers, key=lambda layer: (-layer.total_ms, layer.name))[:n]


def layers_table(layers: Sequence[LayerTiming], n: int = 10) -> str:
    """An aligned text table of the ``n`` slowest layers (name, op, calls, ms, share).

    Raises:
        ConfigError: ``n`` < 1.
    """
    top = top_layers(layers, n)
    header = ("layer", "op", "calls", "total ms", "mean ms", "share")
    rows = [
        (t.name, t.op, str(t.calls), f"{t.total_ms:.3f}", f"{t.mean_ms:.3f}", f"{t.share * 100:.1f}%")
        for t in top
    ]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        left = [cells[i].ljust(widths[i]) for i in range(2)]
        right = [cells[i].rjust(widths[i]) for i in range(2, len(cells))]
        return "  ".join(left + right).rstrip()

    lines = [line(header)] + [line(r) for r in rows]
    rest = len(layers) - len(top)
    if rest > 0:
        share = sum(t.share for t in layers) - sum(t.share for t in top)
        lines.append(f"... {rest} more layer{'s' if rest != 1 else ''} ({share * 100:.1f}% of node time)")
    if not layers:
        lines.append("(no node timings)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plot


QUEUEING = "queueing (end-to-end minus stages)"
"""The plot's band of time a frame spent between stages."""


def timeline_bands(processed: Sequence[FrameTiming]) -> tuple[list[str], np.ndarray]:
    """The plot's stacked bands: each stage's duration, then :data:`QUEUEING`, per frame.

    Args:
        processed: the frames to draw, in order (not dropped).

    Returns:
        The band names (stages in pipeline order, then :data:`QUEUEING`) and a
        ``(bands, frames)`` array in ms whose columns sum to each frame's
        end-to-end latency (queueing is never below 0).
    """
    seen: dict[str, None] = {}
    for t in processed:
        for name in t.stages:
            seen.setdefault(name, None)
    names = _stage_order(seen)
    durations = [t.durations_ms() for t in processed]
    stages = np.array([[d.get(name, 0.0) for d in durations] for name in names], dtype=np.float64)
    stages = stages.reshape(len(names), len(processed))
    e2e = np.array([t.end_to_end_ms for t in processed], dtype=np.float64)
    queueing = np.clip(np.nan_to_num(e2e - stages.sum(axis=0)), 0.0, None)
    return [*names, QUEUEING], np.vstack([stages, queueing[None, :]])


def plot(timings: Sequence[FrameTiming], path: str | os.PathLike[str], *, title: str = "") -> None:
    """Draws latency as a PNG: a histogram of end-to-end latency, and a per-frame timeline.

    Left: histogram of the processed frames' end-to-end latency with its p50
    and p99 marked. Right: per frame (x = frame index) the stage durations
    stacked in ms, one colour per stage, topped by a band of queueing (the
    end-to-end latency minus the stages: the frame waiting in the queues
    between them, which on a folder or a slow consumer is most of it), so the
    stack reaches the end-to-end line; dropped frames are marked. Uses
    matplotlib's Agg canvas without touching pyplot's global state.

    Args:
        timings: e.g. :meth:`Profiler.timings`.
        path: the PNG to write; missing parent folders are created.
        title: a title above both panels.

    Raises:
        MissingDependencyError: matplotlib is not installed.
        ConfigError: ``timings`` has no processed frame.
    """
    try:
        import matplotlib  # noqa: F401 - fails first when matplotlib is absent
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise MissingDependencyError(
            "edgeseg.runtime.profiling.plot needs matplotlib: pip install matplotlib"
        ) from err

    processed = sorted((t for t in timings if not t.dropped), key=lambda t: t.frame_index)
    if not processed:
        raise ConfigError("plot needs at least one processed (not dropped) frame timing")
    drops = sorted(t.frame_index for t in timings if t.dropped)
    x = np.array([t.frame_index for t in processed], dtype=np.float64)
    e2e = np.array([t.end_to_end_ms for t in processed], dtype=np.float64)
    stage_names, stacks = timeline_bands(processed)

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    hist_ax, time_ax = fig.subplots(1, 2, width_ratios=(1, 2))

    finite = e2e[np.isfinite(e2e)]
    hist_ax.hist(finite, bins=min(50, max(5, int(np.sqrt(finite.size)))), color="0.6")
    stats = Percentiles.of(finite)
    hist_ax.axvline(stats.p50, color="tab:blue", linestyle="--", label=f"p50 {stats.p50:.2f} ms")
    hist_ax.axvline(stats.p99, color="tab:red", linestyle="--", label=f"p99 {stats.p99:.2f} ms")
    hist_ax.set_xlabel("end-to-end latency (ms)")
    hist_ax.set_ylabel("frames")
    hist_ax.legend(loc="upper right")

    colors = [f"C{i}" for i in range(len(stage_names) - 1)] + ["0.85"]  # queueing: light grey
    if len(x) == 1:  # stackplot needs an interval: draw one frame as a bar stack
        bottom = 0.0
        for name, values, color in zip(stage_names, stacks, colors, strict=True):
            time_ax.bar(x, values, bottom=bottom, width=0.8, label=name, color=color)
            bottom += float(values[0])
    else:
        time_ax.stackplot(x, stacks, labels=stage_names, colors=colors, alpha=0.85)
    time_ax.plot(x, e2e, color="black", linewidth=0.8, label="end-to-end (capture to result)")
    if drops:
        time_ax.plot(drops, np.zeros(len(drops)), "x", color="tab:red", clip_on=False, label="dropped")
    time_ax.set_xlabel("frame")
    time_ax.set_ylabel("ms")
    time_ax.set_ylim(bottom=0)
    time_ax.legend(loc="upper right", fontsize="small")
    if title:
        fig.suptitle(title)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    log.debug("wrote latency plot of %d frames to %s", len(processed), out)
