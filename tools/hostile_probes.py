#!/usr/bin/env python3
"""Plays a hostile and a careless user against edgeseg's library and CLI (issue 13).

Every probe runs in its own subprocess under a timeout, so a crash, an abort or
a hang is observed, not suffered, and each run is classified as one of:

- ``ok``: a result (for the CLI: exit 0) that passed the probe's checks;
- ``edgeseg-error``: an ``edgeseg.errors`` exception; for the CLI a non-zero
  exit whose stderr ends in click's one ``Error: ...`` line, no traceback;
- ``raw-exception``: any other Python exception, or a traceback in CLI output;
- ``crash``: killed by a signal, or a non-zero exit without a Python exception;
- ``hang``: the timeout ran out;
- ``wrong``: it succeeded, but the result is wrong (a mask id >= the class
  count, exit 0 on a truncated video, a message naming the wrong option...);
- ``skipped``: the probe cannot be set up on this machine (the reason is given).

Each probe states the outcomes it expects; the summary counts the probes with
any try outside them. Fixtures (a tiny 4-class bundle, an 11-class one, PNG
frames, a decompression-bomb PNG, a 60-frame AVI and a truncated copy, the
malformed bundles) are built in a temporary folder that is removed afterwards
(``--keep`` keeps it). Nothing heavy is imported here: torch only in the
subprocess that builds the fixtures and in the CLI commands that need it.

Usage::

    python tools/hostile_probes.py [--json OUT] [--only GROUP[/PROBE][,...]] [--jobs N] [--keep]

``--only selftest`` runs probes that crash, hang and raise on purpose, to show
that each outcome is observed and classified.

Exit status: 0 every probe as expected (or skipped), 1 some differ, 2 bad usage
or the fixtures could not be built at all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
MARK = "@@hostile-probe@@"
OUTCOMES = ("ok", "edgeseg-error", "raw-exception", "crash", "hang", "wrong", "skipped")
NUM_CLASSES = 4
INPUT_SIZE = (64, 96)
VIDEO_FRAMES = 60
FAST_S = 3.0  # a CLI error that needs no torch must arrive within this
GROUPS = ("bundle", "frames", "stream", "cli", "interrupts", "selftest")


class Wrong(Exception):
    """Raised by a probe whose call succeeded with a wrong result."""


def tiny_module(num_classes: int = 4, in_channels: int = 3, dict_output: bool = True):  # type: ignore[no-untyped-def]
    """A small conv net with BN, a stride and bilinear upsampling; returns {"out": logits}.

    A copy of tests/conftest.py's, so that this script imports nothing from tests.
    """
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 8, 3, padding=1, stride=2)
            self.bn = nn.BatchNorm2d(8)
            self.head = nn.Conv2d(8, num_classes, 1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.head(torch.relu(self.bn(self.conv(x))))
            y = nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return {"out": y} if dict_output else y

    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():  # non-trivial BN statistics, so normalisation matters
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


# --------------------------------------------------------------------------- probes as data


@dataclass
class Probe:
    """One probe: what it tries, how, and what it expects.

    ``kind`` is ``py`` (``fn(fx, pdir)`` runs in a child; returns a detail or
    raises), ``cli`` (``fn(fx, pdir)`` returns the edgeseg arguments; ``check``
    may turn the run into ``wrong``) or ``custom`` (``fn(fx, pdir, rng)`` runs
    here, starts its own subprocesses and returns (outcome, detail)).
    """

    group: str
    name: str
    what: str
    kind: str
    fn: Callable[..., Any]
    expected: tuple[str, ...]
    needs: tuple[str, ...] = ("tiny",)
    tries: int = 1
    timeout: float = 60.0
    check: Callable[[CliRun, dict[str, Any], Path], str | None] | None = None
    serial: bool = False  # timing-sensitive: runs alone, after the parallel ones

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"


@dataclass
class CliRun:
    rc: int
    stdout: str
    stderr: str
    elapsed: float


@dataclass
class TryResult:
    outcome: str
    detail: str
    elapsed: float


@dataclass
class ProbeReport:
    probe: Probe
    results: list[TryResult] = field(default_factory=list)
    skipped: str | None = None

    @property
    def counts(self) -> Counter[str]:
        if self.skipped is not None:
            return Counter({"skipped": self.probe.tries})
        return Counter(r.outcome for r in self.results)

    @property
    def as_expected(self) -> bool:
        return self.skipped is not None or all(r.outcome in self.probe.expected for r in self.results)


PROBES: list[Probe] = []


def probe(group: str, name: str, what: str, kind: str, fn: Callable[..., Any], expected: tuple[str, ...] | str,
          **kw: Any) -> None:
    PROBES.append(Probe(group, name, what, kind, fn,
                        (expected,) if isinstance(expected, str) else tuple(expected), **kw))


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _frame(seed: int = 0, size: tuple[int, int] = (48, 64)) -> Any:
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _check_mask(result: Any, shape: tuple[int, ...] | None, classes: int = NUM_CLASSES) -> str:
    """The detail for a good mask; Wrong for a mask of the wrong shape, type or ids."""
    import numpy as np

    mask = getattr(result, "mask", None)
    if not isinstance(mask, np.ndarray):
        raise Wrong(f"result has no mask array ({type(mask).__name__})")
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise Wrong(f"mask is {mask.dtype} {mask.shape}, expected uint8 (H, W)")
    if shape is None:
        raise Wrong(f"returned a {mask.shape} mask for input that has no frame in it")
    if mask.shape != tuple(shape):
        raise Wrong(f"mask is {mask.shape}, the frame is {tuple(shape)}")
    top = int(mask.max()) if mask.size else 0
    if top >= classes:
        raise Wrong(f"mask holds class id {top}, the bundle has {classes} classes")
    return f"mask {mask.shape}, ids <= {top}"


# --------------------------------------------------------------------------- bundle


# (name, what, keys into the manifest, value); keys walk dicts by name and lists by index
MANIFEST_EDITS: list[tuple[str, str, tuple[Any, ...], Any]] = [
    ("files-bytes-str", 'files."model.onnx".bytes = "abc"', ("files", "model.onnx", "bytes"), "abc"),
    ("input-size-zero", "input.size = [0, 64]", ("input", "size"), [0, 64]),
    ("input-size-negative", "input.size = [-1, 64]", ("input", "size"), [-1, 64]),
    ("input-size-huge", "input.size = [60000, 60000]", ("input", "size"), [60000, 60000]),
    ("channels-5", "input.channels = 5", ("input", "channels"), 5),
    ("channels-neg3", "input.channels = -3", ("input", "channels"), -3),
    ("multiple-of-0", "input.multiple_of = 0", ("input", "multiple_of"), 0),
    ("schema-true", "schema_version = true", ("schema_version",), True),
    ("schema-str", 'schema_version = "1"', ("schema_version",), "1"),
    ("schema-99", "schema_version = 99", ("schema_version",), 99),
    ("unknown-key", "an unknown top-level key", ("surprise",), {"x": 1}),
    ("palette-300", "palette[0] = [300, 0, 0]", ("palette", 0), [300, 0, 0]),
    ("palette-int", "palette = 300", ("palette",), 300),
    ("classes-empty", "classes = []", ("classes",), []),
    ("outputs-no-mask", 'outputs = ["probs", "logits"]', ("outputs",), ["probs", "logits"]),
    ("files-empty", "files = {} (model.onnx unlisted)", ("files",), {}),
]

# (name, what): bundles altered in other ways than one manifest field (see _special_bundle)
SPECIAL_BUNDLES: list[tuple[str, str]] = [
    ("fifo-manifest", "manifest.json is a FIFO (os.mkfifo): expected an error at once, not a hang"),
    ("devzero-manifest", "manifest.json -> /dev/zero symlink: expected an error at once"),
    ("manifest-not-json", "manifest.json holds '{not json'"),
    ("manifest-17mb", "manifest.json is valid JSON padded to 17 MB"),
    ("unlisted-extra-file", "an unlisted model.onnx.data in the bundle (read unchecked by a graph)"),
    ("listed-symlink", "model.onnx replaced by a symlink to an identical file outside"),
    ("model-truncated", "model.onnx cut to half its bytes"),
    ("graph-swap-11-classes", "the 11-class graph copied in with recomputed sha256/bytes (manifest: 4 classes)"),
    ("not-a-folder", "the bundle path is a regular file"),
]


def _set(data: Any, keys: tuple[Any, ...], value: Any) -> None:
    for key in keys[:-1]:
        data = data[key]
    data[keys[-1]] = value


def _special_bundle(name: str, path: Path, fx: dict[str, Any]) -> None:
    manifest = path / "manifest.json"
    if name == "fifo-manifest":
        if not hasattr(os, "mkfifo"):
            raise OSError("os.mkfifo is not available here")
        manifest.unlink()
        os.mkfifo(manifest)
    elif name == "devzero-manifest":
        if not os.path.exists("/dev/zero"):
            raise OSError("/dev/zero does not exist here")
        manifest.unlink()
        manifest.symlink_to("/dev/zero")
    elif name == "manifest-not-json":
        manifest.write_text("{not json")
    elif name == "manifest-17mb":
        text = manifest.read_text()
        manifest.write_text(text + " " * (17 << 20))
    elif name == "unlisted-extra-file":
        (path / "model.onnx.data").write_bytes(os.urandom(1024))
    elif name == "listed-symlink":
        outside = path.parent / f"{path.name}.outside"
        outside.mkdir()
        shutil.move(str(path / "model.onnx"), str(outside / "model.onnx"))
        (path / "model.onnx").symlink_to(outside / "model.onnx")
    elif name == "model-truncated":
        data = (path / "model.onnx").read_bytes()
        (path / "model.onnx").write_bytes(data[: len(data) // 2])
    elif name == "graph-swap-11-classes":
        if not fx.get("tiny11"):
            raise OSError(fx["skip"].get("tiny11", "the 11-class bundle was not built"))
        data = (Path(fx["tiny11"]) / "model.onnx").read_bytes()
        (path / "model.onnx").write_bytes(data)
        doc = json.loads(manifest.read_text())
        doc["files"]["model.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        manifest.write_text(json.dumps(doc, indent=2))
    elif name == "not-a-folder":
        shutil.rmtree(path)
        path.write_text("not a bundle\n")
    else:  # pragma: no cover - a name missing here is a bug of this script
        raise KeyError(name)


def make_bad_bundles(fx: dict[str, Any]) -> None:
    """Writes every malformed bundle under ``fx["workdir"]/bad`` (light: json and files only)."""
    fx.setdefault("bad", {})
    if not fx.get("tiny"):
        return
    root = Path(fx["workdir"]) / "bad"
    root.mkdir(exist_ok=True)
    for name, _what, keys, value in MANIFEST_EDITS:
        path = root / f"{name}.edgeseg"
        shutil.copytree(fx["tiny"], path)
        doc = json.loads((path / "manifest.json").read_text())
        _set(doc, keys, value)
        (path / "manifest.json").write_text(json.dumps(doc, indent=2))
        fx["bad"][name] = str(path)
    for name, _what in SPECIAL_BUNDLES:
        path = root / f"{name}.edgeseg"
        shutil.copytree(fx["tiny"], path)
        try:
            _special_bundle(name, path, fx)
        except OSError as err:
            fx["skip"][f"bad:{name}"] = f"cannot make this bundle here: {err}"
            continue
        fx["bad"][name] = str(path)


def _load_and_run(path: str) -> str:
    """Segmenter(path) and one frame; Wrong when the mask holds ids the manifest does not have."""
    import edgeseg

    seg = edgeseg.Segmenter(path)
    classes = len(seg.bundle.manifest.classes)
    result = seg(_frame(1, INPUT_SIZE))
    return "loaded and ran: " + _check_mask(result, INPUT_SIZE, classes=max(classes, 1))


def _bundle_probes() -> None:
    probe("bundle", "valid (control)", "the tiny bundle itself: Segmenter + one frame", "py",
          lambda fx, pdir: _load_and_run(fx["tiny"]), "ok")
    probe("bundle", "valid (control) [info]", "edgeseg info on the tiny bundle", "cli",
          lambda fx, pdir: ["info", fx["tiny"]], "ok")
    cases = [(name, what) for name, what, _k, _v in MANIFEST_EDITS] + SPECIAL_BUNDLES
    for name, what in cases:
        timeout = 15.0 if name in ("fifo-manifest", "devzero-manifest", "manifest-17mb") else 60.0
        probe("bundle", name, f"{what}: edgeseg.Segmenter(path) + one frame", "py",
              lambda fx, pdir, n=name: _load_and_run(fx["bad"][n]), "edgeseg-error",
              needs=("tiny", f"bad:{name}"), timeout=timeout)
        probe("bundle", f"{name} [info]", f"{what}: edgeseg info (one line, exit 1)", "cli",
              lambda fx, pdir, n=name: ["info", fx["bad"][n]], "edgeseg-error",
              needs=("tiny", f"bad:{name}"), timeout=timeout, check=_check_info_exit1)


def _check_info_exit1(run: CliRun, fx: dict[str, Any], pdir: Path) -> str | None:
    if run.rc not in (0, 1):
        return f"exit {run.rc}, expected 1 for a bad bundle: {_last_line(run.stderr)}"
    return None


# --------------------------------------------------------------------------- frames


def _nan_frame(np: Any, rgb: Any) -> Any:
    x = rgb.astype(np.float32)
    x[0, 0, 0] = np.nan
    return x


def _readonly_frame(np: Any, rgb: Any) -> Any:
    x = rgb.copy()
    x.flags.writeable = False
    return x


def _strided_huge(np: Any, rgb: Any) -> Any:
    """(20000, 20000, 3) uint8 without the 1.2 GB: every pixel is the same 3 bytes."""
    return np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), shape=(20000, 20000, 3), strides=(0, 0, 1))


EITHER = ("ok", "edgeseg-error")

# (name, what, make(np, rgb) -> the input, the mask shape a right answer has (None: no mask is
# right), expected); rgb is a (48, 64, 3) uint8 frame. The makers run in the child only.
FRAME_CASES: list[tuple[str, str, Callable[[Any, Any], Any], tuple[int, ...] | None, tuple[str, ...]]] = [
    ("rgb-uint8 (control)", "HxWx3 uint8", lambda np, rgb: rgb, (48, 64), ("ok",)),
    ("gray-2d", "HxW uint8", lambda np, rgb: np.ascontiguousarray(rgb[..., 0]), (48, 64), EITHER),
    ("asmatrix-gray-view", "np.asmatrix(rgb[..., 0]) (a strided view)",
     lambda np, rgb: np.asmatrix(rgb[..., 0]), (48, 64), EITHER),
    ("asmatrix-contiguous", "np.asmatrix of a contiguous gray frame",
     lambda np, rgb: np.asmatrix(np.ascontiguousarray(rgb[..., 0])), (48, 64), EITHER),
    ("masked-array", "np.ma.array(rgb)", lambda np, rgb: np.ma.array(rgb), (48, 64), EITHER),
    ("float64-0-1", "float64 in 0..1", lambda np, rgb: rgb / 255.0, (48, 64), EITHER),
    ("float64-0-255", "float64 in 0..255", lambda np, rgb: rgb.astype(np.float64), (48, 64), EITHER),
    ("float32-nan", "float32 with a NaN", _nan_frame, (48, 64), EITHER),
    ("int32", "int32 HxWx3", lambda np, rgb: rgb.astype(np.int32), (48, 64), EITHER),
    ("uint16", "uint16 HxWx3", lambda np, rgb: rgb.astype(np.uint16) * 257, (48, 64), EITHER),
    ("bool", "bool HxWx3", lambda np, rgb: rgb > 127, (48, 64), EITHER),
    ("complex64", "complex64 HxWx3", lambda np, rgb: rgb.astype(np.complex64), (48, 64), EITHER),
    ("object", "dtype=object HxWx3", lambda np, rgb: rgb.astype(object), (48, 64), EITHER),
    ("empty-0x0x3", "shape (0, 0, 3)", lambda np, rgb: np.zeros((0, 0, 3), np.uint8), None, EITHER),
    ("empty-0x64x3", "shape (0, 64, 3)", lambda np, rgb: np.zeros((0, 64, 3), np.uint8), None, EITHER),
    ("empty-48x0", "shape (48, 0)", lambda np, rgb: np.zeros((48, 0), np.uint8), None, EITHER),
    ("1x1x3", "a single pixel", lambda np, rgb: rgb[:1, :1].copy(), (1, 1), EITHER),
    ("4d-batch", "shape (1, 48, 64, 3)", lambda np, rgb: rgb[None], (48, 64), EITHER),
    ("5d", "shape (1, 1, 48, 64, 3)", lambda np, rgb: rgb[None, None], None, EITHER),
    ("list", "rgb.tolist()", lambda np, rgb: rgb.tolist(), (48, 64), EITHER),
    ("none", "None", lambda np, rgb: None, None, EITHER),
    ("string", "the string 'frame.png'", lambda np, rgb: "frame.png", None, EITHER),
    ("bytes", "PNG signature bytes", lambda np, rgb: b"\x89PNG\r\n\x1a\n", None, EITHER),
    ("hwx1", "HxWx1", lambda np, rgb: rgb[..., :1].copy(), (48, 64), EITHER),
    ("hwx2", "HxWx2", lambda np, rgb: rgb[..., :2].copy(), None, EITHER),
    ("rgba", "HxWx4", lambda np, rgb: np.dstack([rgb, rgb[..., :1]]), (48, 64), EITHER),
    ("hwx5", "HxWx5", lambda np, rgb: np.dstack([rgb, rgb[..., :2]]), None, EITHER),
    ("huge-strided", "a (20000, 20000, 3) as_strided view of 3 bytes", _strided_huge, (20000, 20000), EITHER),
    ("view-step", "rgb[::2, ::3] (non-contiguous)", lambda np, rgb: rgb[::2, ::3], (24, 22), EITHER),
    ("view-bgr", "rgb[:, :, ::-1] (negative stride)", lambda np, rgb: rgb[:, :, ::-1], (48, 64), EITHER),
    ("fortran", "np.asfortranarray(rgb)", lambda np, rgb: np.asfortranarray(rgb), (48, 64), EITHER),
    ("transposed", "rgb.transpose(1, 0, 2)", lambda np, rgb: rgb.transpose(1, 0, 2), (64, 48), EITHER),
    ("readonly", "a read-only array", _readonly_frame, (48, 64), EITHER),
]


def _run_frame_case(name: str, fx: dict[str, Any], pdir: Path) -> str:
    import numpy as np

    import edgeseg

    _name, what, make, shape, _expected = next(c for c in FRAME_CASES if c[0] == name)
    frame = make(np, _frame(2))
    seg = edgeseg.Segmenter(fx["tiny"])
    result = seg(frame)
    return f"{what}: " + _check_mask(result, shape)


def _frame_probes() -> None:
    for name, what, _make, _shape, expected in FRAME_CASES:
        probe("frames", name, f"seg(x), x = {what}", "py",
              lambda fx, pdir, n=name: _run_frame_case(n, fx, pdir), expected,
              timeout=180.0 if name == "huge-strided" else 60.0)


# --------------------------------------------------------------------------- stream


def _stream_raises_after_10(fx: dict[str, Any], pdir: Path) -> str:
    import edgeseg

    def frames() -> Any:
        for i in range(10):
            yield _frame(i)
        raise RuntimeError("camera unplugged")

    seg = edgeseg.Segmenter(fx["tiny"])
    with seg.stream(frames()) as stream:
        results = list(stream)
    good = sum(r.error is None and r.mask is not None for r in results)
    state = f"{good} of 10 frames delivered, failed={stream.failed}, end_reason={stream.end_reason!r}"
    if good != 10 or not stream.failed or not stream.end_reason:
        raise Wrong(state)
    return state


def _stream_bad_item(fx: dict[str, Any], pdir: Path) -> str:
    import edgeseg

    items = [_frame(i) for i in range(5)] + ["not a frame"] + [_frame(i) for i in range(5, 10)]
    seg = edgeseg.Segmenter(fx["tiny"])
    with seg.stream(items) as stream:
        results = list(stream)
    errors = [r for r in results if r.error is not None]
    good = sum(r.error is None and r.mask is not None for r in results)
    state = (f"{len(results)} results ({good} masks, {len(errors)} errors), failed={stream.failed}, "
             f"end_reason={stream.end_reason!r}")
    if len(results) != 11 or good != 10 or len(errors) != 1 or results[5].error is None:
        raise Wrong(state)
    return state + f"; bad item: {_one_line(errors[0].error or '', 120)}"


def _stream_bomb(fx: dict[str, Any], pdir: Path) -> str:
    import edgeseg

    folder = Path(fx["bomb_dir"])
    names = sorted(p.stem for p in folder.iterdir())
    seg = edgeseg.Segmenter(fx["tiny"])
    with seg.stream(folder) as stream:
        results = list(stream)
    by_name = {r.name: r for r in results}
    good = sum(r.error is None and r.mask is not None for r in results)
    bomb = by_name.get("c_bomb")
    state = (f"{len(results)} of {len(names)} frames ({good} masks), bomb error={bomb and bomb.error!r}, "
             f"failed={stream.failed}, end_reason={stream.end_reason!r}")
    if len(results) != len(names) or good != len(names) - 1 or bomb is None or bomb.error is None:
        raise Wrong(_one_line(state, 300))
    return _one_line(state, 300)


def _stream_camera_minus_1(fx: dict[str, Any], pdir: Path) -> str:
    import edgeseg

    seg = edgeseg.Segmenter(fx["tiny"])
    with seg.stream(-1) as stream:
        results = list(stream)
    return f"a stream opened: {len(results)} results, failed={stream.failed}, end_reason={stream.end_reason!r}"


def _stream_array_2d(fx: dict[str, Any], pdir: Path) -> str:
    import numpy as np

    import edgeseg

    seg = edgeseg.Segmenter(fx["tiny"])
    with seg.stream(np.zeros((48, 64), np.uint8)) as stream:
        results = list(stream)
    raise Wrong(f"a (48, 64) array streamed as {len(results)} frames (row by row?)")


def _stream_video(fx: dict[str, Any], key: str) -> tuple[list[Any], Any]:
    import edgeseg

    seg = edgeseg.Segmenter(fx["tiny"])
    with seg.stream(fx[key]) as stream:
        results = list(stream)
    return results, stream


def _stream_truncated(fx: dict[str, Any], pdir: Path) -> str:
    results, stream = _stream_video(fx, "truncated")
    good = sum(r.error is None and r.mask is not None for r in results)
    readable, total = fx["truncated_frames"], fx["video_frames"]
    reason = stream.end_reason or ""
    state = f"{good} masks, failed={stream.failed}, end_reason={reason!r}"
    if not stream.failed:
        raise Wrong(f"ended as a whole video: {state}")
    if good != readable:
        raise Wrong(f"{readable} frames were readable: {state}")
    if str(total) not in reason or str(readable) not in reason:
        raise Wrong(f"the reason does not name both {readable} and {total}: {state}")
    return state


def _stream_full_video(fx: dict[str, Any], pdir: Path) -> str:
    results, stream = _stream_video(fx, "video")
    good = sum(r.error is None and r.mask is not None for r in results)
    state = f"{good} masks, failed={stream.failed}, end_reason={stream.end_reason!r}"
    if good != fx["video_frames"] or stream.failed:
        raise Wrong(state)
    return state


def _masks_written(pdir: Path) -> int:
    return len(list((pdir / "masks").glob("*.png"))) if (pdir / "masks").is_dir() else 0


def _check_run_truncated(run: CliRun, fx: dict[str, Any], pdir: Path) -> str | None:
    readable, total = fx["truncated_frames"], fx["video_frames"]
    if run.rc == 0:
        return f"exit 0 on a video that ends at frame {readable} of {total} ({_masks_written(pdir)} masks)"
    line = _error_line(run.stderr) or ""
    if not (re.search(rf"\b{total}\b", line) and re.search(rf"\b{readable}\b", line)):
        return f"the error does not name both {readable} and {total}: {line}"
    return None


def _check_run_full(run: CliRun, fx: dict[str, Any], pdir: Path) -> str | None:
    written = _masks_written(pdir)
    if run.rc == 0 and written != fx["video_frames"]:
        return f"exit 0 with {written} of {fx['video_frames']} masks"
    return None


def _check_run_bomb(run: CliRun, fx: dict[str, Any], pdir: Path) -> str | None:
    good = len(list(Path(fx["bomb_dir"]).iterdir())) - 1
    written = _masks_written(pdir)
    if written != good:
        return f"{written} of the {good} good frames' masks written (exit {run.rc})"
    return None


def _stream_probes() -> None:
    probe("stream", "iterable-raises-after-10", "an iterable that raises RuntimeError after 10 frames: "
          "10 results, then end_reason set and failed=True", "py", _stream_raises_after_10, "ok",
          tries=3)
    probe("stream", "bad-item-mid-stream", "an iterable with a string between 10 frames: 11 results, "
          "the string's with an error", "py", _stream_bad_item, "ok", tries=2)
    probe("stream", "bomb-in-folder", "a folder with a decompression-bomb PNG among frames: the bomb "
          "reported on its result, the others delivered", "py", _stream_bomb, "ok", needs=("tiny", "bomb_dir"))
    probe("stream", "camera-minus-1", "seg.stream(-1)", "py", _stream_camera_minus_1, "edgeseg-error",
          timeout=30.0)
    probe("stream", "array-2d-source", "seg.stream(a (48, 64) array)", "py", _stream_array_2d,
          "edgeseg-error")
    probe("stream", "full-avi (control)", "the 60-frame AVI: 60 results, not failed", "py",
          _stream_full_video, "ok", needs=("tiny", "video"))
    probe("stream", "truncated-avi", "the truncated AVI: every readable frame, then failed=True with "
          "both frame counts in end_reason", "py", _stream_truncated, "ok", needs=("tiny", "truncated"))
    probe("stream", "full-avi [run] (control)", "edgeseg run on the 60-frame AVI: exit 0, 60 masks", "cli",
          lambda fx, pdir: ["run", fx["tiny"], "--source", fx["video"], "--masks", str(pdir / "masks")],
          "ok", needs=("tiny", "video"), check=_check_run_full, timeout=120.0)
    probe("stream", "truncated-avi [run]", "edgeseg run on the truncated AVI: non-zero exit, one line "
          "naming both frame counts", "cli",
          lambda fx, pdir: ["run", fx["tiny"], "--source", fx["truncated"], "--masks", str(pdir / "masks")],
          "edgeseg-error", needs=("tiny", "truncated"), check=_check_run_truncated, timeout=120.0)
    probe("stream", "bomb-in-folder [run]", "edgeseg run on the folder with the bomb: no traceback, "
          "every good frame's mask written", "cli",
          lambda fx, pdir: ["run", fx["tiny"], "--source", fx["bomb_dir"], "--masks", str(pdir / "masks")],
          ("ok", "edgeseg-error"), needs=("tiny", "bomb_dir"), check=_check_run_bomb, timeout=120.0)


# --------------------------------------------------------------------------- cli


def _touch(path: Path, text: str = "keep me\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _check_untouched(name: str, text: str = "keep me\n") -> Callable[[CliRun, dict[str, Any], Path], str | None]:
    def check(run: CliRun, fx: dict[str, Any], pdir: Path) -> str | None:
        path = pdir / name
        if not path.is_file() or path.read_text() != text:
            return f"{name} was replaced (exit {run.rc})"
        return None

    return check


def _check_no_gif_folder(run: CliRun, fx: dict[str, Any], pdir: Path) -> str | None:
    if (pdir / "x.gif").is_dir():
        return f"made a folder named x.gif (exit {run.rc})"
    return None


def _check_fast(limit: float = FAST_S) -> Callable[[CliRun, dict[str, Any], Path], str | None]:
    def check(run: CliRun, fx: dict[str, Any], pdir: Path) -> str | None:
        if run.elapsed > limit:
            return f"took {run.elapsed:.1f} s (limit {limit:.0f} s: torch imported first?): {_last_line(run.stderr)}"
        return None

    return check


def _check_force_message(run: CliRun, fx: dict[str, Any], pdir: Path) -> str | None:
    line = _error_line(run.stderr) or _last_line(run.stderr)
    if "overwrite=True" in line or "--force" not in line:
        return f"the message does not name --force (or names overwrite=True): {line}"
    return _check_fast()(run, fx, pdir)


def _segmenter_typo(fx: dict[str, Any], pdir: Path) -> str:
    import edgeseg

    try:
        edgeseg.Segmenter(fx["tiny"], treads=2)
    except edgeseg.errors.EdgesegError as err:
        if "treads" not in str(err):
            raise Wrong(f"the error does not name 'treads': {err}") from err
        raise
    raise Wrong("Segmenter(path, treads=2) was accepted")


def _build_args(pdir: Path, *extra: str) -> list[str]:
    return ["build", "--model", "unet", "--num-classes", "4", "--input-size", "64x64",
            "--target", "cpu", "-o", "base_channels=8", *extra]


def _cli_probes() -> None:
    run = ["run"]
    probe("cli", "run --masks <existing file>", "masks to a path that is a regular file", "cli",
          lambda fx, pdir: [*run, fx["tiny"], "--source", fx["frames"], "--masks", str(_touch(pdir / "m.txt"))],
          "edgeseg-error", check=_check_untouched("m.txt"))
    probe("cli", "run --masks /proc/x", "masks under /proc (cannot be created)", "cli",
          lambda fx, pdir: [*run, fx["tiny"], "--source", fx["frames"], "--masks", "/proc/edgeseg-probe/masks"],
          "edgeseg-error", needs=("tiny", "proc"))
    probe("cli", "run --overlay <existing x.json>", "overlay onto an existing .json file", "cli",
          lambda fx, pdir: [*run, fx["tiny"], "--source", fx["frames"], "--overlay",
                            str(_touch(pdir / "x.json", "{}\n"))],
          "edgeseg-error", check=_check_untouched("x.json", "{}\n"))
    probe("cli", "run --overlay x.gif (folder source)", "an overlay file name for a folder of frames", "cli",
          lambda fx, pdir: [*run, fx["tiny"], "--source", fx["frames"], "--overlay", str(pdir / "x.gif")],
          "edgeseg-error", check=_check_no_gif_folder)
    probe("cli", "run --source <missing>", "a source that does not exist", "cli",
          lambda fx, pdir: [*run, fx["tiny"], "--source", str(pdir / "nothing.mp4")], "edgeseg-error")
    probe("cli", "run <missing bundle>", "a bundle that does not exist", "cli",
          lambda fx, pdir: [*run, str(pdir / "nothing.edgeseg"), "--source", fx["frames"]], "edgeseg-error",
          needs=("frames",))
    probe("cli", "run --alpha 7", "overlay opacity out of 0..1", "cli",
          lambda fx, pdir: [*run, fx["tiny"], "--source", fx["frames"], "--overlay", str(pdir / "ov"),
                            "--alpha", "7"], "edgeseg-error")
    probe("cli", "profile --json <directory>", "profile's JSON onto a folder", "cli",
          lambda fx, pdir: ["profile", fx["tiny"], "--frames", "5", "--warmup", "1", "--json", str(pdir)],
          "edgeseg-error")
    probe("cli", "profile --trace /proc/x/t.json", "a trace path that cannot be written", "cli",
          lambda fx, pdir: ["profile", fx["tiny"], "--frames", "20", "--warmup", "1", "--trace",
                            "/proc/edgeseg-probe/t.json"], "edgeseg-error", needs=("tiny", "proc"))
    probe("cli", "profile --plot /proc/x/p.png", "a plot path that cannot be written", "cli",
          lambda fx, pdir: ["profile", fx["tiny"], "--frames", "20", "--warmup", "1", "--plot",
                            "/proc/edgeseg-probe/p.png"], "edgeseg-error", needs=("tiny", "proc"))
    probe("cli", "profile --frames 0", "no frames to measure", "cli",
          lambda fx, pdir: ["profile", fx["tiny"], "--frames", "0"], "edgeseg-error")
    probe("cli", "profile --frames -5", "a negative frame count", "cli",
          lambda fx, pdir: ["profile", fx["tiny"], "--frames", "-5"], "edgeseg-error")
    probe("cli", "parity --factory (control)", "parity with a factory module: exit 0, report written",
          "cli", lambda fx, pdir: ["parity", fx["tiny"], "--images", fx["frames"], "--factory",
                                   "hp_factory:make", "--report", str(pdir / "report")],
          "ok", needs=("tiny", "factory"), timeout=240.0)
    probe("cli", "parity --report <existing file>", "the HTML report onto a regular file", "cli",
          lambda fx, pdir: ["parity", fx["tiny"], "--images", fx["frames"], "--factory", "hp_factory:make",
                            "--report", str(_touch(pdir / "r.txt"))],
          "edgeseg-error", needs=("tiny", "factory"), timeout=240.0, check=_check_untouched("r.txt"))
    probe("cli", "build --out /proc/x", "a bundle under /proc", "cli",
          lambda fx, pdir: _build_args(pdir, "--out", "/proc/edgeseg-probe/x.edgeseg"), "edgeseg-error",
          needs=("proc",), timeout=300.0)
    probe("cli", "build --opset 99", "an opset no exporter has", "cli",
          lambda fx, pdir: _build_args(pdir, "--opset", "99", "--out", str(pdir / "o99.edgeseg")),
          "edgeseg-error", needs=(), timeout=300.0)
    probe("cli", "build --num-classes 0", "zero classes", "cli",
          lambda fx, pdir: ["build", "--model", "unet", "--num-classes", "0", "--input-size", "64x64",
                            "--target", "cpu", "--out", str(pdir / "c0.edgeseg")],
          "edgeseg-error", needs=(), timeout=300.0)
    probe("cli", "build --input-size 0x64", "a zero side", "cli",
          lambda fx, pdir: ["build", "--model", "unet", "--input-size", "0x64", "--out", str(pdir / "z.edgeseg")],
          "edgeseg-error", needs=(), timeout=300.0)
    probe("cli", "build --model segformer", f"a model the zoo lacks: an error within {FAST_S:.0f} s "
          "(no torch import first)", "cli",
          lambda fx, pdir: ["build", "--model", "segformer", "--out", str(pdir / "s.edgeseg")],
          "edgeseg-error", needs=(), check=_check_fast(), serial=True, timeout=120.0)
    probe("cli", "build onto an existing bundle", f"no --force: the message names --force (not "
          f"overwrite=True) within {FAST_S:.0f} s", "cli",
          lambda fx, pdir: _build_args(pdir, "--out", str(_copy_tiny(fx, pdir))),
          "edgeseg-error", check=_check_force_message, serial=True, timeout=120.0)
    probe("cli", "Segmenter(path, treads=2)", "a misspelled backend option", "py", _segmenter_typo,
          "edgeseg-error")


def _copy_tiny(fx: dict[str, Any], pdir: Path) -> Path:
    out = pdir / "existing.edgeseg"
    if not out.exists():
        shutil.copytree(fx["tiny"], out)
    return out


# --------------------------------------------------------------------------- interrupts


_CALIBRATE_S: dict[str, float] = {}
_CALIBRATE_LOCK = threading.Lock()


def _calibrate_cmd(fx: dict[str, Any], bundle: Path) -> list[str]:
    return [*edgeseg_cmd(), "calibrate", str(bundle), "--calib", fx["frames"], "--calib-size", "12",
            "--samples", fx["frames"], "--method", "minmax"]


def _calibrate_duration(fx: dict[str, Any]) -> float:
    """How long one uninterrupted calibrate of the tiny bundle takes here (measured once)."""
    with _CALIBRATE_LOCK:
        if "s" not in _CALIBRATE_S:
            folder = Path(tempfile.mkdtemp(dir=fx["workdir"], prefix="calibrate-timing-"))
            bundle = folder / "b.edgeseg"
            shutil.copytree(fx["tiny"], bundle)
            start = time.perf_counter()
            subprocess.run(_calibrate_cmd(fx, bundle), capture_output=True, env=child_env(fx), timeout=300,
                           check=False)
            _CALIBRATE_S["s"] = time.perf_counter() - start
        return _CALIBRATE_S["s"]


def _interrupt_try(sig: signal.Signals) -> Callable[[dict[str, Any], Path, random.Random], tuple[str, str]]:
    def run(fx: dict[str, Any], pdir: Path, rng: random.Random) -> tuple[str, str]:
        duration = _calibrate_duration(fx)
        bundle = pdir / "b.edgeseg"
        shutil.copytree(fx["tiny"], bundle)
        delay = rng.uniform(0.4, 1.0) * duration
        proc = subprocess.Popen(_calibrate_cmd(fx, bundle), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=child_env(fx), start_new_session=True)
        when = f"{sig.name} at {delay:.2f} s of ~{duration:.2f} s"
        try:
            proc.wait(timeout=delay)
            when = f"finished (exit {proc.returncode}) before {sig.name} at {delay:.2f} s"
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
        try:
            _out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return "hang", f"calibrate still running 60 s after {when}"
        last = _last_line(err.decode(errors="replace"))
        load = run_python_child(fx, ["--child-load", str(bundle)], pdir, timeout=60.0)
        # what the writer left beside the bundle after the next load (a stranded old bundle, a temp folder)
        left = sorted(p.name for p in pdir.iterdir() if p.name != bundle.name)
        detail = (f"{when}, exit {proc.returncode}" + (f" ({last})" if last else "") + f"; then: {load.detail}"
                  + (f"; left beside it: {', '.join(left)}" if left else ""))
        return load.outcome, _one_line(detail)

    return run


def _interrupt_probes() -> None:
    probe("interrupts", "SIGINT edgeseg calibrate", "SIGINT at a random time during calibrate "
          "(0.4..1.0 of its duration): the path then holds a loadable bundle", "custom",
          _interrupt_try(signal.SIGINT), "ok", needs=("tiny", "frames"), tries=12, serial=True, timeout=120.0)
    probe("interrupts", "SIGKILL edgeseg calibrate", "SIGKILL likewise: the next load restores a stranded "
          "bundle", "custom", _interrupt_try(signal.SIGKILL), "ok", needs=("tiny", "frames"), tries=8,
          serial=True, timeout=120.0)


# --------------------------------------------------------------------------- selftest


def _selftest_probes() -> None:
    """Probes that misbehave on purpose, to show that each outcome is observed (``--only selftest``)."""

    def segfault(fx: dict[str, Any], pdir: Path) -> str:
        import ctypes

        return str(ctypes.string_at(0))

    def edgeseg_error(fx: dict[str, Any], pdir: Path) -> str:
        from edgeseg.errors import InputError

        raise InputError("frame: on purpose")

    def hang(fx: dict[str, Any], pdir: Path) -> str:
        time.sleep(3600)
        return "woke up"

    def raw(fx: dict[str, Any], pdir: Path) -> str:
        raise ValueError("on purpose")

    def wrong(fx: dict[str, Any], pdir: Path) -> str:
        raise Wrong("on purpose")

    cases: list[tuple[str, Callable[[dict[str, Any], Path], Any], str]] = [
        ("ok", lambda fx, pdir: "fine", "ok"),
        ("abort", lambda fx, pdir: os.abort(), "crash"),
        ("segfault", segfault, "crash"),
        ("exit-3", lambda fx, pdir: os._exit(3), "crash"),
        ("hang", hang, "hang"),
        ("raw-exception", raw, "raw-exception"),
        ("edgeseg-error", edgeseg_error, "edgeseg-error"),
        ("wrong", wrong, "wrong"),
    ]
    for name, fn, expected in cases:
        probe("selftest", name, f"a probe that gives {expected} on purpose", "py", fn, expected, needs=(),
              timeout=5.0)
    probe("selftest", "cli-usage", "edgeseg with an unknown option", "cli",
          lambda fx, pdir: ["info", "--no-such-option"], "edgeseg-error", needs=())


_selftest_probes()
_bundle_probes()
_frame_probes()
_stream_probes()
_cli_probes()
_interrupt_probes()
REGISTRY = {p.id: p for p in PROBES}
assert len(REGISTRY) == len(PROBES), "probe ids must be unique"


# --------------------------------------------------------------------------- running and classifying


def edgeseg_cmd() -> list[str]:
    script = Path(sys.executable).parent / "edgeseg"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "edgeseg"]


def child_env(fx: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    # this tree's edgeseg first, then the fixtures folder (the --factory module)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), fx["workdir"], env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONFAULTHANDLER", None)
    return env


def _kill(proc: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _spawn(argv: list[str], fx: dict[str, Any], cwd: Path, timeout: float) -> tuple[int | None, str, str, float]:
    """(rc or None on timeout, stdout, stderr, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=child_env(fx), cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc = None
    return rc, out.decode(errors="replace"), err.decode(errors="replace"), time.perf_counter() - start


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _last_line(text: str) -> str:
    lines = _lines(text)
    return _one_line(lines[-1]) if lines else ""


def _error_line(stderr: str) -> str | None:
    errors = [line for line in _lines(stderr) if line.startswith("Error:")]
    return _one_line(errors[-1]) if errors else None


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def run_python_child(fx: dict[str, Any], args: list[str], pdir: Path, timeout: float) -> TryResult:
    rc, out, err, elapsed = _spawn([sys.executable, str(SCRIPT), *args, "--workdir", fx["workdir"]],
                                   fx, pdir, timeout)
    marks = [json.loads(line[len(MARK):]) for line in out.splitlines() if line.startswith(MARK)]
    mark = marks[-1] if marks else None
    if rc is None:
        return TryResult("hang", f"no result in {timeout:.0f} s" + (f" ({_last_line(err)})" if err.strip() else ""),
                         elapsed)
    if rc < 0:
        after = f" after reporting {mark['outcome']}" if mark else ""
        return TryResult("crash", f"killed by {_signal_name(rc)}{after}: {_last_line(err)}", elapsed)
    if mark is not None:
        detail = mark["detail"] + (f" [then exit {rc}: {_last_line(err)}]" if rc != 0 else "")
        return TryResult(mark["outcome"], detail, elapsed)
    if "Traceback (most recent call last)" in err:
        return TryResult("raw-exception", _last_line(err), elapsed)
    return TryResult("crash", f"exit {rc} without a result: {_last_line(err) or _last_line(out)}", elapsed)


def classify_cli(run: CliRun | None, timeout: float) -> TryResult:
    if run is None:
        return TryResult("hang", f"no exit in {timeout:.0f} s", timeout)
    text = run.stdout + run.stderr
    took = f"[{run.elapsed:.1f} s] "
    if run.rc < 0:
        return TryResult("crash", took + f"killed by {_signal_name(run.rc)}: {_last_line(run.stderr)}",
                         run.elapsed)
    if "Traceback (most recent call last)" in text:
        tb_lines = len(_lines(run.stderr))
        return TryResult("raw-exception", took + f"exit {run.rc}, {tb_lines} lines on stderr: "
                         f"{_last_line(run.stderr) or _last_line(run.stdout)}", run.elapsed)
    if run.rc == 0:
        return TryResult("ok", took + f"exit 0: {_last_line(run.stdout) or _last_line(run.stderr)}", run.elapsed)
    line = _error_line(run.stderr)
    if line is not None or _last_line(run.stderr) == "interrupted":
        after = _lines(run.stderr)
        extra = len(after) - 1 - max(i for i, text in enumerate(after) if text.startswith(("Error:", "interrupted")))
        note = f" [+{extra} lines after it]" if extra else ""
        return TryResult("edgeseg-error", took + f"exit {run.rc}: {line or 'interrupted'}{note}", run.elapsed)
    return TryResult("crash", took + f"exit {run.rc} without an error line: {_last_line(run.stderr)}",
                     run.elapsed)


def run_try(p: Probe, fx: dict[str, Any], index: int, rng: random.Random) -> TryResult:
    pdir = Path(fx["workdir"]) / "probes" / re.sub(r"[^A-Za-z0-9._-]+", "-", f"{p.id}.{index}")
    pdir.mkdir(parents=True, exist_ok=True)
    if p.kind == "py":
        return run_python_child(fx, ["--child", p.id], pdir, p.timeout)
    if p.kind == "custom":
        start = time.perf_counter()
        outcome, detail = p.fn(fx, pdir, rng)
        return TryResult(outcome, detail, time.perf_counter() - start)
    argv = [*edgeseg_cmd(), *p.fn(fx, pdir)]
    rc, out, err, elapsed = _spawn(argv, fx, pdir, p.timeout)
    run = None if rc is None else CliRun(rc, out, err, elapsed)
    result = classify_cli(run, p.timeout)
    if run is not None and p.check is not None and result.outcome in ("ok", "edgeseg-error"):
        wrong = p.check(run, fx, pdir)
        if wrong is not None:
            return TryResult("wrong", f"[{elapsed:.1f} s] {wrong}", elapsed)
    return result


def missing_fixture(p: Probe, fx: dict[str, Any]) -> str | None:
    for need in p.needs:
        have = fx["bad"].get(need[4:]) if need.startswith("bad:") else fx.get(need)
        if not have:
            return fx["skip"].get(need) or f"fixture {need} was not built"
    return None


# --------------------------------------------------------------------------- the child side


def _emit(outcome: str, detail: str) -> None:
    print(MARK + json.dumps({"outcome": outcome, "detail": _one_line(detail)}), flush=True)


def child_main(probe_id: str, workdir: str) -> None:
    fx = json.loads((Path(workdir) / "fixtures.json").read_text())
    try:
        detail = REGISTRY[probe_id].fn(fx, Path.cwd())
    except Wrong as err:
        _emit("wrong", str(err))
    except BaseException as err:  # noqa: BLE001 - classifying every exception is this harness's job
        errors = sys.modules.get("edgeseg.errors")
        if errors is not None and isinstance(err, errors.EdgesegError):
            _emit("edgeseg-error", f"{type(err).__name__}: {err}")
        else:
            where = err.__traceback__
            while where is not None and where.tb_next is not None:
                where = where.tb_next
            at = f" (at {Path(where.tb_frame.f_code.co_filename).name}:{where.tb_lineno})" if where else ""
            _emit("raw-exception", f"{type(err).__name__}: {err}{at}")
    else:
        _emit("ok", detail or "")


def child_load(path: str) -> None:
    """After an interrupt: the bundle at ``path`` must load and run."""
    try:
        detail = _load_and_run(path)
        import edgeseg

        graphs = sorted(edgeseg.Bundle.load(path).manifest.graphs)
        _emit("ok", f"the bundle loads ({'+'.join(graphs)}), {detail}")
    except BaseException as err:  # noqa: BLE001 - classified, as in child_main
        errors = sys.modules.get("edgeseg.errors")
        kind = "edgeseg-error" if errors is not None and isinstance(err, errors.EdgesegError) else "raw-exception"
        _emit(kind, f"the bundle does not load: {type(err).__name__}: {err}")


def child_setup(workdir: str) -> None:
    """Builds the fixtures that need torch, PIL or OpenCV; writes fixtures.json."""
    import inspect

    root = Path(workdir)
    fx: dict[str, Any] = {"workdir": workdir, "skip": {}, "bad": {}}

    def attempt(key: str, fn: Callable[[], Any]) -> None:
        try:
            value = fn()
        except Exception as err:  # noqa: BLE001 - a fixture that cannot be built is reported as skipped
            fx["skip"][key] = f"cannot build {key}: {type(err).__name__}: {_one_line(str(err), 200)}"
        else:
            if value is not None:
                fx[key] = value

    def frames() -> str:
        import numpy as np
        from PIL import Image

        folder = root / "frames"
        folder.mkdir()
        for i in range(12):
            Image.fromarray(np.asarray(_frame(100 + i))).save(folder / f"f{i:02d}.png")
        return str(folder)

    def bundle(classes: int, name: str) -> str:
        import edgeseg

        out = root / name
        edgeseg.build(tiny_module(num_classes=classes), out, input_size=INPUT_SIZE, num_classes=classes,
                      outputs=("mask", "probs", "logits"), target="cpu")
        return str(out)

    def bomb() -> str:
        from PIL import Image

        limit = Image.MAX_IMAGE_PIXELS
        if not limit:
            raise RuntimeError("PIL.Image.MAX_IMAGE_PIXELS is None: Pillow has no bomb guard here")
        side = int((2 * limit) ** 0.5) + 64  # over twice the limit: DecompressionBombError, not a warning
        folder = root / "bomb"
        folder.mkdir()
        for i, name in enumerate(("a_frame", "b_frame", "d_frame", "e_frame")):
            Image.fromarray(_frame(200 + i)).save(folder / f"{name}.png")
        Image.new("1", (side, side)).save(folder / "c_bomb.png")
        fx["bomb_side"] = side
        fx["bomb_bytes"] = (folder / "c_bomb.png").stat().st_size
        return str(folder)

    def video() -> str:
        import cv2
        import numpy as np

        path = root / "video.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
        if not writer.isOpened():
            raise RuntimeError("cv2.VideoWriter cannot write MJPG AVI here")
        for i in range(VIDEO_FRAMES):
            writer.write(np.asarray(_frame(300 + i, (64, 96))))
        writer.release()
        fx["video_frames"] = VIDEO_FRAMES
        return str(path)

    def truncated() -> str:
        import cv2

        if not fx.get("video"):
            raise RuntimeError(fx["skip"].get("video", "no video"))
        data = Path(fx["video"]).read_bytes()
        path = root / "truncated.avi"
        path.write_bytes(data[: int(len(data) * 0.45)])
        cap = cv2.VideoCapture(str(path))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        readable = 0
        while cap.read()[0]:
            readable += 1
        cap.release()
        if total != VIDEO_FRAMES or readable >= total:
            raise RuntimeError(f"this OpenCV reports {total} frames in the truncated AVI and reads {readable}")
        fx["truncated_frames"] = readable
        return str(path)

    def factory() -> str:
        source = inspect.getsource(tiny_module)
        (root / "hp_factory.py").write_text(
            '"""The --factory module of hostile_probes.py."""\n\n\n' + source
            + "\n\ndef make():  # type: ignore[no-untyped-def]\n    return tiny_module()\n"
        )
        return "hp_factory:make"

    attempt("frames", frames)
    attempt("tiny", lambda: bundle(NUM_CLASSES, "tiny.edgeseg"))
    attempt("tiny11", lambda: bundle(11, "tiny11.edgeseg"))
    attempt("bomb_dir", bomb)
    attempt("video", video)
    attempt("truncated", truncated)
    attempt("factory", factory)
    fx["proc"] = os.path.isdir("/proc") or None
    if not fx["proc"]:
        fx["skip"]["proc"] = "no /proc on this machine"
    (root / "fixtures.json").write_text(json.dumps(fx, indent=2))


# --------------------------------------------------------------------------- the parent side


def selected(p: Probe, only: list[str]) -> bool:
    if p.group == "selftest":  # only when asked for by name
        return any(o == "selftest" or p.id.startswith(o + "/") for o in only)
    return not only or any(p.group == o or p.id.startswith(o) for o in only)


def run_all(fx: dict[str, Any], probes: list[Probe], jobs: int, seed: int) -> list[ProbeReport]:
    reports = {p.id: ProbeReport(p) for p in probes}
    tasks: list[tuple[Probe, int]] = []
    for p in probes:
        reason = missing_fixture(p, fx)
        if reason is not None:
            reports[p.id].skipped = reason
        else:
            tasks.extend((p, i) for i in range(p.tries))
    results: dict[tuple[str, int], TryResult] = {}

    def one(task: tuple[Probe, int]) -> None:
        p, i = task
        rng = random.Random(f"{seed}:{p.id}:{i}")
        try:
            results[(p.id, i)] = run_try(p, fx, i, rng)
        except Exception as err:  # noqa: BLE001 - a harness failure is reported on its probe, the rest go on
            results[(p.id, i)] = TryResult("skipped", f"the harness failed: {type(err).__name__}: {err}", 0.0)
        r = results[(p.id, i)]
        mark = "" if r.outcome in p.expected else "  <-- differs"
        print(f"  {p.id} #{i + 1}: {r.outcome}{mark}", file=sys.stderr, flush=True)

    parallel = [t for t in tasks if not t[0].serial]
    serial = [t for t in tasks if t[0].serial]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, parallel))
    for task in serial:  # timing-sensitive: alone on the machine
        one(task)
    for (pid, _i), r in sorted(results.items(), key=lambda kv: kv[0][1]):
        reports[pid].results.append(r)
    for report in reports.values():
        if report.results and all(r.outcome == "skipped" for r in report.results):
            report.skipped = report.results[0].detail
            report.results = []
    return [reports[p.id] for p in probes]


