"""The device acceptance run: the gpu suite and the kernel check, one report per claim.

Everything edgeseg says about GPUs was written and type-checked without one.
:data:`CLAIMS` lists those statements, each with the tests that answer it.
:func:`run_selftest` runs, on the machine it is called on,

1. the DCNv2 kernel check (:mod:`converters.plugins.kernel_check`, CUDA and
   torch but no TensorRT), in a subprocess, and
2. the gpu suite, ``pytest -m gpu tests/`` in a subprocess with a junit XML
   report (``record_property`` figures land there),

and writes one report, ``selftest.json`` and ``selftest.md``, in which every
claim is ``verified`` (all its tests ran and passed), ``failed`` (naming each
failing test and its message) or ``not run`` (with the reason: the skip
reasons, "no NVIDIA GPU", "no test collected"). A claim none of whose tests
was collected is never verified. The report also names the device, the
versions (TensorRT, CUDA, torch, onnxruntime, ...), the date and every figure
the tests recorded; nothing in it is produced anywhere but by the runs.

Without an NVIDIA GPU (no driver, or no device) the run stops after the probe
and reports every claim ``not run`` ("no NVIDIA GPU: ..." and the probe's words) within a
second.

This is build-time code (it runs pytest and torch in subprocesses); the CLI
(``edgeseg selftest --device``) reaches it only through ``edgeseg/cli.py``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from edgeseg.errors import BackendError
from edgeseg.progress import Say, say_or_log

__all__ = [
    "CLAIMS",
    "Claim",
    "ClaimResult",
    "SelftestReport",
    "TestOutcome",
    "TestSelector",
    "judge_claims",
    "parse_junit",
    "run_selftest",
    "write_report",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TESTS_DIR = REPO / "tests"
GPU_TESTS = "tests/converters/test_tensorrt_gpu.py"
KERNEL_CHECK_TIMEOUT_S = 600.0
REPORT_JSON = "selftest.json"
REPORT_MD = "selftest.md"
JUNIT_XML = "gpu-suite.xml"
SUITE_LOG = "gpu-suite.log"
KERNEL_JSON = "kernel-check.json"
KERNEL_LOG = "kernel-check.log"
_MESSAGE_CHARS = 600
_TAIL_LINES = 25

Status = Literal["verified", "failed", "not run"]
Outcome = Literal["passed", "failed", "error", "skipped"]


# -- the claims ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestSelector:
    """The gpu tests of one file whose name matches a pattern.

    Attributes:
        file: the test file, relative to the test run's root (``tests/...py``).
        name: an ``fnmatch`` pattern on the test's name without its parameters
            (``test_x`` of ``test_x[fp16]``); ``*``: every gpu test of the file.
    """

    __test__ = False  # not a pytest class

    file: str
    name: str = "*"

    @property
    def module(self) -> str:
        """``tests.converters.test_tensorrt_gpu`` for ``tests/converters/test_tensorrt_gpu.py``."""
        return self.file.removesuffix(".py").replace("/", ".")

    def matches(self, test: TestOutcome) -> bool:
        if test.collection_error:  # a file that failed to import answers all of its patterns
            return test.name == self.module
        if test.classname != self.module and not test.classname.startswith(self.module + "."):
            return False
        return fnmatch.fnmatchcase(test.function, self.name)

    def describe(self) -> str:
        return f"{self.file}::{self.name}"


@dataclass(frozen=True)
class Claim:
    """A statement about the GPU path and what answers it.

    Attributes:
        id: a short stable name.
        sentence: what is claimed, as the README would say it.
        tests: the gpu tests that answer it (all must pass for ``verified``).
        kernel_check: answered by the DCNv2 kernel check instead of pytest.
    """

    id: str
    sentence: str
    tests: tuple[TestSelector, ...] = ()
    kernel_check: bool = False

    def describe_tests(self) -> str:
        if self.kernel_check:
            return "python -m converters.plugins.kernel_check"
        return ", ".join(s.describe() for s in self.tests) + " (marked gpu)"


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "zoo-engines",
        "Every zoo model builds TensorRT engines at FP32, FP16 and INT8 whose masks agree with "
        "ONNX Runtime and PyTorch, and whose logits agree with ONNX Runtime, within the "
        "per-precision thresholds.",
        (TestSelector(GPU_TESTS, "test_zoo_engine_matches_onnxruntime_and_pytorch"),),
    ),
    Claim(
        "deform-plugin",
        "edgeseg's EdgesegDeformConv plugin gives the same results as TensorRT's native "
        "DeformConv (and ONNX Runtime) at FP32 and FP16 on the deformable zoo models.",
        (TestSelector(GPU_TESTS, "test_plugin_matches_native_deform_conv"),),
    ),
    Claim(
        "crf-engine",
        "With the TensorRT backend a separate CRF runs as its own engine, logits staying on the "
        "GPU, and matches the CRF graph in ONNX Runtime.",
        (TestSelector("tests/runtime/test_crf_engine.py"),),
    ),
    Claim(
        "cuda-graphs",
        "Replaying a captured CUDA graph gives the same masks and logits as launching the "
        "engine directly.",
        (TestSelector(GPU_TESTS, "test_cuda_graph_gives_the_same_results"),),
    ),
    Claim(
        "runtime-overhead",
        "The runtime adds at most 2 ms per frame (median) over the bare engine: Segmenter's "
        "infer stage against the same engine's H2D + execute_async_v3 + D2H timed with CUDA "
        "events, trtexec-style (OVERHEAD_LIMIT_MS in the test); the medians are recorded.",
        (TestSelector(GPU_TESTS, "test_runtime_overhead_over_the_bare_engine"),),
    ),
    Claim(
        "thousand-frames",
        "1,000 frames through a TensorRT Segmenter grow neither GPU memory nor host RSS.",
        (TestSelector(GPU_TESTS, "test_thousand_frames_without_memory_growth"),),
    ),
    Claim(
        "dcn-kernels",
        "The DCNv2 CUDA kernels (dcn_kernels.cu) match torchvision.ops.deform_conv2d on the GPU "
        "at FP32 and FP16: shapes, groups, offset groups, stride/pad/dilation, with and without "
        "mask, offsets sampling outside the image.",
        kernel_check=True,
    ),
)
"""Every "unverified on GPU" statement and the tests that answer it."""


# -- test outcomes from a junit XML ----------------------------------------------------------


@dataclass(frozen=True)
class TestOutcome:
    """One ``<testcase>`` of pytest's junit XML.

    Attributes:
        classname: ``tests.converters.test_x`` (``...test_x.TestClass`` for methods).
        name: ``test_y[params]``; for a file that failed to import, its module name.
        outcome: ``passed``, ``failed`` (assertion), ``error`` (set-up, tear-down or
            collection) or ``skipped`` (xfail included).
        message: the failure, error or skip message.
        seconds: the test's duration.
        properties: what the test recorded with ``record_property``.
        collection_error: the file could not be collected.
    """

    __test__ = False  # not a pytest class

    classname: str
    name: str
    outcome: Outcome
    message: str = ""
    seconds: float = 0.0
    properties: tuple[tuple[str, str], ...] = ()
    collection_error: bool = False

    @property
    def module(self) -> str:
        if self.collection_error:
            return self.name
        parts = self.classname.split(".")
        while len(parts) > 1 and parts[-1].startswith("Test"):
            parts.pop()  # a test class (pytest's python_classes, Test*) is not part of the module
        return ".".join(parts)

    @property
    def function(self) -> str:
        return self.name.split("[", 1)[0]

    @property
    def nodeid(self) -> str:
        if self.collection_error:
            return self.name.replace(".", "/") + ".py"
        path = self.module.replace(".", "/") + ".py"
        classes = self.classname[len(self.module) :].strip(".")
        return "::".join(p for p in (path, *classes.split("."), self.name) if p)

    def figures(self) -> dict[str, Any]:
        return {name: _number(value) for name, value in self.properties}

    def to_json(self) -> dict[str, Any]:
        return {
            "test": self.nodeid,
            "outcome": self.outcome,
            "message": self.message,
            "seconds": self.seconds,
            "figures": self.figures(),
        }


def _number(value: str) -> Any:
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value else number


def parse_junit(source: str | os.PathLike[str]) -> list[TestOutcome]:
    """Every ``<testcase>`` of a pytest junit XML file (xunit1 or xunit2)."""
    root = ET.parse(source).getroot()
    outcomes = []
    for case in root.iter("testcase"):
        classname = case.get("classname", "")
        name = case.get("name", "")
        outcome: Outcome = "passed"
        message = ""
        collection_error = False
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                text = child.get("message") or (child.text or "").strip()
                if child.tag == "skipped":
                    if outcome != "passed":
                        continue
                    outcome = "skipped"
                    if child.get("type") == "pytest.xfail":
                        text = f"xfail: {text}"
                else:
                    # an error in tear-down after a failure keeps the failure first
                    if outcome in ("failed", "error"):
                        message = f"{message}; {child.tag}: {text}"
                        continue
                    outcome = "failed" if child.tag == "failure" else "error"
                    if child.tag == "error" and text == "collection failure":
                        collection_error = True
                        detail = (child.text or "").strip().splitlines()
                        text = f"collection failure: {detail[-1] if detail else ''}".rstrip(": ")
                message = text
        properties = tuple((p.get("name", ""), p.get("value", "")) for p in case.iter("property"))
        outcomes.append(
            TestOutcome(
                classname=classname,
                name=name,
                outcome=outcome,
                message=_shorten(message),
                seconds=float(case.get("time") or 0.0),
                properties=properties,
                collection_error=collection_error or (not classname and outcome == "error"),
            )
        )
    return outcomes


def _shorten(text: str, limit: int = _MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- judging -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimResult:
    """What the run says about one claim."""

    id: str
    sentence: str
    status: Status
    reason: str
    answered_by: str
    source: Literal["pytest", "kernel check"] = "pytest"
    tests: tuple[TestOutcome, ...] = ()
    kernel_check: dict[str, Any] | None = None

    def counts(self) -> dict[str, int]:
        counted = Counter(t.outcome for t in self.tests)
        return {k: counted.get(k, 0) for k in ("passed", "failed", "error", "skipped")}

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sentence": self.sentence,
            "status": self.status,
            "reason": self.reason,
            "answered_by": self.answered_by,
            "source": self.source,
            "counts": self.counts() if self.source == "pytest" else None,
            "tests": [t.to_json() for t in self.tests],
            "kernel_check": self.kernel_check,
        }


def judge_claim(
    claim: Claim, outcomes: Iterable[TestOutcome], *, not_run: str | None = None
) -> ClaimResult:
    """A pytest claim from the suite's outcomes (``not_run``: the suite did not run, and why)."""

    def result(status: Status, reason: str, tests: tuple[TestOutcome, ...] = ()) -> ClaimResult:
        return ClaimResult(
            claim.id, claim.sentence, status, reason, claim.describe_tests(), "pytest", tests
        )

    if not_run is not None:
        return result("not run", not_run)
    tests = tuple(t for t in outcomes if any(s.matches(t) for s in claim.tests))
    if not tests:
        return result(
            "not run",
            "no test was collected for it (looked for "
            + ", ".join(s.describe() for s in claim.tests)
            + " marked gpu)",
        )
    broken = [t for t in tests if t.outcome in ("failed", "error")]
    if broken:
        named = "; ".join(f"{t.nodeid} {t.outcome}: {t.message}" for t in broken)
        return result("failed", f"{len(broken)} of {_tests(len(tests))} failed: {named}", tests)
    skipped = [t for t in tests if t.outcome == "skipped"]
    if skipped:
        reasons = Counter(t.message or "no reason given" for t in skipped)
        listed = "; ".join(
            f"{why} ({n} tests)" if n > 1 else why for why, n in reasons.most_common()
        )
        ran = len(tests) - len(skipped)
        if ran:
            what = f"{len(skipped)} of its {_tests(len(tests))} did not run ({ran} passed)"
        else:
            what = f"none of its {_tests(len(tests))} ran"
        return result("not run", f"{what}: skipped: {listed}", tests)
    return result(
        "verified", f"{'all ' if len(tests) > 1 else ''}{_tests(len(tests))} passed", tests
    )


