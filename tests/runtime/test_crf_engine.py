"""The separate CRF graph as a TensorRT engine, chained to the model's on the GPU.

The CPU tests use the stand-in tensorrt / pycuda / cuda-python modules of
``tests/converters/test_tensorrt_logic.py`` (control flow only: they record
calls and move bytes in a dict of "device memory"; nothing here says anything
about TensorRT's numbers). The stand-in model engine writes
``mask = image[..., 0] % 4`` and one-hot ``logits``/``probs``; the stand-in
CRF engine (an engine with a ``logits`` input) reads the logits at the address
bound to its ``logits`` input and moves each pixel to the next class, so a
mask of ``(image % 4 + 1) % 4`` proves that it read the model's logits where
the model wrote them.

The ``gpu`` test at the end runs the real thing on a device and compares the
chained engines' masks with ONNX Runtime's.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgeseg
from converters.tensorrt import add_engine, rebuild_engine
from edgeseg.bundle import Bundle, write_bundle
from edgeseg.engines import EngineChoice, EngineMismatchError, choose_engine, choose_engines
from edgeseg.manifest import EngineRecord, ProfileRecord
from edgeseg.runtime.backends import tensorrt as trt_backend
from tests.converters.test_tensorrt_logic import ORIN, _copy, stand_ins  # noqa: F401

CRF_SMALL = {"iterations": 1, "window": 3, "downsample": 2}
MODEL_ENGINE = "engine-orin-sm87-trt10.3.0-fp32.plan"
CRF_ENGINE = "engine-orin-sm87-trt10.3.0-fp32-crf.plan"


def _with_crf(bundle: Path, out: Path, mode: str = "separate") -> Path:
    """``bundle`` (the tiny model, 64x96, 4 classes, mask/probs/logits) with a CRF stage:
    ``separate`` adds ``crf.onnx`` (a real CRF graph, small settings); ``fused`` only
    records one (the stand-ins do not look inside graphs)."""
    from converters.crf import CRFParams, crf_graph

    loaded = Bundle.load(bundle)
    files: dict[str, bytes | Path] = {n: bundle / n for n in loaded.manifest.files}
    crf: dict[str, Any] = {"mode": mode, "params": CRF_SMALL}
    op_types = dict(loaded.manifest.op_types)
    if mode == "separate":
        h, w = loaded.manifest.input.size
        graph = crf_graph(CRFParams(**CRF_SMALL), loaded.manifest.num_classes, height=h, width=w)
        files["crf.onnx"] = graph.SerializeToString()
        crf["graph"] = "crf.onnx"
        op_types["crf.onnx"] = tuple(sorted({n.op_type for n in graph.graph.node}))
    manifest = loaded.manifest.replace(crf=crf, op_types=op_types)
    return write_bundle(out, manifest, files).path


@pytest.fixture
def crf_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    return _with_crf(tiny_bundle, tmp_path / "crf")


def _frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 96, 3), dtype=np.uint8)


def _counting(calls: list[tuple[str, str]]) -> Any:
    """edgeseg's builder (:func:`rebuild_engine`), counting the engines it is asked for."""

    def builder(bundle: Bundle, choice: EngineChoice) -> tuple[Bundle, EngineRecord]:
        calls.append((choice.stage, choice.precision))
        return rebuild_engine(bundle, choice)

    return builder


def _model_engine_only(path: Path) -> Bundle:
    """The bundle with its model engine for ORIN and no CRF engine (as a bundle built before
    CRF engines existed has)."""
    loaded = Bundle.load(path)
    bundle, _ = rebuild_engine(loaded, choose_engine(loaded.manifest, ORIN, "fp32"))
    assert [e.stage for e in bundle.manifest.engines] == ["model"]
    return bundle


# -- the bundle: both engines recorded ------------------------------------------------------------


