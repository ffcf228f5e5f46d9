"""The bundle: the unit of deployment.

A bundle is a directory ``NAME.edgeseg/`` holding ``manifest.json`` and the
graphs it names. The manifest records the checksum and size of every file;
``Bundle.load`` verifies them, so a missing, truncated or altered file is an
error that names the file, never a silently wrong model.

Bundles are written atomically: everything goes into a temporary directory
beside the destination, which is renamed into place once complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.errors import BundleError, BundleExistsError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SUFFIX = ".edgeseg"
PRECISIONS = ("fp32", "fp16", "int8")
OUTPUTS = ("mask", "probs", "logits")
CRF_MODES = ("separate", "fused")

_REQUIRED_KEYS = (
    "schema_version",
    "model",
    "classes",
    "palette",
    "input",
    "precision",
    "opset",
    "files",
    "versions",
    "parity",
)


@dataclass(frozen=True)
class InputSpec:
    """What the graph's ``image`` input expects.

    Attributes:
        size: (height, width) the graph was exported for (the nominal size of a
            dynamic graph).
        channels: 3 for RGB, 1 for grayscale.
        mean: per-channel mean on the 0..1 scale, applied inside the graph.
        std: per-channel standard deviation on the 0..1 scale.
        dynamic: height and width are symbolic in the graph.
        multiple_of: a dynamic graph accepts sides that are multiples of this.
        layout: always "NHWC"; dtype always "uint8".
    """

    size: tuple[int, int]
    channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    dynamic: bool = False
    multiple_of: int = 1
    layout: str = "NHWC"
    dtype: str = "uint8"

    @property
    def color(self) -> str:
        return "RGB" if self.channels == 3 else "GRAY"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": "image",
            "size": list(self.size),
            "channels": self.channels,
            "color": self.color,
            "layout": self.layout,
            "dtype": self.dtype,
            "mean": list(self.mean),
            "std": list(self.std),
            "dynamic": self.dynamic,
            "multiple_of": self.multiple_of,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputSpec:
        try:
            size = tuple(int(v) for v in data["size"])
            if len(size) != 2:
                raise ValueError(f"size must be [height, width], got {data['size']!r}")
            return cls(
                size=(size[0], size[1]),
                channels=int(data["channels"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                dynamic=bool(data.get("dynamic", False)),
                multiple_of=int(data.get("multiple_of", 1)),
                layout=str(data.get("layout", "NHWC")),
                dtype=str(data.get("dtype", "uint8")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"manifest 'input' is malformed: {err}") from err


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a bundle."""

    model: dict[str, Any]
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    input: InputSpec
    precision: str
    opset: int
    outputs: tuple[str, ...]
    graphs: dict[str, str]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    crf: dict[str, Any] | None = None
    # per lower-precision graph ("fp16", "int8"): its parity with the float graph and how it was made
    precisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # TensorRT engines built from the graphs: one dict per engine (file, inspector, gpu, sm,
    # trt_version, precision, profile, dla_core, built_at, ...); see converters.tensorrt.add_engine
    engines: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "model": self.model,
            "classes": list(self.classes),
            "palette": [list(c) for c in self.palette],
            "input": self.input.to_json(),
            "precision": self.precision,
            "opset": self.opset,
            "outputs": list(self.outputs),
            "graphs": dict(self.graphs),
            "files": self.files,
            "versions": self.versions,
            "parity": self.parity,
            "crf": self.crf,
            "precisions": self.precisions,
            "engines": [dict(e) for e in self.engines],
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str = MANIFEST_NAME) -> Manifest:
        if not isinstance(data, dict):
            raise BundleError(f"{where}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in _REQUIRED_KEYS if k not in data]
        if missing:
            raise BundleError(f"{where}: missing keys {', '.join(missing)}")
        version = data["schema_version"]
        if not isinstance(version, int) or version < 1:
            raise BundleError(f"{where}: schema_version must be a positive integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise BundleError(
                f"{where}: schema_version {version} is newer than this edgeseg reads "
                f"({SCHEMA_VERSION}); upgrade edgeseg"
            )
        try:
            classes = tuple(str(c) for c in data["classes"])
            palette = tuple(_color(c) for c in data["palette"])
            files = {str(k): dict(v) for k, v in data["files"].items()}
            graphs = {str(k): str(v) for k, v in data.get("graphs", {}).items()}
            manifest = cls(
                schema_version=version,
                model=dict(data["model"]),
                classes=classes,
                palette=palette,
                input=InputSpec.from_json(data["input"]),
                precision=str(data["precision"]),
                opset=int(data["opset"]),
                outputs=tuple(str(o) for o in data.get("outputs", ("mask",))),
                graphs=graphs,
                files=files,
                versions={str(k): str(v) for k, v in data["versions"].items()},
                parity=dict(data["parity"]),
                crf=dict(data["crf"]) if data.get("crf") else None,
                precisions={str(k): dict(v) for k, v in (data.get("precisions") or {}).items()},
                engines=[dict(e) for e in (data.get("engines") or [])],
            )
        except BundleError:
            raise
        except (AttributeError, TypeError, ValueError) as err:
            raise BundleError(f"{where}: malformed value: {err}") from err
        manifest.validate(where=where)
        return manifest

    def validate(self, *, where: str = MANIFEST_NAME) -> None:
        """Checks the manifest's internal consistency.

        Raises:
            BundleError: naming the first inconsistency found.
        """
        if not self.classes:
            raise BundleError(f"{where}: 'classes' is empty")
        if len(self.palette) != len(self.classes):
            raise BundleError(
                f"{where}: palette has {len(self.palette)} colours for {len(self.classes)} classes"
            )
        if self.precision not in PRECISIONS:
            raise BundleError(
                f"{where}: precision {self.precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        if self.precision not in self.graphs:
            raise BundleError(f"{where}: no graph for the bundle's precision {self.precision!r}")
        for precision, name in self.graphs.items():
            if name not in self.files:
                raise BundleError(
                    f"{where}: graph {name!r} ({precision}) is not listed under 'files'"
                )
        for precision in self.graphs:
            if precision not in PRECISIONS:
                raise BundleError(f"{where}: graph precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        for precision in self.precisions:
            if precision not in self.graphs:
                raise BundleError(f"{where}: 'precisions' describes {precision!r}, which has no graph")
        engine_files: set[str] = set()
        for engine in self.engines:
            plan = engine.get("file")
            if plan not in self.files:
                raise BundleError(f"{where}: engine {plan!r} is not listed under 'files'")
            if plan in engine_files:
                raise BundleError(f"{where}: engine {plan!r} is listed twice under 'engines'")
            engine_files.add(str(plan))
            inspector = engine.get("inspector")
            if inspector is not None and inspector not in self.files:
                raise BundleError(
                    f"{where}: engine {plan!r}: its layer information {inspector!r} is not listed "
                    "under 'files'"
                )
            if engine.get("precision") not in PRECISIONS:
                raise BundleError(
                    f"{where}: engine {plan!r}: precision {engine.get('precision')!r} is not one of "
                    f"{', '.join(PRECISIONS)}"
                )
        unknown = [o for o in self.outputs if o not in OUTPUTS]
        if "mask" not in self.outputs or unknown:
            raise BundleError(
                f"{where}: outputs {list(self.outputs)} must include 'mask' and only "
                f"{', '.join(OUTPUTS)}"
            )
        if self.crf is not None:
            mode = self.crf.get("mode")
            if mode not in CRF_MODES:
                raise BundleError(f"{where}: crf mode {mode!r} is not one of {', '.join(CRF_MODES)}")
            if mode == "separate" and self.crf.get("graph") not in self.files:
                raise BundleError(f"{where}: crf graph {self.crf.get('graph')!r} is not listed under 'files'")
            if mode == "separate" and "logits" not in self.outputs:
                raise BundleError(f"{where}: a separate crf needs the model's 'logits' output")
        for name in self.files:
            if Path(name).is_absolute() or ".." in Path(name).parts or "/" in name:
                raise BundleError(f"{where}: file name {name!r} is not a plain name in the bundle")


def _color(value: Any) -> tuple[int, int, int]:
    rgb = tuple(int(v) for v in value)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"palette entry {value!r} is not an [r, g, b] triple of 0..255")
    return (rgb[0], rgb[1], rgb[2])


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map: distinct, stable colours for ``n`` classes."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Bundle:
    """A loaded, verified bundle.

    Use :meth:`load`; :func:`write_bundle` creates one.
    """

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
        """Reads a bundle's manifest and, by default, verifies every file.

        Args:
            path: the bundle directory.
            verify: check size and sha256 of every file listed in the manifest.

        Raises:
            BundleError: the directory, manifest or a file is missing, malformed
                or altered; the message names it.
        """
        root = Path(path)
        if not root.exists():
            raise BundleError(f"bundle {root} does not exist")
        if not root.is_dir():
            raise BundleError(f"bundle {root} is not a directory (a bundle is a NAME{SUFFIX}/ folder)")
        manifest_path = root / MANIFEST_NAME
        try:
            text = manifest_path.read_text(encoding="utf-8")
        except FileNotFoundError as err:
            raise BundleError(f"bundle {root} has no {MANIFEST_NAME}") from err
        except (OSError, UnicodeDecodeError) as err:
            raise BundleError(f"cannot read {manifest_path}: {err}") from err
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise BundleError(f"{manifest_path} is not valid JSON: {err}") from err
        manifest = Manifest.from_json(data, where=str(manifest_path))
        bundle = cls(root, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Checks that every listed file exists with its recorded size and sha256.

        Raises:
            BundleError: naming the first file that is missing, truncated or altered.
        """
        for name, info in self.manifest.files.items():
            file = self.path / name
            if not file.is_file():
                raise BundleError(f"bundle {self.path}: file {name} is missing")
            size = file.stat().st_size
            expected_size = info.get("bytes")
            if expected_size is not None and size != int(expected_size):
                raise BundleError(
                    f"bundle {self.path}: file {name} has {size} bytes, the manifest says "
                    f"{expected_size} (truncated or replaced?)"
                )
            digest = sha256_file(file)
            if digest != info.get("sha256"):
                raise BundleError(
                    f"bundle {self.path}: file {name} does not match its checksum "
                    f"(sha256 {digest[:12]}..., manifest {str(info.get('sha256'))[:12]}...): "
                    "it was altered after the build"
                )

    def file(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise BundleError(f"bundle {self.path} has no file {name!r}")
        return self.path / name

    def graph(self, precision: str | None = None) -> Path:
        """The ONNX graph of a precision (default: the bundle's own)."""
        precision = precision or self.manifest.precision
        name = self.manifest.graphs.get(precision)
        if name is None:
            raise BundleError(
                f"bundle {self.path} has no {precision} graph; it has "
                f"{', '.join(sorted(self.manifest.graphs))}"
            )
        return self.file(name)

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, model={self.manifest.model.get('name')!r})"


def bundle_path(path: str | os.PathLike[str]) -> Path:
    """The bundle directory for ``path``, with the ``.edgeseg`` suffix added if absent."""
    out = Path(path)
    if out.suffix != SUFFIX:
        out = out.with_name(out.name + SUFFIX)
    return out


def write_bundle(
    path: str | os.PathLike[str],
    manifest: Manifest,
    files: Mapping[str, bytes | Path],
    *,
    overwrite: bool = False,
) -> Bundle:
    """Writes a bundle atomically.

    The files and the manifest (with checksums filled in) go to a temporary
    directory beside ``path``, which is then renamed into place. An existing
    bundle is only replaced with ``overwrite=True``, and then only after the new
    one is complete.

    Args:
        path: destination directory (``.edgeseg`` is appended if missing).
        manifest: the manifest; its ``files`` entry is computed here.
        files: name -> content (bytes) or a path to copy.
        overwrite: replace an existing bundle.

    Returns:
        The written bundle, loaded back and verified.

    Raises:
        BundleExistsError: ``path`` exists and ``overwrite`` is false.
        BundleError: the files do not match the manifest's graphs, or writing failed.
    """
    out = bundle_path(path)
    if out.exists() and not overwrite:
        raise BundleExistsError(f"{out} already exists; pass overwrite=True (--force) to replace it")
    missing = [name for name in manifest.graphs.values() if name not in files]
    if missing:
        raise BundleError(f"bundle {out}: graph files {missing} were not given")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        records: dict[str, dict[str, Any]] = {}
        for name, content in files.items():
            if "/" in name or name in (MANIFEST_NAME, "", ".", ".."):
                raise BundleError(f"bundle file name {name!r} is not allowed")
            target = tmp / name
            if isinstance(content, (bytes, bytearray)):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
            records[name] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
        final = Manifest(**{**manifest.__dict__, "files": records})
        final.validate(where=f"{out}/{MANIFEST_NAME}")
        _write_text_synced(tmp / MANIFEST_NAME, json.dumps(final.to_json(), indent=2) + "\n")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s", out)
    return Bundle.load(out)


def _write_text_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _replace_dir(src: Path, dst: Path) -> None:
    """Renames ``src`` to ``dst``; an existing ``dst`` is moved aside first and removed after."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    old.rmdir()
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except OSError:
        os.replace(old, dst)  # put the previous bundle back
        raise
    shutil.rmtree(old, ignore_errors=True)


def class_names(classes: Sequence[str] | None, num_classes: int | None) -> list[str]:
    """Resolves class names from either names or a count."""
    from edgeseg.errors import ConfigError

    if classes is not None:
        names = [str(c) for c in classes]
        if not names:
            raise ConfigError("classes is empty")
        if len(set(names)) != len(names):
            raise ConfigError(f"classes has duplicate names: {names}")
        if num_classes is not None and num_classes != len(names):
            raise ConfigError(f"num_classes={num_classes} but {len(names)} class names were given")
        return names
    if num_classes is None:
        raise ConfigError("give classes=[names] or num_classes=N")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return [f"class_{i}" for i in range(num_classes)]
