"""The device acceptance run (converters/selftest.py) and the DCNv2 kernel check, without a GPU.

What can be checked here: that a machine without a GPU gets every claim
``not run`` with the reason, quickly, and both report files; how junit
outcomes map onto claims (pass, fail, skip, error, a file that does not
import, a claim with no test, tests the run never reached), from synthetic
XML and from a real pytest run over stand-in test files; that the kernel
check reports ``not run: no CUDA device`` cleanly, judges its cases right on
the CPU (with torchvision standing in for the kernel) and that its binding
builds with torch's extension loader (slow). Every figure in these tests is
made up here and stays in ``tmp_path``: nothing of it reaches a real report.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from converters import selftest
from converters.plugins import kernel_check
from converters.selftest import CLAIMS, TestOutcome, judge_claims, parse_junit

REPO = Path(__file__).resolve().parents[1]
GPU = "tests/converters/test_tensorrt_gpu.py"
GPU_CLASS = "tests.converters.test_tensorrt_gpu"


def _has_gpu() -> bool:
    return selftest._probe()[0] is not None


def _claim(results: list[selftest.ClaimResult], claim_id: str) -> selftest.ClaimResult:
    return next(r for r in results if r.id == claim_id)


# -- the claims table ------------------------------------------------------------------------


def test_claims_cover_the_issue_and_name_tests_that_exist() -> None:
    assert [c.id for c in CLAIMS] == [
        "zoo-engines",
        "deform-plugin",
        "crf-engine",
        "cuda-graphs",
        "runtime-overhead",
        "thousand-frames",
        "dcn-kernels",
    ]
    for claim in CLAIMS:
        assert claim.sentence.endswith(".") and claim.tests or claim.kernel_check, claim.id
        for selector in claim.tests:
            if selector.name == "*":  # any gpu test of the file (the CRF file is written apart)
                continue
            source = (REPO / selector.file).read_text(encoding="utf-8")
            assert f"def {selector.name}(" in source, f"{claim.id}: {selector.describe()}"
            assert "pytestmark = pytest.mark.gpu" in source, selector.file
    assert set(selftest.RUN_ORDER) - {None} == {c.id for c in CLAIMS if not c.kernel_check}


def test_figures_are_recorded_by_the_measuring_tests() -> None:
    source = (REPO / GPU).read_text(encoding="utf-8")
    for name in (
        "test_runtime_overhead_over_the_bare_engine",
        "test_thousand_frames_without_memory_growth",
        "test_zoo_engine_matches_onnxruntime_and_pytorch",
        "test_plugin_matches_native_deform_conv",
        "test_cuda_graph_gives_the_same_results",
    ):
        body = source.split(f"def {name}(", 1)[1].split("\ndef ", 1)[0]
        assert re.search(r"_record\(\s*record_property,", body), name
    overhead = source.split("def test_runtime_overhead_over_the_bare_engine(", 1)[1]
    assert "execute_async_v3" in overhead and "time_till" in overhead


# -- no GPU here -------------------------------------------------------------------------------


def test_without_a_gpu_every_claim_is_not_run_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if _has_gpu():
        pytest.skip("this machine has an NVIDIA GPU: the no-GPU report does not apply")

    def launched(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"without a GPU nothing is launched, but got {args[:1]}")

    # it returns at once: neither the kernel check nor pytest is started (both go through _run)
    monkeypatch.setattr(selftest, "_run", launched)
    lines: list[str] = []
    report = selftest.run_selftest(tmp_path / "out", say=lines.append)
    assert not report.ok
    assert [r.id for r in report.claims] == [c.id for c in CLAIMS]
    for result in report.claims:
        assert result.status == "not run", result
        assert result.reason.startswith("no NVIDIA GPU: "), result.reason
        assert not result.tests and not result.kernel_check
    assert report.device is None and report.device_error
    data = json.loads((tmp_path / "out" / "selftest.json").read_text())
    assert data["ok"] is False and data["device"] is None
    assert data["summary"] == f"0 of {len(CLAIMS)} claims verified, {len(CLAIMS)} not run"
    assert {c["status"] for c in data["claims"]} == {"not run"}
    assert {"tensorrt", "torch", "onnxruntime", "cuda_driver", "python"} <= set(data["versions"])
    assert re.match(r"\d{4}-\d\d-\d\dT", data["date"])
    markdown = (tmp_path / "out" / "selftest.md").read_text()
    assert "0 of 7 claims verified, 7 not run" in markdown
    assert all(f"| {c.id} | **not run** |" in markdown for c in CLAIMS)
    # nothing ran: no pytest, no kernel check
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["selftest.json", "selftest.md"]
    assert any("no NVIDIA GPU" in line for line in lines)


def test_a_claim_not_asked_for_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(selftest, "_probe", lambda: ("Stand-in GPU (sm90)", None, None))
    report = selftest.run_selftest(tmp_path, device=False, kernels=False)
    assert not report.ok
    reasons = {r.id: r.reason for r in report.claims}
    assert reasons["dcn-kernels"] == "the kernel check was not asked for (kernels=False)"
    assert reasons["zoo-engines"] == "the gpu suite was not asked for (device=False)"
    assert {r.status for r in report.claims} == {"not run"}


# -- junit outcomes -> claims -----------------------------------------------------------------


def _case(
    name: str, body: str = "", classname: str = GPU_CLASS, properties: dict[str, str] | None = None
) -> str:
    props = ""
    if properties:
        props = "<properties>" + "".join(
            f'<property name="{k}" value="{v}"/>' for k, v in properties.items()
        ) + "</properties>"  # fmt: skip
    return f'<testcase classname="{classname}" name="{name}" time="1.5">{props}{body}</testcase>'


SKIP_NO_GPU = '<skipped type="pytest.skip" message="needs an NVIDIA GPU with TensorRT">x</skipped>'

SYNTHETIC = (
    '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
    + _case(
        "test_zoo_engine_matches_onnxruntime_and_pytorch[unet-fp32]",
        properties={"onnxruntime": "0.9991", "gpu_ms": "1.25"},
    )
    + _case(
        "test_zoo_engine_matches_onnxruntime_and_pytorch[unet-int8]",
        '<skipped type="pytest.skip" message="no int8 graph: agreement too low">s</skipped>',
    )
    + _case(
        "test_plugin_matches_native_deform_conv[unet-deformable-fp16]",
        "<failure message=\"AssertionError: {'plugin_vs_native': 0.5}\">trace</failure>",
        properties={"plugin_vs_native": "0.5"},
    )
    + _case("test_cuda_graph_gives_the_same_results", properties={"frames": "20"})
    + _case(
        "test_runtime_overhead_over_the_bare_engine",
        '<error message="failed on setup with &quot;RuntimeError: no plan&quot;">e</error>',
    )
    + _case("test_thousand_frames_without_memory_growth", SKIP_NO_GPU)
    + _case("test_polygraphy_compares_the_engine_with_onnxruntime")
    + "</testsuite></testsuites>"
)


def test_junit_outcomes_map_onto_claims(tmp_path: Path) -> None:
    xml = tmp_path / "suite.xml"
    xml.write_text(SYNTHETIC)
    outcomes = parse_junit(xml)
    assert [t.outcome for t in outcomes] == [
        "passed", "skipped", "failed", "passed", "error", "skipped", "passed"
    ]  # fmt: skip
    assert outcomes[0].figures() == {"onnxruntime": 0.9991, "gpu_ms": 1.25}
    assert outcomes[3].figures() == {"frames": 20}
    kernel = {"status": "passed", "reason": "all 24 cases within their tolerance", "cases": [{}]}
    results = judge_claims(outcomes, kernel)

    zoo = _claim(results, "zoo-engines")  # one passed, one skipped: not verified
    assert zoo.status == "not run"
    assert "1 of its 2 tests did not run (1 passed)" in zoo.reason
    assert "no int8 graph: agreement too low" in zoo.reason
    plugin = _claim(results, "deform-plugin")  # a failure names the test and its message
    assert plugin.status == "failed"
    assert (
        f"{GPU}::test_plugin_matches_native_deform_conv[unet-deformable-fp16] failed: "
        "AssertionError: {'plugin_vs_native': 0.5}" in plugin.reason
    )
    crf = _claim(results, "crf-engine")  # no test collected: never verified
    assert crf.status == "not run" and crf.reason.startswith("no test was collected")
    assert "tests/runtime/test_crf_engine.py::*" in crf.reason
    assert _claim(results, "cuda-graphs").status == "verified"
    overhead = _claim(results, "runtime-overhead")  # a set-up error fails the claim
    assert overhead.status == "failed" and "RuntimeError: no plan" in overhead.reason
    thousand = _claim(results, "thousand-frames")
    assert thousand.status == "not run"
    assert thousand.reason == "none of its 1 test ran: skipped: needs an NVIDIA GPU with TensorRT"
    assert _claim(results, "dcn-kernels").status == "verified"
    others = selftest.unclaimed(outcomes)
    assert [t.function for t in others] == ["test_polygraphy_compares_the_engine_with_onnxruntime"]


def test_a_file_that_does_not_import_fails_its_claims(tmp_path: Path) -> None:
    xml = tmp_path / "suite.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="" name="tests.runtime.test_crf_engine" time="0">'
        '<error message="collection failure">Traceback\nE   ImportError: no crf_chain</error>'
        "</testcase>"
        + _case("test_cuda_graph_gives_the_same_results")
        + "</testsuite></testsuites>"
    )
    outcomes = parse_junit(xml)
    assert outcomes[0].collection_error and outcomes[0].nodeid == "tests/runtime/test_crf_engine.py"
    crf = _claim(judge_claims(outcomes), "crf-engine")
    assert crf.status == "failed"
    assert "collection failure: E ImportError: no crf_chain" in crf.reason
    assert _claim(judge_claims(outcomes), "cuda-graphs").status == "verified"


def test_crf_tests_match_by_file_whatever_their_names() -> None:
    crf_class = "tests.runtime.test_crf_engine"
    outcomes = [
        TestOutcome(crf_class, "test_separate_crf_is_an_engine[fp16]", "passed"),
        TestOutcome(f"{crf_class}.TestChain", "test_logits_stay_on_the_device", "passed"),
        TestOutcome("tests.runtime.test_crf_engine_extra", "test_unrelated", "failed", "boom"),
    ]
    crf = _claim(judge_claims(outcomes), "crf-engine")
    assert crf.status == "verified" and crf.reason == "all 2 tests passed"
    assert (
        crf.tests[1].nodeid
        == "tests/runtime/test_crf_engine.py::TestChain::test_logits_stay_on_the_device"
    )


@pytest.mark.parametrize(
    ("kernel", "failure", "status", "reason"),
    [
        (
            {"status": "failed", "reason": "2 of 24 cases over"},
            None,
            "failed",
            "2 of 24 cases over",
        ),
        ({"status": "not run", "reason": "no CUDA device"}, None, "not run", "no CUDA device"),
        ({"status": "passed", "reason": "ok", "cases": []}, None, "not run", "ok"),
        (None, "ended without a report (killed by signal 11)", "failed", "killed by signal 11"),
    ],
    ids=["failed", "not-run", "passed-without-cases", "crashed"],
)
def test_kernel_claim_follows_the_kernel_report(
    kernel: dict[str, Any] | None, failure: str | None, status: str, reason: str
) -> None:
    result = _claim(judge_claims([], kernel, kernel_failure=failure), "dcn-kernels")
    assert result.status == status and reason in result.reason


def test_report_is_ok_only_when_every_claim_is_verified(tmp_path: Path) -> None:
    outcomes = [
        TestOutcome(GPU_CLASS, f"{selector.name}[a]", "passed", properties=(("ms", "0.5"),))
        for claim in CLAIMS
        for selector in claim.tests
        if selector.name != "*"
    ] + [TestOutcome("tests.runtime.test_crf_engine", "test_crf", "passed")]
    kernel = {
        "status": "passed",
        "reason": "all cases within their tolerance",
        "device": "Stand-in GPU",
        "seconds": 1.0,
        "build_seconds": 0.5,
        "cases": [
            {
                "case": "basic",
                "dtype": "fp16",
                "shape": "1x4x7x9 -> 1x6x7x9",
                "max_abs_error": 1e-3,
                "tolerance": 5e-3,
                "passed": True,
                "outside_fraction": 0.3,
                "kernel_ms": 0.01,
                "torchvision_ms": None,
            }
        ],
    }
    report = selftest.SelftestReport(
        claims=judge_claims(outcomes, kernel),
        date="2000-01-01T00:00:00+00:00",
        device="Stand-in GPU (sm90)",
        device_error=None,
        versions={"tensorrt": None},
    )
    assert report.ok and report.summary() == "7 of 7 claims verified"
    json_path, md_path = selftest.write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["ok"] is True
    markdown = md_path.read_text()
    assert (
        "| basic | fp16 | 1x4x7x9 -> 1x6x7x9 | 0.001 | 0.005 | pass | 30.0% | 0.010 | - |"
        in markdown
    )
    assert "| ms=0.5 |" in markdown and "Every claim holds on this device." in markdown
    broken = [TestOutcome(GPU_CLASS, "test_cuda_graph_gives_the_same_results", "failed", "x")]
    report.claims = judge_claims(outcomes[:-1] + broken, kernel)
    assert not report.ok and "1 failed" in report.summary()


# -- a real pytest run over stand-in tests -----------------------------------------------------


def _stand_in_suite(root: Path, extra: str = "") -> Path:
    """tests/ with gpu-marked stand-ins for some claims' tests (and what they are made to do)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    for folder in ("tests", "tests/converters", "tests/runtime"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "__init__.py").write_text("")
    (root / GPU).write_text(
        textwrap.dedent(
            """
            import pytest

            pytestmark = pytest.mark.gpu

            @pytest.mark.parametrize("precision", ["fp32", "int8"])
            def test_zoo_engine_matches_onnxruntime_and_pytorch(precision, record_property):
                record_property("agreement", 0.75)
                if precision == "int8":
                    pytest.skip("no int8 graph")

            def test_cuda_graph_gives_the_same_results():
                assert 1 == 2, "masks differ"

            def test_thousand_frames_without_memory_growth(record_property):
                record_property("host_rss_growth_mib", 0.25)

            def test_something_else():
                pass
            """
        )
        + extra
    )
    (root / "tests/runtime/test_crf_engine.py").write_text(
        textwrap.dedent(
            """
            import pytest

            class TestCrfEngine:
                @pytest.mark.gpu
                def test_crf_engine_matches_onnxruntime(self):
                    pass

            def test_cpu_only_is_not_in_the_gpu_suite():
                raise AssertionError("deselected by -m gpu")
            """
        )
    )
    return root / "tests"


