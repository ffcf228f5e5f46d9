#!/usr/bin/env python3
"""Type-check edgeseg's TensorRT code with mypy against ``tensorrt-stubs``.

TensorRT cannot be installed without a GPU, so the code that calls it is
checked against ``tensorrt-stubs`` (typed signatures of TensorRT 10.13's
Python API), never installed into site-packages (a ``tensorrt`` package there
would shadow the real one for other tools). Instead this script:

1. downloads the stubs wheel (``pip download --no-deps``), unpacks its
   ``tensorrt/`` and ``tensorrt_bindings/`` into ``.typecheck/stubs/`` and
   fixes what keeps mypy from reading them (see ``TENSORRT_NOTES.md``):
   parameters called ``in``, ``add_scale_nd``'s ``channel_axis`` without a
   default after defaulted ones, the ``tensorrt_libs`` import. Each fix must
   apply, so a new stubs release cannot silently break the check. The built
   folder is reused while its marker names the same stubs and fixes;
2. runs ``mypy --strict`` (``tools/mypy-tensorrt.ini``) with that folder on
   ``MYPYPATH`` over the given files, by default every Python file of the
   repository (outside ``tests/``) that imports tensorrt.

The stubs describe 10.13: names that TensorRT 11 removed (``BuilderFlag.INT8``)
pass here and must be guarded at run time.

Exit status: 0 no errors; 1 mypy found errors (its output is printed);
2 bad usage, no files or mypy missing; 3 the stubs could not be downloaded
(no network or index: callers may skip); 4 the stubs were downloaded but a
fix did not apply or they do not parse (a new stubs release: update FIXES).

Usage::

    python tools/typecheck_tensorrt.py [FILE ...] [--cache-dir DIR] [--rebuild]
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tools" / "mypy-tensorrt.ini"
STUBS_REQUIREMENT = "tensorrt-stubs==10.13.*"
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")
MARKER = ".edgeseg-stubs.json"
FIXES_VERSION = 1  # bump when FIXES change, so that built stubs are rebuilt

EXIT_OK = 0
EXIT_TYPE_ERRORS = 1
EXIT_USAGE = 2
EXIT_STUBS_UNAVAILABLE = 3
EXIT_STUBS_BROKEN = 4

# a Python file that imports tensorrt (or a submodule), not tensorrt_cache & co
IMPORTS_TENSORRT = re.compile(
    r"^\s*(?:import\s+tensorrt\b(?!_)|from\s+tensorrt(?:\.\w+)*\s+import\b)", re.MULTILINE
)
SKIP_DIRS = {"tests", "build", "dist", "node_modules", "__pycache__", "site-packages"}


class StubsUnavailable(Exception):
    """The stubs wheel could not be downloaded."""


class StubsBroken(Exception):
    """The stubs were downloaded but could not be fixed into something mypy reads."""


@dataclass(frozen=True)
class Fix:
    """One textual fix of a stub file; ``min_count`` matches must be replaced."""

    path: str
    description: str
    pattern: re.Pattern[str]
    replacement: str | Callable[[re.Match[str]], str]
    min_count: int = 1
    leftover: re.Pattern[str] | None = None  # must not match after the fix


FIXES = (
    Fix(
        path="tensorrt_bindings/tensorrt.pyi",
        description="rename parameters called `in` (a keyword) to `in_`",
        pattern=re.compile(r"([(,] *)in: "),
        replacement=r"\1in_: ",
        leftover=re.compile(r"[(,] *in: "),
    ),
    Fix(
        path="tensorrt_bindings/tensorrt.pyi",
        description="give add_scale_nd's channel_axis a default (it follows defaulted ones)",
        pattern=re.compile(r"(def add_scale_nd\([^)]*\bchannel_axis: int)(?! = )"),
        replacement=r"\1 = ...",
        leftover=re.compile(r"def add_scale_nd\([^)]*\bchannel_axis: int\)"),
    ),
    Fix(
        path="tensorrt/__init__.pyi",
        description="drop the import of tensorrt_libs (not part of the stubs)",
        pattern=re.compile(r"^import tensorrt_libs\b.*\n", re.MULTILINE),
        replacement="",
        leftover=re.compile(r"^import tensorrt_libs\b", re.MULTILINE),
    ),
    Fix(  # the same import in the bindings' __init__; absent in some releases
        path="tensorrt_bindings/__init__.pyi",
        description="drop the import of tensorrt_libs from tensorrt_bindings",
        pattern=re.compile(r"^import tensorrt_libs\b.*\n", re.MULTILINE),
        replacement="",
        min_count=0,
        leftover=re.compile(r"^import tensorrt_libs\b", re.MULTILINE),
    ),
)


def _say(message: str) -> None:
    print(f"typecheck_tensorrt: {message}", file=sys.stderr, flush=True)


def apply_fixes(root: Path) -> list[str]:
    """Apply `FIXES` to the stub packages under ``root``; returns a line per fix.

    Raises:
        StubsBroken: A file is missing, a fix matched too rarely, a leftover
            remains, or a stub file does not parse afterwards.
    """
    report = []
    for fix in FIXES:
        path = root / fix.path
        if not path.is_file():
            raise StubsBroken(f"{fix.path} is missing from the stubs (fix: {fix.description})")
        text = path.read_text(encoding="utf-8")
        new, count = fix.pattern.subn(fix.replacement, text)
        if count < fix.min_count:
            raise StubsBroken(
                f"fix not applied: {fix.description}: pattern {fix.pattern.pattern!r} found "
                f"{count} time(s) in {fix.path}, expected at least {fix.min_count}"
            )
        if fix.leftover is not None and fix.leftover.search(new):
            raise StubsBroken(
                f"fix incomplete: {fix.description}: {fix.leftover.pattern!r} still matches "
                f"in {fix.path}"
            )
        path.write_text(new, encoding="utf-8")
        report.append(f"{fix.path}: {fix.description} ({count}x)")
    for package in STUB_PACKAGES:
        for stub in sorted((root / package).rglob("*.pyi")):
            try:
                ast.parse(stub.read_text(encoding="utf-8"), filename=str(stub))
            except SyntaxError as err:
                raise StubsBroken(
                    f"{stub.relative_to(root)} does not parse after the fixes: {err}"
                ) from err
    return report


def _download_wheel(requirement: str, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", requirement, "-d", str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise StubsUnavailable(f"`{' '.join(cmd)}` failed: {err}") from err
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise StubsUnavailable(
            f"could not download {requirement} (pip exit {proc.returncode}): " + " | ".join(tail)
        )
    return wheels[0]


def _read_marker(stubs: Path) -> dict[str, object] | None:
    try:
        data = json.loads((stubs / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _marker_ok(stubs: Path, requirement: str) -> bool:
    marker = _read_marker(stubs)
    return (
        marker is not None
        and marker.get("requirement") == requirement
        and marker.get("fixes") == FIXES_VERSION
        and all((stubs / p / "__init__.pyi").is_file() for p in STUB_PACKAGES)
    )


def build_stubs(cache_dir: Path, requirement: str = STUBS_REQUIREMENT, *,
                rebuild: bool = False) -> Path:
    """The fixed stubs folder ``cache_dir/stubs``, built unless a matching one exists.

    Raises:
        StubsUnavailable: The wheel could not be downloaded.
        StubsBroken: The wheel lacks the packages or a fix did not apply.
    """
    stubs = cache_dir / "stubs"
    if not rebuild and _marker_ok(stubs, requirement):
        return stubs
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache_dir) as tmp_name:
        tmp = Path(tmp_name)
        _say(f"downloading {requirement} into {cache_dir} (not installing it)")
        wheel = _download_wheel(requirement, tmp / "wheel")
        staged = tmp / "stubs"
        staged.mkdir()
        with zipfile.ZipFile(wheel) as zf:
            for package in STUB_PACKAGES:
                members = [m for m in zf.namelist() if m.startswith(f"{package}/")]
                if not members:
                    raise StubsBroken(f"{wheel.name} has no {package}/ folder")
                for member in members:
                    if ".." in Path(member).parts or member.startswith("/"):
                        raise StubsBroken(f"{wheel.name} holds an unsafe path {member!r}")
                zf.extractall(staged, members)
        for line in apply_fixes(staged):
            _say(f"fixed {line}")
        (staged / MARKER).write_text(
            json.dumps({"requirement": requirement, "wheel": wheel.name, "fixes": FIXES_VERSION},
                       indent=1) + "\n",
            encoding="utf-8",
        )
        old = tmp / "old-stubs"
        if stubs.exists():
            os.replace(stubs, old)
        try:
            os.replace(staged, stubs)
        except OSError:
            if _marker_ok(stubs, requirement):  # another run built it meanwhile
                return stubs
            raise
    return stubs


def _python_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")
            and not (Path(dirpath, d) / "pyvenv.cfg").exists()
        )
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath, name)


def find_tensorrt_files(root: Path = REPO) -> list[Path]:
    """Python files under ``root`` (not tests, hidden or build folders) that import tensorrt."""
    found = []
    for path in _python_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if IMPORTS_TENSORRT.search(text):
            found.append(path)
    return found


def run_mypy(files: Sequence[Path], stubs: Path, cache_dir: Path) -> int:
    """Run mypy on ``files`` with the stubs; prints its output, returns its exit status."""
    env = dict(os.environ)
    # the stubs first; then the repository, so that scratch files elsewhere find edgeseg
    env["MYPYPATH"] = os.pathsep.join([str(stubs), str(REPO)])
    cmd = [
        sys.executable, "-m", "mypy", "--config-file", str(CONFIG),
        "--cache-dir", str(cache_dir / "mypy_cache"), *map(str, files),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    sys.stdout.flush()
    return proc.returncode


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("files", nargs="*", type=Path,
                        help="files to check (default: every file of the repo importing tensorrt)")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".typecheck",
                        help="where the stubs and mypy's cache live (default: .typecheck/)")
    parser.add_argument("--stubs", default=STUBS_REQUIREMENT,
                        help=f"the stubs requirement to download (default: {STUBS_REQUIREMENT})")
    parser.add_argument("--rebuild", action="store_true", help="download and fix the stubs again")
    args = parser.parse_args(argv)

    if importlib.util.find_spec("mypy") is None:
        _say("mypy is not installed: pip install mypy (or pip install -e '.[test]')")
        return EXIT_USAGE
    files = [f.resolve() for f in args.files] if args.files else find_tensorrt_files()
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        _say(f"no such file(s): {', '.join(missing)}")
        return EXIT_USAGE
    if not files:
        _say("no Python file imports tensorrt; nothing to check")
        return EXIT_OK

    cache_dir = args.cache_dir.resolve()
    try:
        stubs = build_stubs(cache_dir, args.stubs, rebuild=args.rebuild)
    except StubsUnavailable as err:
        _say(f"stubs unavailable: {err}")
        return EXIT_STUBS_UNAVAILABLE
    except StubsBroken as err:
        _say(f"stubs unusable: {err}")
        return EXIT_STUBS_BROKEN

    shown = ", ".join(os.path.relpath(f, REPO) if f.is_relative_to(REPO) else str(f) for f in files)
    _say(f"mypy --strict against {args.stubs} on {shown}")
    status = run_mypy(files, stubs, cache_dir)
    if status == 0:
        return EXIT_OK
    if status == 1:
        _say("type errors (above)")
        return EXIT_TYPE_ERRORS
    _say(f"mypy failed with exit status {status} (above)")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