def _tests(count: int) -> str:
    return f"{count} test{'' if count == 1 else 's'}"


def judge_kernel_claim(
    claim: Claim,
    kernel: dict[str, Any] | None,
    *,
    not_run: str | None = None,
    failure: str | None = None,
) -> ClaimResult:
    """The kernel-check claim from its JSON report (``failure``: it ended without one)."""

    def result(status: Status, reason: str) -> ClaimResult:
        return ClaimResult(
            claim.id,
            claim.sentence,
            status,
            reason,
            claim.describe_tests(),
            "kernel check",
            kernel_check=kernel,
        )

    if not_run is not None:
        return result("not run", not_run)
    if kernel is None:
        return result("failed", failure or "the kernel check wrote no report")
    status = kernel.get("status")
    reason = str(kernel.get("reason", ""))
    if status == "passed" and kernel.get("cases"):
        return result("verified", reason)
    if status == "failed":
        return result("failed", reason)
    return result("not run", reason or f"the kernel check says {status!r}")


def judge_claims(
    outcomes: Sequence[TestOutcome],
    kernel: dict[str, Any] | None = None,
    *,
    suite_not_run: str | None = None,
    kernel_not_run: str | None = None,
    kernel_failure: str | None = None,
    claims: Sequence[Claim] = CLAIMS,
) -> list[ClaimResult]:
    """Every claim, judged from the suite's outcomes and the kernel check's report."""
    return [
        judge_kernel_claim(c, kernel, not_run=kernel_not_run, failure=kernel_failure)
        if c.kernel_check
        else judge_claim(c, outcomes, not_run=suite_not_run)
        for c in claims
    ]