def test_selftest_runs_pytest_and_reads_its_junit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(selftest, "_probe", lambda: ("Stand-in GPU (sm90)", None, None))
    tests = _stand_in_suite(tmp_path / "checkout")
    report = selftest.run_selftest(tmp_path / "out", kernels=False, tests_dir=tests, timeout_s=120)
    status = {r.id: r.status for r in report.claims}
    assert status == {
        "zoo-engines": "not run",  # int8 skipped
        "deform-plugin": "not run",  # no test
        "crf-engine": "verified",  # matched by file and marker; the cpu test is deselected
        "cuda-graphs": "failed",
        "runtime-overhead": "not run",
        "thousand-frames": "verified",
        "dcn-kernels": "not run",
    }
    graphs = _claim(report.claims, "cuda-graphs")
    assert f"{GPU}::test_cuda_graph_gives_the_same_results failed" in graphs.reason
    assert "masks differ" in graphs.reason
    thousand = _claim(report.claims, "thousand-frames")
    assert thousand.tests[0].figures() == {"host_rss_growth_mib": 0.25}
    assert [t.function for t in report.other_tests] == ["test_something_else"]
    data = json.loads((tmp_path / "out" / "selftest.json").read_text())
    assert data["suite"]["ended"] == "exit status 1"
    assert "host_rss_growth_mib=0.25" in (tmp_path / "out" / "selftest.md").read_text()
    # the quick claims ran first, the zoo last (RUN_ORDER)
    order = json.loads((tmp_path / "out" / selftest.COLLECTED_JSON).read_text())
    assert order[0].endswith("test_cuda_graph_gives_the_same_results")
    assert order[-1].endswith("test_zoo_engine_matches_onnxruntime_and_pytorch[int8]")


