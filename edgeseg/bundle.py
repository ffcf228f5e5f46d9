"""The bundle: the unit of deployment.

A bundle is a directory ``NAME.edgeseg/`` holding ``manifest.json`` and the
graphs it names. The manifest records the checksum and size of every file;
``Bundle.load`` verifies them, so a missing, truncated or altered file is an
error that names the file, never a silently wrong model.

Bundles are written atomically: everything goes into a temporary directory
beside the destination, which is renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
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
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is kilobytes; more is not a manifest


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

    Attributes:
        path: the bundle directory.
        manifest: its parsed, checked manifest.
        manifest_sha256: the sha256 of the ``manifest.json`` bytes it was read from: a
            rewrite (``write_bundle(..., base=bundle)``) refuses to replace a bundle
            that changed since.
    """

    def __init__(self, path: Path, manifest: Manifest, manifest_sha256: str = "") -> None:
        self.path = path
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
        """Reads a bundle's manifest and, by default, verifies every file.

        A bundle left half-replaced by an interrupted rewrite (its previous
        version stranded beside it) is put back first. The read holds a
        shared lock on the bundle's folder, so a concurrent rewrite never
        swaps the files under it.

        Args:
            path: the bundle directory.
            verify: check size and sha256 of every file listed in the manifest,
                and that the folder holds nothing else.

        Raises:
            BundleError: the directory, manifest or a file is missing, malformed,
                not a regular file, unlisted or altered; the message names it.
        """
        root = Path(path)
        if not root.exists():
            with bundle_lock(root):
                _recover(root)
        with bundle_lock(root, shared=True):
            if not root.exists():
                raise BundleError(f"bundle {root} does not exist")
            if not root.is_dir():
                raise BundleError(f"bundle {root} is not a directory (a bundle is a NAME{SUFFIX}/ folder)")
            manifest_path = root / MANIFEST_NAME
            raw = _read_manifest(root, manifest_path)
            try:
                data = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise BundleError(f"{manifest_path} is not valid JSON: {err}") from err
            manifest = Manifest.from_json(data, where=str(manifest_path))
            bundle = cls(root, manifest, hashlib.sha256(raw).hexdigest())
            if verify:
                bundle.verify()
        return bundle

    def verify(self) -> None:
        """Checks that every listed file is a regular file of its recorded size and sha256,
        and that the folder holds no file the manifest does not list (a graph's external
        data, say, that would be read unchecked).

        Raises:
            BundleError: naming the first file that is missing, unlisted, truncated or altered.
        """
        listed = set(self.manifest.files)
        try:
            present = set(os.listdir(self.path))
        except OSError as err:
            raise BundleError(f"cannot list bundle {self.path}: {err.strerror or err}") from err
        unlisted = sorted(present - listed - {MANIFEST_NAME})
        if unlisted:
            raise BundleError(
                f"bundle {self.path} holds {len(unlisted)} file(s) its manifest does not list "
                f"({', '.join(unlisted[:5])}{', ...' if len(unlisted) > 5 else ''}): a graph could "
                "read them unchecked; remove them, or rebuild the bundle"
            )
        for name, info in self.manifest.files.items():
            file = self.path / name
            if name not in present:
                raise BundleError(f"bundle {self.path}: file {name} is missing")
            mode = file.lstat().st_mode
            if not stat.S_ISREG(mode):
                raise BundleError(
                    f"bundle {self.path}: {name} is not a regular file "
                    f"({'a symbolic link' if stat.S_ISLNK(mode) else 'a device, pipe or folder'}); "
                    "a bundle holds its files itself"
                )
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
    base: Bundle | None = None,
) -> Bundle:
    """Writes a bundle atomically.

    The files and the manifest (with checksums filled in) go to a temporary
    directory beside ``path``; then, holding an exclusive lock on the folder
    that contains the bundle, the new directory takes the old one's place in
    one atomic exchange (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two
    renames, and a previous version stranded by a signal between them is put
    back by the next load or write). So the path always names a complete
    bundle, concurrent rewrites are serialised, and readers never see a
    half-swapped one. The new folder's mode follows the umask.

    Args:
        path: destination directory (``.edgeseg`` is appended if missing).
        manifest: the manifest; its ``files`` entry is computed here.
        files: name -> content (bytes) or a path to copy.
        overwrite: replace an existing bundle.
        base: the loaded bundle this rewrite was made from: if the bundle at
            ``path`` changed since it was loaded (another process rewrote it),
            nothing is written, so neither rewrite is silently lost.

    Returns:
        The written bundle, loaded back and verified.

    Raises:
        BundleExistsError: ``path`` exists and ``overwrite`` is false.
        BundleError: the files do not match the manifest's graphs, the bundle
            changed since ``base`` was loaded, or writing failed (the message
            names the path and the reason).
    """
    out = bundle_path(path)
    if out.exists() and not overwrite:
        raise BundleExistsError(f"{out} already exists; pass overwrite=True (--force) to replace it")
    missing = [name for name in manifest.graphs.values() if name not in files]
    if missing:
        raise BundleError(f"bundle {out}: graph files {missing} were not given")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        os.chmod(tmp, _dir_mode())
    except OSError as err:
        raise BundleError(f"cannot write bundle {out}: {err.strerror or err}") from err
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
        with bundle_lock(out):
            _recover(out)
            if out.exists() and not overwrite:
                raise BundleExistsError(
                    f"{out} already exists; pass overwrite=True (--force) to replace it"
                )
            if base is not None:
                _check_unchanged(out, base)
            _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s", out)
    return Bundle.load(out)