def unclaimed(
    outcomes: Sequence[TestOutcome], claims: Sequence[Claim] = CLAIMS
) -> list[TestOutcome]:
    """The gpu tests that answer no claim (reported, but they decide nothing)."""
    return [t for t in outcomes if not any(s.matches(t) for c in claims for s in c.tests)]


# -- the report ----------------------------------------------------------------------------


@dataclass
class SelftestReport:
    """The acceptance run: one result per claim and what it ran on.

    ``ok`` is True only when every claim is ``verified``.
    """

    claims: list[ClaimResult]
    date: str
    device: str | None
    device_error: str | None
    versions: dict[str, str | None]
    suite: dict[str, Any] = field(default_factory=dict)
    other_tests: list[TestOutcome] = field(default_factory=list)
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.claims) and all(c.status == "verified" for c in self.claims)

    def summary(self) -> str:
        counted = Counter(c.status for c in self.claims)
        parts = [f"{counted.get('verified', 0)} of {len(self.claims)} claims verified"]
        parts += [f"{counted[s]} {s}" for s in ("failed", "not run") if counted.get(s)]
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "date": self.date,
            "device": self.device,
            "device_error": self.device_error,
            "versions": self.versions,
            "claims": [c.to_json() for c in self.claims],
            "other_gpu_tests": [t.to_json() for t in self.other_tests],
            "suite": self.suite,
            "seconds": self.seconds,
            "files": self.files,
        }

    def to_markdown(self) -> str:
        lines = [
            "# edgeseg device self-test",
            "",
            f"**{self.summary()}.** {'Every claim holds on this device.' if self.ok else ''}".rstrip(),
            "",
            f"- date: {self.date}",
            f"- device: {self.device or f'none: {self.device_error}'}",
            f"- run took {self.seconds:.1f} s",
            "",
            "| version of | |",
            "| --- | --- |",
            *(f"| {k} | {v or _absent(k)} |" for k, v in self.versions.items()),
            "",
            "## Claims",
            "",
            "| claim | status | tests (passed/failed/skipped) | why |",
            "| --- | --- | --- | --- |",
        ]
        for c in self.claims:
            counts = c.counts()
            tally = (
                "kernel check"
                if c.source == "kernel check"
                else f"{counts['passed']}/{counts['failed'] + counts['error']}/{counts['skipped']}"
            )
            lines.append(f"| {c.id} | **{c.status}** | {tally} | {_cell(c.reason, 300)} |")
        for c in self.claims:
            lines += ["", f"## {c.id}: {c.status}", "", f"> {c.sentence}", ""]
            lines += [f"Answered by {c.answered_by}.", "", c.reason, ""]
            if c.tests:
                lines += ["| test | result | figures |", "| --- | --- | --- |"]
                for t in c.tests:
                    result = t.outcome if t.outcome == "passed" else f"{t.outcome}: {t.message}"
                    lines.append(f"| `{t.nodeid}` | {_cell(result, 300)} | {_cell(_figures(t))} |")
            if c.kernel_check:
                table = _kernel_table(c.kernel_check)
                if table:
                    lines += [table, ""]
                build = c.kernel_check.get("build_seconds")
                lines.append(
                    f"Kernel check on {c.kernel_check.get('device') or 'no device'}: "
                    f"{c.kernel_check.get('seconds', 0):.1f} s"
                    + (f" (build {build:.1f} s)" if build is not None else "")
                    + "."
                )
        if self.other_tests:
            lines += ["", "## Other gpu tests (no claim)", "", "| test | result | figures |"]
            lines.append("| --- | --- | --- |")
            for t in self.other_tests:
                result = t.outcome if t.outcome == "passed" else f"{t.outcome}: {t.message}"
                lines.append(f"| `{t.nodeid}` | {_cell(result, 300)} | {_cell(_figures(t))} |")
        if self.suite:
            lines += ["", "## How it ran", ""]
            lines += [
                f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in self.suite.items()
            ]
        if self.files:
            lines += ["", "## Files", "", *(f"- {k}: {v}" for k, v in self.files.items())]
        return "\n".join(lines).rstrip() + "\n"