def test_engine_step_builds_the_crf_engine_and_the_manifest_records_both(
    stand_ins: types.SimpleNamespace,  # noqa: F811
    crf_bundle: Path,
) -> None:
    """``add_engine`` (``edgeseg engine``, build's engine step) adds the CRF graph's engine in
    the same rewrite; the manifest says which graph each engine runs."""
    said: list[str] = []
    bundle = add_engine(crf_bundle, device=ORIN, progress=said.append)
    model, crf = bundle.manifest.engines
    assert (model.stage, model.graph, model.precision, model.file) == (
        "model",
        "model.onnx",
        "fp32",
        MODEL_ENGINE,
    )
    assert (crf.stage, crf.graph, crf.precision, crf.file) == (
        "crf",
        "crf.onnx",
        "fp32",
        CRF_ENGINE,
    )
    assert crf.graph_sha256 == bundle.manifest.files["crf.onnx"].sha256
    assert crf.profile == ProfileRecord((64, 96), (64, 96), (64, 96)) and crf.dla_core is None
    assert crf.inspector in bundle.manifest.files and CRF_ENGINE in bundle.manifest.files
    assert ("parse", "crf.onnx") in stand_ins.trt.calls
    assert any("building the CRF engine from crf.onnx" in m for m in said)
    assert any(f"and {CRF_ENGINE} into" in m for m in said)
    # on disk: a model engine's record is as before (no 'stage' key), the CRF's says so
    records = json.loads((bundle.path / "manifest.json").read_text())["engines"]
    assert "stage" not in records[0] and records[1]["stage"] == "crf"
    assert crf.describe().startswith(f"{CRF_ENGINE}: fp32 CRF on Orin (nvgpu) sm87 (GPU)")
    pair = choose_engines(bundle.manifest, ORIN, "fp32", crf=True)
    assert [c.action for c in pair if c is not None] == ["use", "use"]
    assert pair[1] is not None and pair[1].record == crf
    # another engine for this device keeps the CRF engine that fits it: not built again
    parsed = stand_ins.trt.calls.count(("parse", "crf.onnx"))
    again = add_engine(bundle.path, device=ORIN)
    assert stand_ins.trt.calls.count(("parse", "crf.onnx")) == parsed
    assert [e.file for e in again.manifest.engines] == [CRF_ENGINE, MODEL_ENGINE]
    # doctor --bundle reports both choices
    from edgeseg import doctor

    check = doctor.probe_bundle(doctor._Facts(bundle=again.path, device=ORIN))
    assert check.status == "ok" and check.data == {"action": "use", "engines": 2, "crf_action": "use"}
    assert "; CRF engine: use: " in check.detail


def test_a_fused_crf_gets_no_engine_of_its_own(
    stand_ins: types.SimpleNamespace,  # noqa: F811
    tiny_bundle: Path,
    tmp_path: Path,
) -> None:
    fused = _with_crf(tiny_bundle, tmp_path / "fused", mode="fused")
    bundle = add_engine(fused, device=ORIN)
    assert [e.stage for e in bundle.manifest.engines] == ["model"]
    assert choose_engines(bundle.manifest, ORIN, "fp32", crf=True)[1] is None
    with edgeseg.Segmenter(fused, backend="tensorrt") as seg:
        assert type(seg._backend) is trt_backend.TensorRTBackend and seg._crf_chain is None
        np.testing.assert_array_equal(seg(_frame()).mask, _frame()[..., 0] % 4)


# -- the runtime: logits stay in device memory ----------------------------------------------------


def _copies(driver: Any, kind: str) -> list[tuple[str, int, int, int]]:
    return [e for e in driver.log if e[0] == kind]