def _check_unchanged(out: Path, base: Bundle) -> None:
    """BundleError unless the manifest at ``out`` is the one ``base`` was loaded from."""
    try:
        current = hashlib.sha256((out / MANIFEST_NAME).read_bytes()).hexdigest()
    except OSError:
        current = None
    if current != base.manifest_sha256:
        raise BundleError(
            f"bundle {out} was rewritten by another process since it was loaded (its manifest "
            "changed); nothing was written, so neither change is lost: run the command again"
        )


@contextlib.contextmanager
def bundle_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Holds a lock on the folder that contains bundle ``path`` (``flock`` on the folder
    itself, so no lock file is left behind): exclusive for rewrites, shared for reads.

    Where the folder cannot be locked (no ``fcntl``, or a folder that cannot be
    opened), the lock is skipped: such a folder cannot be rewritten concurrently
    by this process's code anyway.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not Linux/macOS
        yield
        return
    try:
        fd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _recover(out: Path) -> None:
    """Puts back a bundle whose rewrite was interrupted between its two renames.

    Called holding the exclusive lock: if ``out`` is missing and exactly one
    previous version (``.NAME.old-*``) stands beside it, it is renamed back.
    """
    if out.exists():
        return
    stranded = sorted(out.parent.glob(f".{out.name}.old-*")) if out.parent.is_dir() else []
    if len(stranded) == 1 and (stranded[0] / MANIFEST_NAME).is_file():
        os.rename(stranded[0], out)
        log.warning("restored %s from %s, left by an interrupted rewrite", out, stranded[0].name)


def _write_text_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _dir_mode() -> int:
    """The mode a new folder gets under this process's umask (mkdtemp's is always 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _replace_dir(src: Path, dst: Path) -> None:
    """Puts ``src`` at ``dst``: renamed when ``dst`` is absent, else exchanged atomically
    (the previous bundle, now at ``src``, removed); where exchange is not available, the
    previous bundle is renamed aside first and put back if the second rename fails.

    Raises:
        BundleError: a rename failed; the previous bundle is still at ``dst``.
    """
    try:
        if not dst.exists():
            os.rename(src, dst)
            return
        if _exchange(src, dst):
            shutil.rmtree(src, ignore_errors=True)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        old.rmdir()
        os.rename(dst, old)
        try:
            os.rename(src, dst)
        except BaseException:
            os.rename(old, dst)  # put the previous bundle back
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise BundleError(f"cannot replace bundle {dst}: {err.strerror or err}") from err


def _read_manifest(root: Path, path: Path) -> bytes:
    """The manifest's bytes; it must be a regular file of sane size (not a pipe, a device,
    or a link to one, which would hang or exhaust memory)."""
    try:
        info = path.lstat()
    except FileNotFoundError as err:
        raise BundleError(f"bundle {root} has no {MANIFEST_NAME}") from err
    except OSError as err:
        raise BundleError(f"cannot read {path}: {err.strerror or err}") from err
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{path} is not a regular file (a link, pipe or device); a bundle holds its manifest itself")
    if info.st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} has {info.st_size} bytes; a manifest has at most {MAX_MANIFEST_BYTES}")
    try:
        return path.read_bytes()
    except OSError as err:
        raise BundleError(f"cannot read {path}: {err.strerror or err}") from err


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