def _absent(version_of: str) -> str:
    return "no driver" if version_of == "cuda_driver" else "not installed"


def _cell(text: str, limit: int = 1000) -> str:
    return _shorten(text, limit).replace("|", "\\|")


def _figures(test: TestOutcome) -> str:
    return "; ".join(f"{k}={v}" for k, v in test.properties)


def _kernel_table(kernel: dict[str, Any]) -> str:
    cases = kernel.get("cases") or []
    if not cases:
        return ""
    lines = [
        "| case | dtype | shape | max abs error | tolerance | result | samples outside | kernel ms "
        "| torchvision ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in cases:
        tv_ms = r.get("torchvision_ms")
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['shape']} | {r['max_abs_error']:.3g} "
            f"| {r['tolerance']:.3g} | {'pass' if r['passed'] else 'FAIL'} "
            f"| {r['outside_fraction']:.1%} | {r['kernel_ms']:.3f} "
            f"| {'-' if tv_ms is None else f'{tv_ms:.3f}'} |"
        )
    return "\n".join(lines)


def write_report(report: SelftestReport, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Writes ``selftest.json`` and ``selftest.md`` into ``out_dir``; their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / REPORT_JSON, out / REPORT_MD
    report.files.setdefault("report_json", str(json_path))
    report.files.setdefault("report_markdown", str(md_path))
    for path, text in (
        (json_path, json.dumps(report.to_json(), indent=2) + "\n"),
        (md_path, report.to_markdown()),
    ):
        staged = path.with_name(f".{path.name}.tmp")
        staged.write_text(text, encoding="utf-8")
        os.replace(staged, path)
    return json_path, md_path


# -- the machine ---------------------------------------------------------------------------


def _probe() -> tuple[str | None, str | None, str | None]:
    """(device description, why there is none, CUDA driver version) of CUDA device 0."""
    from edgeseg.engines import cuda_driver, probe_device

    try:
        info = probe_device(0, with_tensorrt=False)
    except BackendError as err:
        return None, str(err), None
    driver = None
    try:
        version = cuda_driver().driver_version()
        driver = f"{version // 1000}.{version % 1000 // 10}"
    except BackendError:
        pass
    memory = f", {info.total_memory / 2**30:.1f} GiB" if info.total_memory else ""
    return f"{info.name} ({info.sm}{memory})", None, driver


def _distribution(*names: str) -> str | None:
    for name in names:
        try:
            return f"{importlib.metadata.version(name)}" + (
                "" if name == names[0] else f" ({name})"
            )
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _nvcc_version() -> str | None:
    from converters.plugins import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        return None
    try:
        proc = subprocess.run(
            [str(nvcc), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release ([\d.]+)", proc.stdout)
    return found.group(1) if found else None


def _versions(cuda_driver: str | None) -> dict[str, str | None]:
    from edgeseg.engines import tensorrt_version

    return {
        "edgeseg": _distribution("edgeseg"),
        "python": platform.python_version(),
        "tensorrt": tensorrt_version() or _distribution("tensorrt"),
        "cuda_driver": cuda_driver,
        "cuda_toolkit_nvcc": _nvcc_version(),
        "torch": _distribution("torch"),
        "torchvision": _distribution("torchvision"),
        "onnxruntime": _distribution("onnxruntime", "onnxruntime-gpu"),
        "pycuda": _distribution("pycuda"),
        "cuda-python": _distribution("cuda-python", "cuda-bindings"),
        "polygraphy": _distribution("polygraphy"),
        "pytest": _distribution("pytest"),
    }


# -- the runs ------------------------------------------------------------------------------


def _default_sigint() -> None:
    """In the child, before exec: SIGINT back to its default. A parent started in the background
    (nohup, ``cmd &`` in a script, some CI runners) ignores SIGINT, children inherit that, and
    Python then installs no KeyboardInterrupt handler: the time limit's SIGINT would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(
    cmd: list[str],
    *,
    cwd: Path,
    log: Path,
    timeout_s: float | None,
    env: dict[str, str] | None = None,
) -> tuple[int | None, float]:
    """Runs ``cmd`` with its output in ``log``; (exit status, None when stopped at the timeout;
    seconds).

    At the timeout the process group it started gets SIGINT (pytest then stops and still
    writes its junit XML), and SIGKILL :data:`INTERRUPT_GRACE_S` later if it is still there.
    """
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            preexec_fn=_default_sigint,
        )
        try:
            code: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return code, round(time.perf_counter() - started, 1)


def _log_tail(log: Path, lines: int = _TAIL_LINES) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _ended(code: int | None, seconds: float, timeout_s: float | None) -> str:
    if code is None:
        return f"stopped after {seconds:.0f} s (timeout {timeout_s:.0f} s)"
    if code < 0:
        try:
            name = f" ({signal.Signals(-code).name})"
        except ValueError:
            name = ""
        return f"killed by signal {-code}{name}"
    return f"exit status {code}"


def _kernel_check(out: Path, *, say: Say) -> tuple[dict[str, Any] | None, str | None]:
    """Runs the kernel check in a subprocess; (its JSON report, or why there is none)."""
    report, log = out / KERNEL_JSON, out / KERNEL_LOG
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "converters.plugins.kernel_check", "--json", str(report)]
    say(f"running the DCNv2 kernel check (log: {log})")
    code, seconds = _run(cmd, cwd=REPO, log=log, timeout_s=KERNEL_CHECK_TIMEOUT_S)
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, (
            f"the kernel check ended without a report ({_ended(code, seconds, KERNEL_CHECK_TIMEOUT_S)}); "
            f"last lines of {log.name}: {_log_tail(log, 8)}"
        )
    say(f"kernel check {data.get('status')}: {data.get('reason')}")
    return data, None


@dataclass
class _Suite:
    outcomes: list[TestOutcome]
    not_run: str | None  # the suite did not run, and why
    info: dict[str, Any]
    stopped: str | None = None  # it stopped before the end (session timeout), and how
    failure: str | None = None  # it ended without a usable report (a crash, a kill)


COLLECTED_ENV = "EDGESEG_SELFTEST_COLLECTED"
COLLECTED_JSON = "gpu-suite-collected.json"
KILL_GRACE_S = 120.0
"""After ``timeout_s`` pytest starts no new test; a test still running is interrupted this much
later (SIGINT: pytest still writes its report)."""
INTERRUPT_GRACE_S = 30.0
"""How long an interrupted run may take to write its report before it is killed."""

RUN_ORDER: tuple[str | None, ...] = (
    "cuda-graphs",
    "runtime-overhead",
    "thousand-frames",
    "crf-engine",
    None,  # gpu tests of no claim (small bundles)
    "deform-plugin",
    "zoo-engines",
)
"""The order the suite runs its tests in (claims by id): the quick ones first, so that a run
stopped by its time limit answers as many claims as it can."""


def _claim_of(file: str, function: str) -> str | None:
    test = TestOutcome(file.removesuffix(".py").replace("/", "."), function, "passed")
    return next((c.id for c in CLAIMS if any(s.matches(test) for s in c.tests)), None)


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Pytest hook, active when the selftest loads this module with ``-p converters.selftest``:
    the tests in :data:`RUN_ORDER` (a stable sort, so a module's parametrised tests stay
    together and its fixtures are built once)."""
    del config

    def rank(item: Any) -> int:
        file = item.nodeid.split("::", 1)[0]
        claim = _claim_of(file, getattr(item, "originalname", None) or item.name.split("[")[0])
        return RUN_ORDER.index(claim) if claim in RUN_ORDER else RUN_ORDER.index(None)

    items[:] = sorted(items, key=rank)


def pytest_collection_finish(session: Any) -> None:
    """Pytest hook (with ``-p converters.selftest``): the node ids of every test that will
    run, into the file ``$EDGESEG_SELFTEST_COLLECTED`` names, so that tests that never
    report (the suite stopped at its time limit) are known."""
    path = os.environ.get(COLLECTED_ENV)
    if path:
        Path(path).write_text(json.dumps([item.nodeid for item in session.items]), encoding="utf-8")


def _outcome_of(nodeid: str, message: str) -> TestOutcome:
    """A collected test that never reported, as a skipped outcome saying so."""
    path, _, rest = nodeid.partition("::")
    *classes, name = rest.split("::")
    classname = ".".join([path.removesuffix(".py").replace("/", "."), *classes])
    return TestOutcome(classname, name, "skipped", message)


def _gpu_suite(
    out: Path,
    tests_dir: Path,
    *,
    pytest_args: Sequence[str],
    timeout_s: float | None,
    say: Say,
) -> _Suite:
    """``pytest -m gpu`` on ``tests_dir`` with a junit report; its outcomes, or why none."""
    if importlib.util.find_spec("pytest") is None:
        return _Suite([], "pytest is not installed (pip install -e '.[test]')", {})
    if not tests_dir.is_dir():
        return _Suite(
            [], f"no test suite at {tests_dir}: run the selftest from a checkout of edgeseg", {}
        )
    xml, log, collected = out / JUNIT_XML, out / SUITE_LOG, out / COLLECTED_JSON
    for stale in (xml, collected):
        stale.unlink(missing_ok=True)
    root = tests_dir.resolve().parent
    cmd = [
        sys.executable, "-m", "pytest", str(tests_dir.resolve()), "-m", "gpu", "-v", "-rA", "-s",
        "-p", "no:cacheprovider", "-p", __name__, "--continue-on-collection-errors",
        f"--rootdir={root}", f"--junitxml={xml}",
    ]  # fmt: skip
    kill_after = None
    if timeout_s is not None:
        if importlib.util.find_spec("pytest_timeout") is not None:
            cmd.append(f"--session-timeout={timeout_s:g}")  # stops between tests, keeps the XML
            kill_after = timeout_s + KILL_GRACE_S
        else:
            kill_after = timeout_s
    cmd += list(pytest_args)
    say(f"running the gpu suite: pytest -m gpu {tests_dir} (log: {log})")
    env = {**os.environ, COLLECTED_ENV: str(collected)}
    code, seconds = _run(cmd, cwd=root, log=log, timeout_s=kill_after, env=env)
    info: dict[str, Any] = {
        "command": " ".join(cmd),
        "ended": _ended(code, seconds, kill_after),
        "seconds": seconds,
        "junit": str(xml),
        "log": str(log),
    }
    if (code is not None and code < 0) or not xml.is_file():
        # killed (a crash, a hang past the limit) or an internal error: only the log says more
        started_tests = re.findall(r"^(\S+\.py::\S+)", _log_tail(log, 100_000), re.MULTILINE)
        during = f" while running {started_tests[-1]}" if started_tests else ""
        failure = (
            f"the gpu suite ended without its report ({info['ended']}){during}; last lines of "
            f"{log.name}:\n{_log_tail(log)}"
        )
        say(failure)
        return _Suite([], None, info, failure=failure)
    try:
        outcomes = parse_junit(xml)
    except ET.ParseError as err:
        return _Suite([], None, info, failure=f"{xml.name} is not valid XML: {err}")
    stopped = None
    if code is None:
        stopped = f"the suite was interrupted at its time limit ({info['ended']})"
    elif timeout_s is not None and "session-timeout:" in _log_tail(log, 400):
        stopped = f"the suite stopped starting tests at its time limit ({timeout_s:g} s)"
        info["ended"] += f"; {stopped}"
    try:
        nodeids = json.loads(collected.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        nodeids = []
    reported = {t.nodeid for t in outcomes}
    missing = [n for n in nodeids if n not in reported]
    if missing:
        why = f"did not run: {stopped or 'collected, but the suite reported nothing for it'}"
        outcomes += [_outcome_of(n, why) for n in missing]
    counted = Counter(t.outcome for t in outcomes)
    info["outcomes"] = dict(counted)
    say(f"gpu suite: {dict(counted) or 'no tests'} in {seconds:.0f} s ({info['ended']})")
    return _Suite(outcomes, None, info, stopped=stopped)


def run_selftest(
    out_dir: str | os.PathLike[str],
    *,
    device: bool = True,
    kernels: bool = True,
    tests_dir: str | os.PathLike[str] | None = None,
    pytest_args: Sequence[str] = (),
    timeout_s: float | None = None,
    say: Say | None = None,
) -> SelftestReport:
    """Runs the acceptance checks on this machine and writes the report into ``out_dir``.

    Args:
        out_dir: Folder for ``selftest.json``, ``selftest.md`` and the runs' logs,
            junit XML and kernel-check JSON (created).
        device: Run the gpu suite (``pytest -m gpu``).
        kernels: Run the DCNv2 kernel check.
        tests_dir: The test folder (``tests/`` of this checkout by default); test files
            are matched as paths relative to its parent.
        pytest_args: More arguments for pytest (e.g. ``["-k", "tiny"]``); claims whose
            tests are left out are ``not run``.
        timeout_s: Stop the gpu suite after this many seconds (None: no limit;
            pytest-timeout still limits each test).
        say: Progress lines.

    Returns:
        The report (also written); ``report.ok`` is True only when every claim was
        verified. Without an NVIDIA GPU it returns at once, every claim ``not run``.
    """
    say = say_or_log(say)
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    described, device_error, driver = _probe()
    versions = _versions(driver)
    if described is None:
        reason = f"no NVIDIA GPU: {device_error}"
        say(f"{reason}: nothing can run here")
        suite_not_run: str | None = reason
        kernel_not_run: str | None = reason
    else:
        say(f"device: {described}")
        suite_not_run = None if device else "the gpu suite was not asked for (device=False)"
        kernel_not_run = None if kernels else "the kernel check was not asked for (kernels=False)"

    kernel, kernel_failure = None, None
    if kernel_not_run is None:
        kernel, kernel_failure = _kernel_check(out, say=say)
        if kernel is not None:
            kernel_versions = kernel.get("versions") or {}
            versions["torch_cuda"] = kernel_versions.get("torch_cuda")
    suite = _Suite([], suite_not_run, {})
    if suite_not_run is None:
        folder = Path(tests_dir) if tests_dir is not None else DEFAULT_TESTS_DIR
        suite = _gpu_suite(out, folder, pytest_args=pytest_args, timeout_s=timeout_s, say=say)
    results = judge_claims(
        suite.outcomes,
        kernel,
        suite_not_run=suite.not_run,
        kernel_not_run=kernel_not_run,
        kernel_failure=kernel_failure,
    )
    if suite.failure:  # the suite crashed or hung: every pytest claim failed with it
        results = [
            dataclasses.replace(r, status="failed", reason=suite.failure)
            if r.source == "pytest"
            else r
            for r in results
        ]
    report = SelftestReport(
        claims=results,
        date=date,
        device=described,
        device_error=device_error,
        versions=versions,
        suite=suite.info,
        other_tests=unclaimed(suite.outcomes),
        seconds=round(time.perf_counter() - started, 2),
    )
    json_path, md_path = write_report(report, out)
    say(f"{report.summary()}: {md_path}")
    return report


def claims_table() -> str:
    """:data:`CLAIMS` as a markdown table (id, sentence, what answers it)."""
    lines = ["| claim | what it says | answered by |", "| --- | --- | --- |"]
    lines += [f"| {c.id} | {c.sentence} | {c.describe_tests()} |" for c in CLAIMS]
    return "\n".join(lines)