def _counts_text(report: ProbeReport) -> str:
    counts = report.counts
    return " ".join(f"{o}={counts[o]}" for o in OUTCOMES if counts[o])


def print_table(reports: list[ProbeReport], out: Any = sys.stdout) -> None:
    rows = [("group", "probe", "tries", "outcomes", "expected", "")]
    for r in reports:
        verdict = "skipped" if r.skipped is not None else ("" if r.as_expected else "DIFFERS")
        rows.append((r.probe.group, r.probe.name, str(r.probe.tries), _counts_text(r),
                     "|".join(r.probe.expected), verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths).rstrip(), file=out)
    differ = [r for r in reports if not r.as_expected]
    skipped = [r for r in reports if r.skipped is not None]
    if differ:
        print("\nProbes whose outcome differs from the expected one:", file=out)
        for r in differ:
            print(f"- {r.probe.id} (expected {'|'.join(r.probe.expected)}): {r.probe.what}", file=out)
            seen: set[tuple[str, str]] = set()
            for t in r.results:
                key = (t.outcome, re.sub(r"\d+(\.\d+)?", "#", t.detail))
                if t.outcome not in r.probe.expected and key not in seen:
                    seen.add(key)
                    print(f"    {t.outcome}: {t.detail}", file=out)
    if skipped:
        print("\nSkipped:", file=out)
        for r in skipped:
            print(f"- {r.probe.id}: {r.skipped}", file=out)
    groups = sorted({r.probe.group for r in reports}, key=lambda g: GROUPS.index(g) if g in GROUPS else 99)
    print("\nSummary:", file=out)
    for g in groups:
        mine = [r for r in reports if r.probe.group == g]
        bad = sum(not r.as_expected for r in mine)
        skip = sum(r.skipped is not None for r in mine)
        print(f"  {g:<11} {len(mine):3d} probes, {sum(len(r.results) for r in mine):3d} tries, "
              f"{bad:3d} differ, {skip:2d} skipped", file=out)
    print(f"  {'all':<11} {len(reports):3d} probes, {sum(len(r.results) for r in reports):3d} tries, "
          f"{len(differ):3d} differ, {len(skipped):2d} skipped", file=out)


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.rstrip("\n")


