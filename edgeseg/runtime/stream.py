"""Streaming segmentation: capture, pre-process, infer and post-process run concurrently.

Each stage is a thread joined to the next by a small bounded channel, so the
pipeline's throughput approaches its slowest stage rather than the sum of all.
With ``drop="oldest"`` no channel ever blocks its producer: a full channel
evicts its oldest item, so the consumer always gets the newest frame and
latency stays bounded however slow it is; every eviction is counted. With
``drop="none"`` producers wait, and every frame is processed.

A frame that cannot be read, prepared, inferred or post-processed comes out
as a result with ``error`` set; the stream goes on. A source that dies (after
a bounded number of retries for cameras), or a video that ends before its
container's frame count, ends the stream: every frame read before is still
delivered, then ``Stream.end_reason`` says why and ``Stream.failed`` is True.
``close()`` (or leaving ``with``, or breaking out of the loop) stops every
thread promptly; no thread or buffer outlives the stream.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.errors import ConfigError, EdgesegError, InputError, SourceError
from edgeseg.runtime.sources import import_cv2, list_images, read_image, source_kind

if TYPE_CHECKING:  # pragma: no cover
    from edgeseg.runtime.segmenter import Segmenter

log = logging.getLogger(__name__)

DROP_POLICIES = ("oldest", "none")
_POLL_S = 0.05  # how often blocked threads look at the stop flag


@dataclass
class StreamResult:
    """One frame's result from a stream.

    Attributes:
        frame_index: position of the frame in the source, from 0 (dropped frames included).
        name: the frame's name: its file's stem, or ``frame_000042``.
        timestamp: capture time in seconds: ``time.time()`` at capture, or the source's own
            stamp (a bag message's header stamp).
        mask: (H, W) uint8 class ids at the frame's size, or None if ``error``.
        probs: softmax (C, h, w) when the stream asked for it.
        frame: the captured frame (RGB) when ``keep_frames=True``.
        timings: milliseconds per stage: capture, preprocess, infer, postprocess.
        latency_ms: capture start -> result handed to the consumer.
        dropped: frames dropped by the stream so far.
        error: why this frame produced no mask (unreadable, wrong shape...), or None.
        meta: what the source says of the frame, or None: for a bag, its
            :class:`~edgeseg.runtime.bags.BagFrame` (topic, header stamp and frame_id,
            log time), which a mask bag is written with.
    """

    frame_index: int
    timestamp: float
    mask: np.ndarray | None
    timings: dict[str, float]
    latency_ms: float
    dropped: int
    name: str = ""
    probs: np.ndarray | None = None
    frame: np.ndarray | None = None
    error: str | None = None
    meta: Any = None


@dataclass
class _Item:
    """What travels between stages."""

    index: int
    timestamp: float
    start: float  # perf_counter at capture start
    name: str = ""
    frame: Any = None
    image: Any = None  # the graph's input, (1, h, w, C) uint8, once prepared
    outputs: dict[str, np.ndarray] | None = None
    error: str | None = None
    meta: Any = None
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)


_END = object()


class _Channel:
    """A bounded FIFO between two stages.

    ``put`` blocks while full (``drop="none"``) or evicts the oldest item
    (``drop="oldest"``), calling ``on_drop`` with it. ``close`` wakes everyone.
    """

    def __init__(self, size: int, drop_oldest: bool, on_drop: Callable[[Any], None], stop: threading.Event) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._size = size
        self._drop_oldest = drop_oldest
        self._on_drop = on_drop
        self._stop = stop
        self._cond = threading.Condition()

    def put(self, item: Any, *, force: bool = False) -> bool:
        """Adds an item; False if the stream stopped first. ``force`` never drops (end markers)."""
        with self._cond:
            while len(self._items) >= self._size and not force:
                if self._drop_oldest:
                    self._on_drop(self._items.popleft())
                    break
                if self._stop.is_set():
                    return False
                self._cond.wait(_POLL_S)
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self) -> Any:
        """The next item, or ``_END`` once the stream stopped."""
        with self._cond:
            while not self._items or self._stop.is_set():
                if self._stop.is_set():  # closed: leave what is queued, stop now
                    return _END
                self._cond.wait(_POLL_S)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._items.clear()


# --------------------------------------------------------------------------- sources


class FrameSource:
    """Reads frames one at a time.

    ``read`` returns (frame or None, error or None, name) and raises
    StopIteration at the end; the name (a file's stem, or ``frame_000042``)
    is what outputs are called after.
    """

    live = False
    description = "source"

    def read(self) -> tuple[np.ndarray | None, str | None, str]:
        raise NotImplementedError

    def frame_info(self) -> Any:
        """What the source knows of the frame ``read`` returned last (None: nothing).

        An object with a ``stamp`` (seconds) becomes the result's ``timestamp``; the
        object itself is the result's ``meta``.
        """
        return None

    def close(self) -> None:
        """Releases the device or file. Idempotent."""


class _IterableSource(FrameSource):
    def __init__(self, frames: Iterable[Any], live: bool) -> None:
        self._it = iter(frames)
        self._count = 0
        self.live = live
        self.description = f"iterable {type(frames).__name__}"

    def read(self) -> tuple[np.ndarray | None, str | None, str]:
        frame = next(self._it)  # StopIteration ends the source
        self._count += 1
        return frame, None, f"frame_{self._count - 1:06d}"


class _FilesSource(FrameSource):
    """Image files in order: a folder's (sorted by name) or a single one."""

    def __init__(self, files: list[Path], description: str) -> None:
        if not files:
            raise SourceError(f"source {description} has no images")
        self._files = iter(files)
        self.description = description

    def read(self) -> tuple[np.ndarray | None, str | None, str]:
        path = next(self._files)
        try:
            return read_image(path), None, path.stem
        except EdgesegError as err:
            return None, str(err), path.stem


class _CaptureSource(FrameSource):
    """OpenCV capture: a video file, a camera (index or device path) or a GStreamer pipeline.

    Cameras that stop delivering are reopened up to ``retries`` times, with a
    growing pause, before the source gives up.
    """

    def __init__(self, target: int | str, *, live: bool, retries: int = 3, retry_delay_s: float = 0.5) -> None:
        # OpenCV crashes the process on some negative indexes; refuse them before it sees one
        if isinstance(target, bool) or (isinstance(target, int) and target < 0):
            raise ConfigError(f"camera index must be an integer >= 0, got {target!r}")
        self._cv2 = import_cv2()
        self._target = target
        self.live = live
        self._retries = retries
        self._delay = retry_delay_s
        self._count = 0
        self._gst = isinstance(target, str) and "!" in target
        kind = "GStreamer pipeline" if self._gst else ("camera" if live else "video")
        self.description = f"{kind} {target}"
        self._cap = self._open()
        if self._cap is None:
            raise SourceError(f"{self.description}: OpenCV cannot open it")
        # a video file's container says how many frames it holds (0, -1 or NaN: unknown)
        count = 0.0 if live else float(self._cap.get(self._cv2.CAP_PROP_FRAME_COUNT))
        self._expected = int(count) if math.isfinite(count) and count > 0 else None

    def _open(self) -> Any:
        cv2 = self._cv2
        cap = cv2.VideoCapture(self._target, cv2.CAP_GSTREAMER) if self._gst else cv2.VideoCapture(self._target)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def read(self) -> tuple[np.ndarray | None, str | None, str]:
        for attempt in range(self._retries + 1 if self.live else 1):
            if self._cap is not None:
                ok, bgr = self._cap.read()
                if ok and bgr is not None:
                    self._count += 1
                    return np.ascontiguousarray(bgr[:, :, ::-1]), None, f"frame_{self._count - 1:06d}"
            if not self.live:
                if self._expected is not None and self._count < self._expected:
                    raise SourceError(
                        f"{self.description} ended after {self._count} of {self._expected} frames "
                        "(truncated or corrupt)"
                    )
                raise StopIteration  # end of the video file
            if attempt < self._retries:
                log.warning("%s: no frame; reopening (%d/%d)", self.description, attempt + 1, self._retries)
                time.sleep(self._delay * (attempt + 1))
                if self._cap is not None:
                    self._cap.release()
                self._cap = self._open()
        raise SourceError(f"{self.description}: no frame after {self._retries} retries")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _lower_priority(nice: int) -> None:
    """Lowers the calling thread's scheduling priority (Linux: threads are tasks with their own nice value).

    Meant for machines where the light stages (decode, resize, copy) would
    stretch inference's parallel sections; they then run in its gaps. A no-op
    for ``nice <= 0`` or where unsupported.
    """
    if nice <= 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as err:  # e.g. a sandbox that forbids it: run at normal priority
        log.debug("cannot lower stream thread priority: %s", err)


def open_source(source: Any, *, retries: int = 3, topic: str | None = None) -> FrameSource:
    """A FrameSource for a camera index, device path, GStreamer pipeline, video, folder, bag or iterable.

    Args:
        topic: the image topic of a bag (None: its only image topic).

    Raises:
        SourceError: the source does not exist or cannot be opened.
        ConfigError: ``topic`` for a source that is not a bag.
    """
    if isinstance(source, FrameSource):
        if topic is not None:
            raise ConfigError("topic is for bag paths; a source object was given")
        return source
    if isinstance(source, (str, os.PathLike)) and "!" not in os.fspath(source):
        from edgeseg.runtime.bags import BagSource, is_bag

        if is_bag(source):
            return BagSource(source, topic)
    if topic is not None:
        raise ConfigError(f"topic {topic!r} is for a bag source (.mcap, .bag, .db3 or a rosbag2 folder)")
    if isinstance(source, bool):
        raise ConfigError(f"source must be a camera index, path, pipeline or iterable, got {source!r}")
    if isinstance(source, (int, np.integer)):
        return _CaptureSource(int(source), live=True, retries=retries)
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if "!" in text:
            return _CaptureSource(text, live=True, retries=retries)
        if text.isdigit():
            return _CaptureSource(int(text), live=True, retries=retries)
        if text.startswith("/dev/video"):
            return _CaptureSource(text, live=True, retries=retries)
        path = Path(text)
        kind = source_kind(path)
        if kind == "folder":
            return _FilesSource(list_images(path), f"folder {path}")
        if kind == "video":
            return _CaptureSource(text, live=False)
        return _FilesSource([path], f"image {path}")
    if isinstance(source, np.ndarray):
        return _IterableSource(_frame_stack(source), live=False)
    if isinstance(source, Iterable):
        return _IterableSource(source, live=False)
    raise ConfigError(f"source must be a camera index, path, pipeline or iterable, got {type(source).__name__}")


def _frame_stack(source: np.ndarray) -> np.ndarray:
    """An array source as a plain (N, H, W[, C]) stack of frames, iterated frame by frame.

    A 3-D array is a stack of (H, W) frames unless its last axis is 1, 3 or 4
    (then it is one (H, W, C) frame); the rule :mod:`edgeseg.runtime.frames` uses.

    Raises:
        InputError: one frame, or an array of another rank, naming its shape.
    """
    frames = np.asarray(source)  # an ndarray subclass (np.matrix) iterates oddly
    if frames.ndim == 4 or (frames.ndim == 3 and frames.shape[-1] not in (1, 3, 4)):
        return frames
    one = frames.ndim == 2 or frames.ndim == 3
    raise InputError(
        f"array source of shape {frames.shape}: expected a stack of frames (N, H, W[, C])"
        + ("; it looks like one frame: wrap it in a list to stream it, stream([frame])" if one else "")
    )


# --------------------------------------------------------------------------- the stream


class Stream:
    """A running stream of results; iterate it, and close it (or use ``with``)."""

    def __init__(
        self,
        segmenter: Segmenter,
        source: Any,
        *,
        drop: str | None = None,
        queue_size: int = 2,
        bgr: bool = False,
        keep_frames: bool = False,
        outputs: Iterable[str] = (),
        retries: int = 3,
        max_frames: int | None = None,
        nice: int = 0,
        topic: str | None = None,
    ) -> None:
        if queue_size < 1:
            raise ConfigError(f"queue_size must be >= 1, got {queue_size}")
        segmenter._require_open()  # before a camera is opened, so nothing leaks
        self._closed = False
        self._source = open_source(source, retries=retries, topic=topic)
        policy = drop if drop is not None else ("oldest" if self._source.live else "none")
        if policy not in DROP_POLICIES:
            self._source.close()
            raise ConfigError(f"drop must be one of {', '.join(DROP_POLICIES)}, got {drop!r}")
        self.drop = policy
        self._seg = segmenter
        self._bgr = bgr
        self._keep = keep_frames
        self._outputs = ["mask", *[o for o in outputs if o != "mask"]]
        self._max_frames = max_frames
        self._nice = nice
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.dropped = 0
        self.end_reason: str | None = None
        self.failed = False
        self._interrupt: BaseException | None = None  # a KeyboardInterrupt/SystemExit raised in a stage
        self._logged: set[str] = set()  # stages whose unexpected error was logged with its traceback
        oldest = policy == "oldest"
        self._channels = [_Channel(queue_size, oldest, self._count_drop, self._stop) for _ in range(4)]
        self._threads = [
            threading.Thread(target=self._run, args=(name, fn), name=f"edgeseg-{name}", daemon=True)
            for name, fn in (
                ("capture", self._capture),
                ("preprocess", self._preprocess),
                ("infer", self._infer),
                ("postprocess", self._postprocess),
            )
        ]
        for thread in self._threads:
            thread.start()

    # -- the user's side

    def __iter__(self) -> Iterator[StreamResult]:
        try:
            while True:
                item = self._channels[3].get()
                if item is _END:
                    if self._interrupt is not None:  # raised in a stage thread: the consumer gets it
                        raise self._interrupt
                    return
                result = self._deliver(item)
                yield result
        finally:
            self.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self, timeout: float = 5.0) -> None:
        """Stops every stage and releases the source. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._halt()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:  # a stage stuck in native code (a camera read, an inference) ends with it
            log.warning("stream threads still running after %.1fs: %s", timeout, ", ".join(alive))
        for channel in self._channels:
            channel.clear()
        self._source.close()

    @property
    def alive(self) -> bool:
        """True while any stage thread runs."""
        return any(t.is_alive() for t in self._threads)

    # -- the stages

    def _count_drop(self, item: Any) -> None:
        if isinstance(item, _Item):
            with self._lock:
                self.dropped += 1
            self._seg.profiler.record_drop(item.index)

    def _run(self, name: str, fn: Callable[[], None]) -> None:
        if name != "infer":
            _lower_priority(self._nice)
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - a stage must never die silently
            log.exception("stream stage %s failed", name)
            self._finish(f"{name} stage failed: {type(err).__name__}: {err}", failed=True)
            self._halt()  # the stages after it would wait for ever
        except BaseException as err:  # noqa: BLE001 - KeyboardInterrupt/SystemExit: re-raised to the consumer
            self._finish(f"{name} stage stopped by {type(err).__name__}", failed=True)
            self._interrupt = err
            self._halt()

    def _halt(self) -> None:
        """Stops every stage now, leaving what is queued (close, or an interrupt)."""
        self._stop.set()
        for channel in self._channels:
            channel.wake()

    def _finish(self, reason: str, *, failed: bool) -> None:
        """Records why the stream ends: the first reason, unless a failure follows a normal end."""
        with self._lock:
            if self.end_reason is None or (failed and not self.failed):
                self.end_reason = reason
                self.failed = failed
        if failed:
            log.warning("stream ended: %s", reason)

    def _forward(self, stage: int, item: Any) -> bool:
        return self._channels[stage].put(item, force=item is _END)

    def _capture(self) -> None:
        index = 0
        while not self._stop.is_set():
            if self._max_frames is not None and index >= self._max_frames:
                self._finish(f"reached max_frames={self._max_frames}", failed=False)
                break
            t0, ts = time.perf_counter(), time.time()
            try:
                frame, error, name = self._source.read()
            except StopIteration:
                self._finish(f"end of {self._source.description}", failed=False)
                break
            except EdgesegError as err:
                self._finish(str(err), failed=True)
                break
            except Exception as err:  # noqa: BLE001 - a source that dies ends the stream; what it read is delivered
                log.warning("%s failed", self._source.description, exc_info=True)
                self._finish(f"{self._source.description} failed: {type(err).__name__}: {err}", failed=True)
                break
            meta = self._source.frame_info()
            stamp = getattr(meta, "stamp", None)
            if isinstance(stamp, (int, float)):
                ts = float(stamp)
            item = _Item(index, ts, t0, name=name, frame=frame, error=error, meta=meta)
            item.stages["capture"] = (t0, time.perf_counter())
            index += 1
            if not self._forward(0, item):
                return
        self._forward(0, _END)

    def _stage(self, stage: int, name: str, work: Callable[[_Item], None]) -> None:
        while True:
            item = self._channels[stage].get()
            if item is _END:
                self._forward(stage + 1, _END)
                return
            if item.error is None:
                t0 = time.perf_counter()
                try:
                    work(item)
                except EdgesegError as err:
                    item.error = f"frame {item.index}: {err}"
                except Exception as err:  # noqa: BLE001 - a stage reports a frame's failure, it never stops the stream
                    item.error = f"frame {item.index}: {name} failed: {type(err).__name__}: {err}"
                    self._log_unexpected(name, item.error)
                item.stages.setdefault(name, (t0, time.perf_counter()))
            if not self._forward(stage + 1, item):
                return

    def _log_unexpected(self, stage: str, error: str) -> None:
        """Logs a stage's unexpected error: with its traceback the first time, briefly after."""
        if stage in self._logged:
            log.debug("stream %s", error)
            return
        self._logged.add(stage)
        log.warning("stream %s (the stream goes on)", error, exc_info=True)

    def _preprocess(self) -> None:
        from edgeseg.runtime.image import check_frame, prepare

        spec = self._seg.manifest.input

        def work(item: _Item) -> None:
            try:
                item.frame = check_frame(item.frame, what=f"frame {item.index}")
            except InputError as err:  # its message names the frame already: no second prefix
                item.error = str(err)
                return
            item.image = prepare(item.frame, spec, bgr=self._bgr)

        self._stage(0, "preprocess", work)

    def _infer(self) -> None:
        def work(item: _Item) -> None:
            item.outputs, spans = self._seg.infer(item.image, self._outputs)
            item.stages.update(spans)  # "infer", and "crf" when that stage is on

        self._stage(1, "infer", work)

    def _postprocess(self) -> None:
        resize = self._seg._resize_mask

        def work(item: _Item) -> None:
            outputs = item.outputs or {}
            frame = item.frame
            item.outputs = {**outputs, "mask": resize(outputs["mask"][0], (frame.shape[0], frame.shape[1]))}
            item.image = None  # the model-size copy is not needed any more

        self._stage(2, "postprocess", work)

    def _deliver(self, item: _Item) -> StreamResult:
        now = time.perf_counter()
        outputs = item.outputs or {}
        timings = {k: (e - s) * 1e3 for k, (s, e) in item.stages.items()}
        latency = (now - item.start) * 1e3
        if item.error is None:
            self._seg.profiler.record_stages(item.index, item.stages, end=now)
        with self._lock:
            dropped = self.dropped
        probs = outputs.get("probs")
        return StreamResult(
            frame_index=item.index,
            name=item.name,
            timestamp=item.timestamp,
            mask=outputs.get("mask") if item.error is None else None,
            probs=probs[0] if probs is not None else None,
            frame=item.frame if self._keep else None,
            timings=timings,
            latency_ms=latency,
            dropped=dropped,
            error=item.error,
            meta=item.meta,
        )
