"""The bundle: the unit of deployment.

A bundle is a directory ``NAME.edgeseg/`` holding ``manifest.json`` and the
graphs it names. The manifest records the checksum and size of every file;
``Bundle.load`` verifies them, so a missing, truncated or altered file is an
error that names the file, never a silently wrong model.

Bundles are written atomically: everything goes into a temporary directory
beside the destination, which is renamed into place once complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgeseg.errors import BundleError, BundleExistsError
from edgeseg.manifest import (
    CRF_MODES,
    MANIFEST_NAME,
    OUTPUTS,
    PRECISIONS,
    SCHEMA_VERSION,
    FileRecord,
    InputSpec,
    Manifest,
)

log = logging.getLogger(__name__)

SUFFIX = ".edgeseg"


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
            if size != info.bytes:
                raise BundleError(
                    f"bundle {self.path}: file {name} has {size} bytes, the manifest says "
                    f"{info.bytes} (truncated or replaced?)"
                )
            digest = sha256_file(file)
            if digest != info.sha256:
                raise BundleError(
                    f"bundle {self.path}: file {name} does not match its checksum "
                    f"(sha256 {digest[:12]}..., manifest {info.sha256[:12]}...): "
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
        return f"Bundle({str(self.path)!r}, model={self.manifest.model.name!r})"


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
        records: dict[str, FileRecord] = {}
        for name, content in files.items():
            if "/" in name or name in (MANIFEST_NAME, "", ".", ".."):
                raise BundleError(f"bundle file name {name!r} is not allowed")
            target = tmp / name
            if isinstance(content, (bytes, bytearray)):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
            records[name] = FileRecord(sha256_file(target), target.stat().st_size)
        final = dataclasses.replace(manifest, files=records, schema_version=SCHEMA_VERSION)
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


__all__ = [
    "CRF_MODES",
    "MANIFEST_NAME",
    "OUTPUTS",
    "PRECISIONS",
    "SCHEMA_VERSION",
    "SUFFIX",
    "Bundle",
    "InputSpec",
    "Manifest",
    "bundle_path",
    "class_names",
    "default_palette",
    "sha256_file",
    "write_bundle",
]