@pytest.mark.slow
def test_a_suite_that_crashes_fails_its_claims(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(selftest, "_probe", lambda: ("Stand-in GPU (sm90)", None, None))
    crash = "\n\ndef test_runtime_overhead_over_the_bare_engine():\n    import os\n    os.abort()\n"
    tests = _stand_in_suite(tmp_path / "checkout", extra=crash)
    report = selftest.run_selftest(tmp_path / "out", kernels=False, tests_dir=tests)
    pytest_claims = [r for r in report.claims if r.source == "pytest"]
    assert {r.status for r in pytest_claims} == {"failed"}
    reason = pytest_claims[0].reason
    assert (
        "ended without its report (killed by signal 6 (SIGABRT)) while running "
        f"{GPU}::test_runtime_overhead_over_the_bare_engine" in reason
    )


@pytest.mark.slow
def test_tests_the_run_never_reached_are_not_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """At its time limit the suite starts no new test; those it never reached count as not run."""
    monkeypatch.setattr(selftest, "_probe", lambda: ("Stand-in GPU (sm90)", None, None))
    pytest.importorskip("pytest_timeout", reason="--session-timeout comes from pytest-timeout")
    slow = "\n\ndef test_runtime_overhead_over_the_bare_engine():\n    import time\n    time.sleep(1.5)\n"
    tests = _stand_in_suite(tmp_path / "checkout", extra=slow)
    report = selftest.run_selftest(tmp_path / "out", kernels=False, tests_dir=tests, timeout_s=1)
    zoo = _claim(report.claims, "zoo-engines")
    assert zoo.status == "not run"
    assert "did not run: the suite stopped starting tests at its time limit (1 s)" in zoo.reason
    assert "stopped starting tests" in report.suite["ended"]


# -- the kernel check --------------------------------------------------------------------------


def test_param_fields_follow_dcn_common() -> None:
    header = (kernel_check.SRC_DIR / "dcn_common.cuh").read_text()
    struct = header.split("struct DcnParams", 1)[1].split("};", 1)[0]
    assert tuple(re.findall(r"int32_t (\w+);", struct)) == kernel_check.PARAM_FIELDS
    assert kernel_check.BINDING.is_file()
    assert "NvInfer" not in kernel_check.BINDING.read_text()


def test_kernel_cases_cover_every_attribute() -> None:
    cases = kernel_check.CASES
    assert {c.stride for c in cases} >= {(1, 1), (2, 2), (2, 1)}
    assert {p for c in cases for p in c.padding} >= {0, 1, 2}
    assert {c.dilation for c in cases} >= {(1, 1), (2, 2), (1, 2)}
    assert {c.group for c in cases} >= {1, 2} and any(c.group == c.channels > 1 for c in cases)
    assert {c.offset_group for c in cases} >= {1, 2, 4}
    assert {c.kernel for c in cases} >= {(1, 1), (3, 3), (3, 1), (5, 5)}
    assert {c.mask for c in cases} == {True, False} and {c.bias for c in cases} == {True, False}
    assert any(c.integer_offsets for c in cases) and max(c.channels for c in cases) >= 64
    assert set(kernel_check.DTYPES) == {"fp32", "fp16"}
    assert len({c.name for c in cases}) == len(cases)


def test_kernel_check_reports_not_run_without_a_cuda_device(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the kernel check would run")
    report = kernel_check.run_kernel_check()
    assert report.status == "not run" and not report.ok and not report.cases
    if torch.version.cuda is not None and kernel_check.importlib.util.find_spec("torchvision"):
        assert report.reason.startswith("no CUDA device"), report.reason
    out = tmp_path / "kernel.json"
    assert kernel_check.main(["--json", str(out)]) == kernel_check.EXIT_NOT_RUN
    data = json.loads(out.read_text())
    assert data["status"] == "not run" and data["cases"] == [] and data["reason"]


def _torchvision_forward(error: float = 0.0) -> kernel_check.Forward:
    """torchvision on the CPU standing in for the kernel (float32 inside, ``error`` added)."""
    import torch

    def forward(x: Any, weight: Any, offset: Any, mask: Any, bias: Any, case: Any) -> Any:
        def f(t: Any) -> Any:
            return None if t is None else t.float()

        inputs = {
            "x": f(x),
            "weight": f(weight),
            "offset": f(offset),
            "mask": f(mask),
            "bias": f(bias),
        }
        y = kernel_check._torchvision(inputs, case, torch.float32)
        return (y + error).to(x.dtype)

    return forward


def test_kernel_check_judges_cases_against_torchvision() -> None:
    """The harness on the CPU, with torchvision in float32 standing in for the kernel."""
    pytest.importorskip("torchvision", reason="torchvision is not installed")
    cases = [
        c for c in kernel_check.CASES if c.name in ("basic", "far-out-of-bounds", "1x1-no-mask")
    ]
    results = kernel_check.run_cases(_torchvision_forward(), device="cpu", cases=cases)
    assert [(r.case, r.dtype) for r in results] == [
        (c.name, d) for c in cases for d in ("fp32", "fp16")
    ]
    assert all(r.passed and r.max_abs_error <= r.tolerance for r in results), results
    far = next(r for r in results if r.case == "far-out-of-bounds")
    assert far.outside_fraction > 0.5 and far.shape == "1x4x6x6 -> 1x4x6x6"
    assert all(
        r.tolerance == kernel_check.TOLERANCE[r.dtype] * max(1.0, r.max_abs_reference)
        for r in results
    )
    wrong = kernel_check.run_cases(_torchvision_forward(0.05), device="cpu", cases=cases[:1])
    assert [r.passed for r in wrong] == [False, False]
    assert wrong[0].max_abs_error == pytest.approx(0.05, rel=1e-3)


@pytest.mark.slow
def test_kernel_check_binding_builds_with_torchs_loader(tmp_path: Path) -> None:
    """What the device runs first: the binding and dcn_kernels.cu through
    torch.utils.cpp_extension.load (built for sm_87 here, no GPU needed), imported, and
    its parameter marshalling checked on the host."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is a CPU-only build: no CUDA extension to build")
    from converters import plugins

    nvcc = plugins.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc is not installed (CUDA toolkit): the binding was not compiled")
    if plugins.find_cublas_include(nvcc) is None:
        pytest.skip("the cuBLAS headers (cublas_v2.h) are not installed")
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        pytest.skip("ninja is not installed: torch's extension loader needs it (pip install ninja)")
    out = tmp_path / "build-only.json"
    cmd = [
        sys.executable, "-m", "converters.plugins.kernel_check", "--build-only", "--arch", "8.7",
        "--build-dir", str(tmp_path / "build"), "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert "built and imported" in data["reason"] and data["build_seconds"] > 0, data
    assert list((tmp_path / "build").glob("edgeseg_dcn_kernel_check*.so"))


@pytest.mark.slow
def test_selftest_runs_the_kernel_check_in_a_subprocess(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch is not installed")
    data, failure = selftest._kernel_check(tmp_path, say=lambda message: None)
    assert failure is None and data is not None
    result = _claim(judge_claims([], data), "dcn-kernels")
    if data["status"] == "not run":
        assert result.status == "not run" and result.reason == data["reason"]
    else:  # a CUDA machine: the figures are the kernel check's own
        assert result.status in ("verified", "failed") and data["cases"]


@pytest.mark.slow
def test_a_test_running_past_the_limit_is_interrupted_and_the_report_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Past the time limit and its grace the run gets SIGINT: pytest still writes its junit
    XML, so what ran counts, and what did not is not run."""
    monkeypatch.setattr(selftest, "_probe", lambda: ("Stand-in GPU (sm90)", None, None))
    monkeypatch.setattr(selftest, "KILL_GRACE_S", 1.0)
    # a test that would run for 5 minutes: the run ends long before it could have finished
    hang = "\n\ndef test_runtime_overhead_over_the_bare_engine():\n    import time\n    time.sleep(300)\n"
    tests = _stand_in_suite(tmp_path / "checkout", extra=hang)
    started = time.perf_counter()
    # as under nohup or a background CI job: SIGINT ignored here, and so in children by default
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # 15 s: long enough for the stand-in suite's collection on a loaded machine (with 1 s, CI on
        # 2 busy cores interrupted pytest while it was still collecting, before any test ran)
        report = selftest.run_selftest(tmp_path / "out", kernels=False, tests_dir=tests, timeout_s=15)
    finally:
        signal.signal(signal.SIGINT, previous)
    # interrupted after 15 s + the 1 s grace, not killed INTERRUPT_GRACE_S later (without the
    # interrupt the suite would report nothing)
    assert report.suite.get("ended", "").startswith("stopped after"), report.suite
    assert "ended without its report" not in _claim(report.claims, "runtime-overhead").reason
    assert time.perf_counter() - started < 240
    status = {r.id: r.status for r in report.claims}
    assert status["cuda-graphs"] == "failed"  # ran first, reported before the interruption
    overhead = _claim(report.claims, "runtime-overhead")
    assert overhead.status == "not run"
    assert (
        "did not run: the suite was interrupted at its time limit (stopped after" in overhead.reason
    )


def test_cli_selftest_writes_the_report_and_exits_1_without_a_gpu(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgeseg.cli import cli
    from edgeseg.engines import probe_device
    from edgeseg.errors import BackendError

    try:
        probe_device(with_tensorrt=False)
    except BackendError:
        pass
    else:
        pytest.skip("this machine has a GPU: the CLI would run the whole suite")
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["selftest", "--device", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "0 of 7 claims verified, 7 not run" in result.output
    assert "not run   zoo-engines: no NVIDIA GPU" in result.output
    report = json.loads((out / "selftest.json").read_text())
    assert report["ok"] is False and {c["status"] for c in report["claims"]} == {"not run"}
    bad = CliRunner().invoke(cli, ["selftest", "--timeout", "0", "--out", str(out)])
    assert bad.exit_code == 1 and "--timeout must be > 0 seconds" in bad.output