def test_the_crf_engine_reads_the_model_logits_in_device_memory(
    stand_ins: types.SimpleNamespace,  # noqa: F811
    crf_bundle: Path,
) -> None:
    """The CRF engine's ``logits``/``image`` addresses are the model engine's device buffers;
    per frame one host-to-device copy (the image) and device-to-host copies of the CRF's
    mask and probs only; both engines and every copy on one stream."""
    add_engine(crf_bundle, device=ORIN)
    driver, trt = stand_ins.driver, stand_ins.trt
    with edgeseg.Segmenter(crf_bundle, backend="tensorrt", outputs=["probs"]) as seg:
        chain = seg._crf_chain
        assert chain is not None and chain is seg._backend and seg._crf_backend is None
        model, crf = chain.model, chain.crf
        assert model.engine_path.name == MODEL_ENGINE and crf.engine_path.name == CRF_ENGINE
        logits = model.device_address("logits")
        assert logits == int(model._tensors["logits"].device)
        driver.log.clear()
        trt.enqueued.clear()
        frame = _frame(1)
        result = seg(frame)
        # the stand-in CRF moved each class of the model's logits to the next one
        np.testing.assert_array_equal(result.mask, (frame[..., 0] % 4 + 1) % 4)
        assert result.probs is not None
        np.testing.assert_array_equal(result.probs.argmax(axis=0), result.mask)
        bound = crf._context.addresses
        assert bound["logits"] == logits
        assert bound["image"] == model.device_address("image")
        assert bound["logits"] == model._context.addresses["logits"]
        # host <-> device: the image in, the CRF's mask and probs out; the logits never
        htod, dtoh = _copies(driver, "htod"), _copies(driver, "dtoh")
        assert [c[1] for c in htod] == [model.device_address("image")]
        out = {c[1] for c in dtoh}
        assert out == {crf.device_address("mask"), crf.device_address("probs")}
        assert logits not in out and model.device_address("mask") not in out
        # one stream: the model's launch, then the CRF's, and every copy
        stream = model.stream.handle
        assert trt.enqueued == [(("image",), stream), (("image", "logits"), stream)]
        assert crf.stream is model.stream
        assert {c[3] for c in htod + dtoh} == {stream}
        assert "crf" in result.timings and "infer" in result.timings
        assert set(chain.last_timings) == {"h2d", "compute", "crf", "d2h"}
        # logits asked for by name come back from the model's buffer
        driver.log.clear()
        values = chain.infer({"image": frame[None]}, ["mask", "logits"])
        assert {c[1] for c in _copies(driver, "dtoh")} == {crf.device_address("mask"), logits}
        np.testing.assert_array_equal(values["logits"][0].argmax(axis=0), frame[..., 0] % 4)
    assert not driver.MEMORY and not driver.contexts  # every buffer freed, context popped


def test_cuda_graph_captures_both_engines_in_one_graph(
    stand_ins: types.SimpleNamespace,  # noqa: F811
    crf_bundle: Path,
) -> None:
    add_engine(crf_bundle, device=ORIN)
    cudart = stand_ins.cudart
    frame = _frame(2)
    with edgeseg.Segmenter(crf_bundle, backend="tensorrt", cuda_graph=True) as seg:
        chain = seg._crf_chain
        assert chain is not None
        first = seg(frame)
        assert chain.cuda_graph_active and len(cudart.captured) == 2  # the model's, the CRF's
        assert not chain.model.cuda_graph_active  # the chain captured, not the model backend
        second = seg(frame)
        assert cudart.launches == 1
        np.testing.assert_array_equal(first.mask, second.mask)
        np.testing.assert_array_equal(second.mask, (frame[..., 0] % 4 + 1) % 4)
        assert "crf" not in chain.last_timings and "crf" not in second.timings
        assert "CUDA graph" in chain.description
    assert cudart.destroyed == ["exec", "graph"]


def test_crf_false_opens_no_crf_engine(
    stand_ins: types.SimpleNamespace,  # noqa: F811
    crf_bundle: Path,
) -> None:
    calls: list[tuple[str, str]] = []
    frame = _frame(3)
    with edgeseg.Segmenter(
        crf_bundle, backend="tensorrt", crf=False, engine_builder=_counting(calls)
    ) as seg:
        assert not seg.crf and seg._crf_chain is None and seg._crf_backend is None
        assert type(seg._backend) is trt_backend.TensorRTBackend
        result = seg(frame)
    np.testing.assert_array_equal(result.mask, frame[..., 0] % 4)  # the model's own mask
    assert "crf" not in result.timings
    assert calls == [("model", "fp32")]  # no CRF engine built either
    assert [inputs for inputs, _ in stand_ins.trt.enqueued] == [("image",)]
    assert [e.stage for e in Bundle.load(crf_bundle).manifest.engines] == ["model"]