def to_json(reports: list[ProbeReport], fx: dict[str, Any], elapsed: float, args: argparse.Namespace) -> dict[str, Any]:
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "meta": {
            "commit": _git("rev-parse", "HEAD"), "tree_modified": bool(dirty),
            "modified_files": [line[3:] for line in dirty.splitlines()],
            "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "jobs": args.jobs, "seed": args.seed, "only": args.only,
            "seconds": round(elapsed, 1), "fixture_skips": fx.get("skip", {}),
            "truncated_video": {"readable": fx.get("truncated_frames"), "container": fx.get("video_frames")},
            "bomb_png": {"side": fx.get("bomb_side"), "bytes": fx.get("bomb_bytes")},
        },
        "summary": {
            "probes": len(reports),
            "tries": sum(len(r.results) for r in reports),
            "differ": [r.probe.id for r in reports if not r.as_expected],
            "skipped": [r.probe.id for r in reports if r.skipped is not None],
        },
        "probes": [
            {
                "group": r.probe.group, "probe": r.probe.name, "what": r.probe.what, "kind": r.probe.kind,
                "expected": list(r.probe.expected), "tries": r.probe.tries, "outcomes": dict(r.counts),
                "as_expected": r.as_expected, "skipped": r.skipped,
                "results": [{"outcome": t.outcome, "detail": t.detail, "seconds": round(t.elapsed, 2)}
                            for t in r.results],
            }
            for r in reports
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON here ('-': stdout)")
    parser.add_argument("--only", metavar="GROUP[/PROBE][,...]", default="",
                        help=f"run only these groups or probes (groups: {', '.join(GROUPS)})")
    parser.add_argument("--jobs", type=int, default=2, help="probes run at once (timing probes run alone)")
    parser.add_argument("--seed", type=int, default=13, help="seed of the interrupt times")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print it")
    parser.add_argument("--list", action="store_true", help="list the probes and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-load", help=argparse.SUPPRESS)
    parser.add_argument("--child-setup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        child_main(args.child, args.workdir)
        return 0
    if args.child_load:
        child_load(args.child_load)
        return 0
    if args.child_setup:
        child_setup(args.workdir)
        return 0

    only = [o.strip() for o in args.only.split(",") if o.strip()]
    probes = [p for p in PROBES if selected(p, only)]
    if args.list or not probes:
        for p in PROBES:
            print(f"{p.id:<55} {'|'.join(p.expected):<22} x{p.tries}  {p.what}")
        if not probes:
            print(f"no probe matches --only {args.only!r}", file=sys.stderr)
            return 2
        return 0

    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="edgeseg-hostile-"))
    try:
        print(f"building fixtures in {workdir} ...", file=sys.stderr, flush=True)
        setup = _spawn([sys.executable, str(SCRIPT), "--child-setup", "--workdir", str(workdir)],
                       {"workdir": str(workdir)}, workdir, 600)
        manifest = workdir / "fixtures.json"
        if not manifest.is_file():
            print(f"the fixtures could not be built (exit {setup[0]}):\n{setup[2][-3000:]}", file=sys.stderr)
            return 2
        fx = json.loads(manifest.read_text())
        make_bad_bundles(fx)
        (workdir / "fixtures.json").write_text(json.dumps(fx, indent=2))
        print(f"fixtures ready in {time.perf_counter() - start:.0f} s; running {len(probes)} probes",
              file=sys.stderr, flush=True)
        reports = run_all(fx, probes, args.jobs, args.seed)
        elapsed = time.perf_counter() - start
        print(f"\nedgeseg hostile probes: {len(reports)} probes in {elapsed:.0f} s "
              f"(commit {_git('rev-parse', '--short', 'HEAD') or '?'}"
              f"{', modified tree' if _git('status', '--porcelain', '--untracked-files=no') else ''})\n")
        print_table(reports)
        if args.json:
            doc = json.dumps(to_json(reports, fx, elapsed, args), indent=2)
            if args.json == "-":
                print(doc)
            else:
                Path(args.json).write_text(doc + "\n")
        return 0 if all(r.as_expected for r in reports) else 1
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
