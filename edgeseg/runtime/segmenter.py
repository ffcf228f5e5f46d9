"""``Segmenter``: a bundle, loaded and ready to segment frames."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.bundle import Bundle, Manifest
from edgeseg.errors import BackendError, BundleError, ConfigError
from edgeseg.runtime.backends import (
    TENSORRT_OPTIONS,
    Backend,
    BackendChoice,
    choose_backend,
    create_backend,
    open_backend,
)
from edgeseg.runtime.contract import check_graph
from edgeseg.runtime.image import NearestResizer, model_size, prepare
from edgeseg.runtime.profiling import Profiler, ProfileSummary

if TYPE_CHECKING:  # pragma: no cover
    from edgeseg.engines import EngineBuilder
    from edgeseg.runtime.backends.tensorrt import TensorRTCrfChain
    from edgeseg.runtime.stream import Stream

log = logging.getLogger(__name__)


@dataclass
class SegmentationResult:
    """What one frame gives.

    Attributes:
        mask: (H, W) uint8 class ids at the frame's own size.
        probs: (num_classes, h, w) float32 softmax at the model's input size,
            when the bundle was built with the ``probs`` output and it was asked for.
        logits: (num_classes, h, w) float32 at the model's input size, likewise.
        timings: milliseconds per stage: ``preprocess``, ``infer``, ``postprocess``, ``total``.
    """

    mask: np.ndarray
    probs: np.ndarray | None = None
    logits: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _engine_builder(given: EngineBuilder | None | str) -> EngineBuilder | None:
    """The builder ``Segmenter(engine_builder=...)`` names; ``"default"`` is resolved lazily."""
    if given == "default":
        from edgeseg._lazy import default_engine_builder

        return default_engine_builder
    if given is not None and not callable(given):
        raise ConfigError(f"engine_builder must be 'default', None or a callable, got {given!r}")
    return given


def _backend_option_names(name: str) -> frozenset[str]:
    """The keyword options backend ``name`` (``onnxruntime`` or ``tensorrt``) takes."""
    if name == "tensorrt":
        return TENSORRT_OPTIONS
    from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend  # no onnxruntime import

    params = inspect.signature(OnnxRuntimeBackend.__init__).parameters.values()
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _check_backend_options(choice: BackendChoice, options: dict[str, Any]) -> None:
    """ConfigError for an option the chosen backend does not take (a typo would reach it as a TypeError)."""
    valid = _backend_option_names(choice.name)
    unknown = sorted(set(options) - valid)
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0], sorted(valid), n=1)
    raise ConfigError(
        f"Segmenter got option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}, "
        f"which the {choice.name} backend does not take (chosen because {choice.why}); it takes: "
        f"{', '.join(sorted(valid))}" + (f" (did you mean {close[0]!r}?)" if close else "")
    )


def _chain_spans(
    start: float, end: float, gpu_ms: dict[str, float]
) -> dict[str, tuple[float, float]]:
    """The host span of a chained model + CRF call, split in proportion to the GPU times."""
    model = gpu_ms.get("h2d", 0.0) + gpu_ms.get("compute", 0.0)
    if "crf" not in gpu_ms:
        return {"infer": (start, end)}
    total = model + gpu_ms["crf"] + gpu_ms.get("d2h", 0.0)
    split = start + (end - start) * (model / total) if total > 0 else start
    return {"infer": (start, split), "crf": (split, end)}


class Segmenter:
    """Runs a bundle on frames.

    Args:
        path: the ``NAME.edgeseg`` bundle directory.
        backend: ``"auto"`` (the best available: TensorRT when tensorrt and pycuda are
            installed, a GPU is present and the bundle has, or can build, an engine
            for it; otherwise ONNX Runtime), ``"onnxruntime"`` or ``"tensorrt"``.
        precision: which of the bundle's graphs to run (default: the one it was built for).
        outputs: extra outputs to return besides ``mask``: any of ``probs``,
            ``logits`` that the bundle has. Default: none (masks only, least copying).
        verify: check the bundle's checksums on load.
        crf: run the bundle's dense-CRF stage (default: on when it has one).
            A ``separate`` CRF can be switched off; a ``fused`` one cannot. On
            TensorRT a separate CRF runs as its own engine chained to the model's
            on the GPU (the logits stay in device memory; the CRF engine is
            chosen, and built if missing, with the model's); on ONNX Runtime it
            runs the CRF graph after the model's.
        profile_window: how many recent frames ``profile()`` summarises.
        engine_builder: builds a TensorRT engine the bundle lacks for this GPU (or has
            only for another GPU or TensorRT) and writes it into the bundle:
            ``"default"`` is edgeseg's builder (:func:`converters.tensorrt.rebuild_engine`,
            same settings as the engine it replaces), None never builds (a missing
            engine is then an ``EngineMismatchError``), or any
            :class:`edgeseg.engines.EngineBuilder`.
        allow_plugins: load a TensorRT plugin library that the bundle carries. Off by
            default: loading a library runs its code, and a bundle's checksums are its
            author's own. ``plugins=[PATH]`` (a library you built) needs no opt-in.
        **backend_options: passed to the backend (e.g. ``threads=2`` for onnxruntime,
            ``cuda_graph=True`` for tensorrt); one the chosen backend does not take
            is a ``ConfigError``.

    Example:
        >>> seg = Segmenter("road.edgeseg")              # doctest: +SKIP
        >>> result = seg(frame)                          # doctest: +SKIP
        >>> result.mask.shape == frame.shape[:2]         # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        backend: str = "auto",
        precision: str | None = None,
        outputs: tuple[str, ...] | list[str] = (),
        verify: bool = True,
        crf: bool | None = None,
        profile_window: int = 1000,
        engine_builder: EngineBuilder | None | str = "default",
        allow_plugins: bool = False,
        **backend_options: Any,
    ) -> None:
        self.bundle = Bundle.load(path, verify=verify)
        manifest = self.bundle.manifest
        self.precision = precision or manifest.precision
        graph = self.bundle.graph(self.precision)
        self._outputs = ["mask", *self._extra_outputs(outputs)]
        info = manifest.crf
        if crf and info is None:
            raise ConfigError(
                f"bundle {self.bundle.path} has no CRF stage; build it with crf='separate' or 'fused'"
            )
        if crf is False and info is not None and info.mode == "fused":
            raise ConfigError(
                f"the CRF is fused into {self.bundle.path}'s graph; build with crf='separate' "
                "to switch it at run time"
            )
        self.crf = info is not None if crf is None else bool(crf)
        separate = (
            self.crf and info is not None and info.mode == "separate" and info.graph is not None
        )
        # the backend and (TensorRT) the engines, the model's and the CRF's, are chosen here, once
        choice = choose_backend(backend, self.bundle, self.precision, backend_options, crf=separate)
        _check_backend_options(choice, backend_options)
        self.backend_name = choice.name
        self._crf_backend: Backend | None = None
        self._crf_chain: TensorRTCrfChain | None = None
        self._backend: Backend | None = None
        try:
            self._backend, self.bundle = open_backend(
                choice,
                self.bundle,
                self.precision,
                engine_builder=_engine_builder(engine_builder),
                allow_plugins=allow_plugins,
                **backend_options,
            )
        except BackendError as err:
            if backend != "auto" or choice.name == "onnxruntime":
                raise
            log.warning("the %s backend failed (%s); running on onnxruntime", choice.name, err)
            self.backend_name = "onnxruntime"
            fallback = BackendChoice("onnxruntime", f"the {choice.name} backend failed")
            self._backend, _ = open_backend(fallback, self.bundle, self.precision)
        if "image" not in self._backend.input_names:
            names = self._backend.input_names
            self.close()
            raise BundleError(f"{graph} has no input named 'image' (inputs: {names})")
        try:  # the graph as loaded is the one the manifest describes (a swapped graph is refused)
            check_graph(self._backend, self.manifest, graph.name)
        except BundleError:
            self.close()
            raise
        if separate and self.backend_name == "tensorrt":
            from edgeseg.runtime.backends.tensorrt import TensorRTCrfChain

            if isinstance(self._backend, TensorRTCrfChain):  # the CRF engine runs in the chain
                self._crf_chain = self._backend
        if separate and self._crf_chain is None:
            assert info is not None and info.graph is not None
            same = self.backend_name == "onnxruntime"
            self._crf_backend = create_backend(
                "onnxruntime", self.bundle.file(info.graph), **(backend_options if same else {})
            )
        self._resize_mask = NearestResizer()
        self.profiler = Profiler(window=profile_window)
        self._frames = 0

    def _extra_outputs(self, outputs: tuple[str, ...] | list[str]) -> list[str]:
        """The outputs asked for besides ``mask``; ConfigError for any the bundle lacks."""
        extra = [o for o in outputs if o != "mask"]
        missing = [o for o in extra if o not in self.manifest.outputs]
        if missing:
            raise ConfigError(
                f"bundle {self.bundle.path} has no output {', '.join(missing)}; it has "
                f"{', '.join(self.manifest.outputs)} (build with outputs=... to add them)"
            )
        return extra

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def classes(self) -> tuple[str, ...]:
        return self.manifest.classes

    @property
    def palette(self) -> np.ndarray:
        """(num_classes, 3) uint8 RGB colours, one per class."""
        return np.asarray(self.manifest.palette, dtype=np.uint8)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.manifest.input.size

    def model_size_for(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        """The size a frame of ``frame_size`` is resized to before inference."""
        return model_size(self.manifest.input, frame_size)

    def preprocess(self, frame: np.ndarray, *, bgr: bool = False) -> np.ndarray:
        """Checks a frame and returns the graph's (1, h, w, C) uint8 input."""
        return prepare(frame, self.manifest.input, bgr=bgr)

    def __call__(self, frame: np.ndarray, *, bgr: bool = False) -> SegmentationResult:
        """Segments one frame.

        Args:
            frame: (H, W, 3) uint8 RGB; (H, W) or (H, W, 1) grayscale and
                (H, W, 4) RGBA are converted; any size (it is resized).
            bgr: the frame is BGR (as OpenCV delivers).

        Raises:
            InputError: the frame's type, dtype, rank or size is unusable.
        """
        self._require_open()
        t0 = time.perf_counter()
        image = self.preprocess(frame, bgr=bgr)
        t1 = time.perf_counter()
        values, spans = self.infer(image)
        t2 = time.perf_counter()
        mask = self._resize_mask(values["mask"][0], frame.shape[:2])
        t3 = time.perf_counter()
        probs = values["probs"][0] if "probs" in values else None
        logits = values["logits"][0] if "logits" in values else None
        stages = {"preprocess": (t0, t1), **spans, "postprocess": (t2, t3)}
        timings = {name: (end - start) * 1e3 for name, (start, end) in stages.items()}
        timings["total"] = (t3 - t0) * 1e3
        self.profiler.record_stages(self._frames, stages, end=t3)
        self._frames += 1
        return SegmentationResult(mask=mask, probs=probs, logits=logits, timings=timings)

    def infer(
        self, image: np.ndarray, outputs: list[str] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, float]]]:
        """Runs the graph(s) on a prepared (1, h, w, C) image.

        Returns:
            The outputs at the model's size (``mask`` and the extra ones asked
            for), and the (start, end) of each stage run: ``infer``, and
            ``crf`` when a separate CRF stage is on. On TensorRT the model and
            CRF engines run in one call on the GPU; the call's span is split
            between ``infer`` and ``crf`` in proportion to their CUDA-event times
            (one ``infer`` span when a CUDA graph runs both).
        """
        backend = self._require_open()
        wanted = outputs if outputs is not None else self._outputs
        t0 = time.perf_counter()
        if self._crf_chain is not None:
            values = self._crf_chain.infer({"image": image}, wanted)
            return values, _chain_spans(t0, time.perf_counter(), self._crf_chain.last_timings)
        if self._crf_backend is None:
            return backend.infer({"image": image}, wanted), {"infer": (t0, time.perf_counter())}
        model_out = ["logits"] + [o for o in wanted if o not in ("mask", "probs", "logits")]
        values = backend.infer({"image": image}, model_out)
        t1 = time.perf_counter()
        crf_out = ["mask"] + (["probs"] if "probs" in wanted else [])
        values.update(
            self._crf_backend.infer({"image": image, "logits": values["logits"]}, crf_out)
        )
        if "logits" not in wanted:
            del values["logits"]
        return values, {"infer": (t0, t1), "crf": (t1, time.perf_counter())}

    def stream(
        self,
        source: Any,
        *,
        drop: str | None = None,
        queue_size: int = 2,
        bgr: bool = False,
        keep_frames: bool = False,
        outputs: tuple[str, ...] | list[str] = (),
        retries: int = 3,
        max_frames: int | None = None,
        nice: int = 0,
        topic: str | None = None,
    ) -> Stream:
        """Segments a stream of frames with concurrent stages (see :mod:`edgeseg.runtime.stream`).

        Args:
            source: a camera index or ``/dev/videoN``, a GStreamer pipeline
                string (``... ! appsink``), a video file, an image folder
                (sorted by name), a bag (``.mcap``, ``.bag``, ``.db3``, a rosbag2
                folder; :class:`~edgeseg.runtime.bags.BagSource`), or any iterable of frames.
            drop: ``"oldest"`` always serves the newest frame and counts the
                dropped ones (default for cameras); ``"none"`` processes every
                frame (default for files, folders and iterables).
            queue_size: frames each stage may hold waiting.
            bgr: frames are BGR (an iterable of OpenCV frames).
            keep_frames: put the captured frame on each result.
            outputs: extra outputs (``probs``) the bundle has.
            retries: how often a camera that stops delivering is reopened.
            max_frames: stop after this many captured frames.
            nice: run the capture/pre/post threads this many Linux nice steps
                below inference (0, the default: the same priority). Measured on
                2 cores it changed throughput by less than the run-to-run noise.
            topic: a bag's image topic (None: its only one). Results carry the
                message's header in ``meta`` and its stamp as ``timestamp``.

        Returns:
            A :class:`~edgeseg.runtime.stream.Stream`: iterate it for results;
            use it in ``with`` (or break out of the loop) to stop it.
        """
        from edgeseg.runtime.stream import Stream

        extra = self._extra_outputs(outputs)
        return Stream(
            self,
            source,
            drop=drop,
            queue_size=queue_size,
            bgr=bgr,
            keep_frames=keep_frames,
            outputs=extra,
            retries=retries,
            max_frames=max_frames,
            nice=nice,
            topic=topic,
        )

    def profile(self) -> ProfileSummary:
        """Latency percentiles per stage and end to end over the recent frames (``str()`` is a table)."""
        return self.profiler.summary()

    def _require_open(self) -> Backend:
        if self._backend is None:
            raise ConfigError(f"Segmenter for {self.bundle.path} is closed")
        return self._backend

    def close(self) -> None:
        """Releases the backend. Idempotent."""
        self._crf_chain = None  # the backend itself: closed below
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        if self._crf_backend is not None:
            self._crf_backend.close()
            self._crf_backend = None

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Segmenter({str(self.bundle.path)!r}, model={self.manifest.model.name!r}, "
            f"precision={self.precision!r}, backend={self.backend_name!r})"
        )