# -- a missing CRF engine: built through the injected builder, or refused -------------------------


def test_missing_engines_are_built_through_the_injected_builder(
    stand_ins: types.SimpleNamespace,  # noqa: F811
    crf_bundle: Path,
) -> None:
    calls: list[tuple[str, str]] = []
    with edgeseg.Segmenter(crf_bundle, backend="tensorrt", engine_builder=_counting(calls)) as seg:
        assert seg._crf_chain is not None
        assert [e.stage for e in seg.bundle.manifest.engines] == ["model", "crf"]
    assert calls == [("model", "fp32"), ("crf", "fp32")]  # one call per engine, in that order
    with edgeseg.Segmenter(crf_bundle, backend="tensorrt", engine_builder=_counting(calls)):
        pass
    assert len(calls) == 2  # both exist now: nothing built


def test_a_missing_crf_engine_alone_is_built_or_refused(
    stand_ins: types.SimpleNamespace,  # noqa: F811
    crf_bundle: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bundle with only its model engine: the builder is asked for the CRF's; with
    building off the TensorRT backend is refused by name, and auto runs on onnxruntime."""
    model_only = _model_engine_only(crf_bundle)
    refused = _copy(model_only.path, tmp_path / "refused")
    with pytest.raises(
        EngineMismatchError,
        match=r"has no CRF engine; engine building is off \(engine_builder=None\)",
    ):
        edgeseg.Segmenter(refused, backend="tensorrt", engine_builder=None)
    with edgeseg.Segmenter(refused, engine_builder=None) as seg:  # auto
        assert seg.backend_name == "onnxruntime" and seg._crf_backend is not None
    assert "has no CRF engine; engine building is off" in caplog.text
    calls: list[tuple[str, str]] = []
    with edgeseg.Segmenter(
        model_only.path, backend="tensorrt", engine_builder=_counting(calls)
    ) as seg:
        assert seg._crf_chain is not None
        np.testing.assert_array_equal(seg(_frame(4)).mask, (_frame(4)[..., 0] % 4 + 1) % 4)
    assert calls == [("crf", "fp32")]


def test_the_chain_refuses_a_crf_engine_that_does_not_fit_the_model(
    stand_ins: types.SimpleNamespace,  # noqa: F811
    crf_bundle: Path,
) -> None:
    """A CRF engine of another input size is refused when the pair opens, naming both shapes;
    the model backend it was given is closed, and so is the CRF engine."""
    bundle = add_engine(crf_bundle, device=ORIN)
    plan = json.loads((bundle.path / CRF_ENGINE).read_bytes())
    for name, _, dims in plan["inputs"]:
        if name == "image":
            dims[2] = 48
    model = trt_backend.TensorRTBackend(bundle.path / MODEL_ENGINE)
    with pytest.raises(
        edgeseg.errors.BackendError,
        match=r"takes 'image' of shape \(1, 64, 48, 3\), but the model engine "
        r"engine-orin-sm87-trt10.3.0-fp32.plan has \(1, 64, 96, 3\)",
    ):
        trt_backend.TensorRTCrfChain(model, json.dumps(plan).encode())
    with pytest.raises(edgeseg.errors.BackendError, match="is closed"):
        model.infer({"image": _frame()[None]})
    assert not stand_ins.driver.MEMORY and not stand_ins.driver.contexts


# -- on a device ----------------------------------------------------------------------------------


@pytest.fixture
def needs_gpu() -> None:
    pytest.importorskip("tensorrt", reason="needs TensorRT (see edgeseg doctor)")
    pytest.importorskip("pycuda.driver", reason="needs pycuda: pip install pycuda")


@pytest.fixture
def gpu_crf_bundle(needs_gpu: None, tmp_path: Path) -> Iterator[Path]:
    pytest.importorskip("torch", reason="building the bundle needs the build extra (torch)")
    from tests.conftest import tiny_module

    bundle = edgeseg.build(
        tiny_module(),
        tmp_path / "crf-gpu",
        input_size=(64, 96),
        num_classes=4,
        num_samples=2,
        crf="separate",
        outputs=("mask", "probs"),
        target="cpu",
    )
    yield add_engine(bundle.path, config={"opt_level": 2}).path


@pytest.mark.gpu
def test_gpu_chained_crf_engine_matches_onnxruntime(
    gpu_crf_bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    """On a device: the model and CRF engines chained on the GPU give ONNX Runtime's masks
    (>= 0.995 of pixels, the FP32 target of tests/converters/test_tensorrt_gpu.py) and
    probabilities; the CRF engine's logits address is the model's logits buffer and no
    device-to-host copy reads it; a CUDA graph of both engines (when cuda-python is
    installed) gives the same masks. The figures are printed (``[gpu]``) and recorded with
    ``record_property`` (junit XML, read by ``converters/selftest.py``)."""
    import pycuda.driver as cuda

    from converters.samples import synthetic_images
    from edgeseg.errors import MissingDependencyError
    from edgeseg.runtime.backends.tensorrt_lib import import_cudart

    manifest = Bundle.load(gpu_crf_bundle).manifest
    assert [e.stage for e in manifest.engines] == ["model", "crf"]
    frames = synthetic_images(6, (64, 96), seed=21)
    with edgeseg.Segmenter(gpu_crf_bundle, backend="onnxruntime", outputs=["probs"]) as ort:
        reference = [ort(f) for f in frames]
    modes = [False]
    try:
        import_cudart()
        modes.append(True)
    except MissingDependencyError as err:
        print(f"[gpu] chained CRF engine: CUDA graph not checked ({err})")
    sources: list[int] = []
    copy = cuda.memcpy_dtoh_async

    def counted(host: Any, device: Any, stream: Any = None) -> Any:
        sources.append(int(device))
        return copy(host, device, stream)

    masks: dict[bool, list[np.ndarray]] = {}
    for graph in modes:
        with edgeseg.Segmenter(
            gpu_crf_bundle,
            backend="tensorrt",
            outputs=["probs"],
            engine_builder=None,
            cuda_graph=graph,
        ) as seg:
            chain = seg._crf_chain
            assert chain is not None
            logits = chain.model.device_address("logits")
            assert chain.crf._context.get_tensor_address("logits") == logits
            assert chain.crf._context.get_tensor_address("image") == (
                chain.model.device_address("image")
            )
            monkeypatch.setattr(cuda, "memcpy_dtoh_async", counted)
            sources.clear()
            got = [seg(f) for f in frames]
            monkeypatch.setattr(cuda, "memcpy_dtoh_async", copy)
            assert logits not in sources and len(sources) == 2 * len(frames)  # mask, probs
            if graph:
                assert chain.cuda_graph_active, chain.cuda_graph_error
            masks[graph] = [r.mask for r in got]
            agreement = float(
                np.mean([(a.mask == b.mask).mean() for a, b in zip(got, reference, strict=True)])
            )
            probs_error = max(
                float(np.abs(a.probs - b.probs).max()) for a, b in zip(got, reference, strict=True)
            )
            print(
                f"[gpu] chained CRF engine (cuda_graph={graph}, active "
                f"{chain.cuda_graph_active}): agreement with onnxruntime {agreement:.4%}, "
                f"max |probs difference| {probs_error:.2e}, GPU ms {chain.last_timings}"
            )
            tag = "graph" if graph else "plain"
            figures: dict[str, object] = {
                f"{tag}_agreement": round(agreement, 6),
                f"{tag}_max_probs_error": round(probs_error, 6),
                **{f"{tag}_{k}_ms": round(v, 4) for k, v in chain.last_timings.items()},
            }
            for name, value in figures.items():
                record_property(name, value)
            assert agreement >= 0.995
            assert probs_error <= 0.02
    if True in masks:
        for off, on in zip(masks[False], masks[True], strict=True):
            np.testing.assert_array_equal(off, on)
