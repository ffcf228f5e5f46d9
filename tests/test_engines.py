"""Engines as data (edgeseg/engines.py) and the backend choice, on the CPU.

Names, :func:`choose_engine`, :func:`resolve_engine` with an injected builder,
and :func:`choose_backend` / :func:`open_backend` are pure functions of the
manifest's typed engine records and a device; no TensorRT is needed.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import edgeseg
from edgeseg import engines
from edgeseg.bundle import Bundle, InputSpec, Manifest, write_bundle
from edgeseg.engines import (
    DeviceInfo,
    EngineChoice,
    EngineMismatchError,
    choose_engine,
    choose_engines,
    engine_file_name,
    inspector_file_name,
    resolve_engine,
    sanitize_gpu_name,
)
from edgeseg.errors import BackendError, BundleError, ConfigError, MissingDependencyError
from edgeseg.manifest import EngineRecord, ProfileRecord
from edgeseg.runtime import backends

ORIN = DeviceInfo("Orin (nvgpu)", (8, 7), "10.3.0.30")
H100 = DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0), "10.13.0.35")
STATIC = ProfileRecord((64, 96), (64, 96), (64, 96))


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("Orin (nvgpu)", "orin"),
        ("Orin", "orin"),
        ("NVIDIA H100 80GB HBM3", "h100-80gb-hbm3"),
        ("NVIDIA GeForce RTX 4090", "geforce-rtx-4090"),
        ("NVIDIA Thor", "thor"),
        ("Tesla T4", "tesla-t4"),
        ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada-generation"),
        ("  ", "gpu"),
    ],
)
def test_gpu_names_are_sanitized(name: str, token: str) -> None:
    assert sanitize_gpu_name(name) == token


def test_engine_file_names() -> None:
    assert ORIN.sm == "sm87" and H100.sm == "sm90"
    assert engine_file_name(ORIN, "fp16") == "engine-orin-sm87-trt10.3.0-fp16.plan"
    assert engine_file_name(H100, "int8") == "engine-h100-80gb-hbm3-sm90-trt10.13.0-int8.plan"
    assert engine_file_name(ORIN, "int8", dla_core=1) == "engine-orin-sm87-trt10.3.0-int8-dla1.plan"
    assert (
        inspector_file_name("engine-orin-sm87-trt10.3.0-fp16.plan")
        == "engine-orin-sm87-trt10.3.0-fp16.json"
    )
    assert (
        engine_file_name(DeviceInfo("B200", (10, 0), "11.4.1"), "fp16")
        == "engine-b200-sm100-trt11.4.1-fp16.plan"
    )
    with pytest.raises(ConfigError, match="needs a TensorRT version; Orin has none"):
        engine_file_name(DeviceInfo("Orin", (8, 7)), "fp16")
    assert engine_file_name(ORIN, "fp32", stage="crf") == "engine-orin-sm87-trt10.3.0-fp32-crf.plan"


def test_probe_without_a_driver_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str, *args: Any, **kwargs: Any) -> Any:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    with pytest.raises(
        BackendError, match=r"the NVIDIA driver library \(libcuda.so.1\) is not installed"
    ):
        engines.probe_device()


def test_plugin_names_match_the_plugin_package() -> None:
    plugins = pytest.importorskip("converters.plugins")
    assert plugins.PLUGIN_OP == engines.PLUGIN_OP == "EdgesegDeformConv"
    assert plugins.LIBRARY_NAME == engines.PLUGIN_LIBRARY == "libedgeseg_plugins.so"


# -- choose_engine --------------------------------------------------------------------------------


def _record(
    device: DeviceInfo,
    precision: str = "fp16",
    dla_core: int | None = None,
    graph_sha: str = "aa" * 32,
) -> EngineRecord:
    assert device.trt_version is not None
    return EngineRecord(
        file=engine_file_name(device, precision, dla_core),
        gpu=device.gpu,
        sm=device.sm,
        trt_version=device.trt_version,
        precision=precision,
        graph="model.fp16.onnx",
        graph_sha256=graph_sha,
        profile=STATIC,
        dla_core=dla_core,
    )


def _manifest(*records: EngineRecord, graph_sha: str = "aa" * 32) -> Manifest:
    files: dict[str, Any] = {
        "model.onnx": {"sha256": "ff" * 32, "bytes": 1},
        "model.fp16.onnx": {"sha256": graph_sha, "bytes": 1},
    }
    for r in records:
        files[r.file] = {"sha256": "00" * 32, "bytes": 1}
    return Manifest.create(
        model={"name": "toy", "source": "module"},
        classes=("a", "b"),
        palette=((0, 0, 0), (9, 9, 9)),
        input=InputSpec(size=(64, 96)),
        precision="fp16",
        opset=19,
        graphs={"fp32": "model.onnx", "fp16": "model.fp16.onnx"},
        files=files,
        engines=records,
    )


def test_matching_engine_is_used() -> None:
    manifest = _manifest(_record(H100), _record(ORIN))
    choice = choose_engine(manifest, ORIN, "fp16")
    assert choice.action == "use" and choice.record is not None
    assert choice.record.file == "engine-orin-sm87-trt10.3.0-fp16.plan"
    assert "built for this orin sm87 with TensorRT 10.3.0.30" in choice.reason
    assert choice.plan is None and choice.device == ORIN and choice.precision == "fp16"


@pytest.mark.parametrize(
    ("device", "named"),
    [
        (
            DeviceInfo("NVIDIA Thor", (11, 0), "10.3.0.30"),
            ["GPU orin (this one is thor)", "sm87 (this one is sm110)"],
        ),
        (
            DeviceInfo("Orin", (8, 7), "10.13.0.35"),
            ["TensorRT 10.3.0.30 (this one has 10.13.0.35)"],
        ),
        (DeviceInfo("Orin", (8, 7), "10.3.0.26"), ["TensorRT 10.3.0.30 (this one has 10.3.0.26)"]),
    ],
)
def test_other_device_or_version_rebuilds_when_tensorrt_is_here(
    device: DeviceInfo, named: list[str]
) -> None:
    choice = choose_engine(_manifest(_record(ORIN)), device, "fp16", where="road.edgeseg")
    assert choice.action == "build"
    assert choice.record is not None and choice.record.gpu == "orin"  # the engine it replaces
    assert (
        "road.edgeseg's fp16 engine engine-orin-sm87-trt10.3.0-fp16.plan was built for orin sm87"
        in choice.found
    )
    for text in named:
        assert text in choice.found
    assert choice.plan == f"building one from model.fp16.onnx with TensorRT {device.trt_version}"
    assert choice.reason == f"{choice.found}; {choice.plan}"


def test_without_tensorrt_a_mismatch_names_both_versions() -> None:
    here = DeviceInfo("Orin", (8, 7), None)
    with pytest.raises(
        EngineMismatchError,
        match=r"built for orin sm87 with TensorRT 10\.3\.0\.30, not "
        r"for this orin sm87 with no TensorRT.*TensorRT is not installed here",
    ):
        choose_engine(_manifest(_record(ORIN)), here, "fp16")
    with pytest.raises(EngineMismatchError, match="has no fp16 engine; TensorRT is not installed"):
        choose_engine(_manifest(), here, "fp16")
    assert issubclass(EngineMismatchError, BackendError)


def test_missing_or_stale_engine_is_built() -> None:
    choice = choose_engine(_manifest(), ORIN, "fp16", where="road.edgeseg")
    assert choice.action == "build" and choice.record is None
    assert choice.reason.startswith(
        "road.edgeseg has no fp16 engine; building one from model.fp16.onnx"
    )
    stale = choose_engine(_manifest(_record(ORIN, graph_sha="bb" * 32)), ORIN, "fp16")
    assert (
        stale.action == "build"
        and "graph model.fp16.onnx as it was before it changed" in stale.reason
    )
    assert choose_engine(_manifest(_record(ORIN, "int8")), ORIN, "fp16").action == "build"


def test_dla_engines_are_chosen_only_for_their_core() -> None:
    manifest = _manifest(_record(ORIN, dla_core=0))
    assert choose_engine(manifest, ORIN, "fp16").action == "build"  # GPU wanted: no GPU engine
    assert choose_engine(manifest, ORIN, "fp16", dla_core=0).action == "use"
    assert "for DLA core 1" in choose_engine(manifest, ORIN, "fp16", dla_core=1).reason


# -- the model's engine and the separate CRF's, chosen together ------------------------------------


def _crf_record(device: DeviceInfo, graph_sha: str = "cc" * 32) -> EngineRecord:
    assert device.trt_version is not None
    return EngineRecord(
        file=engine_file_name(device, "fp32", stage="crf"),
        gpu=device.gpu,
        sm=device.sm,
        trt_version=device.trt_version,
        precision="fp32",
        graph="crf.onnx",
        graph_sha256=graph_sha,
        profile=STATIC,
        stage="crf",
    )


def _crf_manifest(*records: EngineRecord, crf_sha: str = "cc" * 32) -> Manifest:
    """:func:`_manifest` with a separate CRF graph (``crf.onnx``) reading the model's logits."""
    base = _manifest(*records)
    files = {**base.files, "crf.onnx": {"sha256": crf_sha, "bytes": 1}}
    return base.replace(
        outputs=("mask", "logits"), crf={"mode": "separate", "graph": "crf.onnx"}, files=files
    )


def test_model_and_crf_engines_are_chosen_together_for_one_device() -> None:
    manifest = _crf_manifest(_record(H100), _crf_record(H100), _record(ORIN), _crf_record(ORIN))
    for device in (ORIN, H100):
        model, crf = choose_engines(manifest, device, "fp16", crf=True)
        assert crf is not None and model.action == crf.action == "use"
        assert model.record == _record(device) and crf.record == _crf_record(device)
        assert (model.stage, crf.stage, crf.precision, crf.dla_core) == (
            "model",
            "crf",
            "fp32",
            None,
        )
    assert choose_engines(manifest, ORIN, "fp16")[1] is None  # crf=False: no CRF engine
    assert (
        choose_engines(_manifest(_record(ORIN)), ORIN, "fp16", crf=True)[1] is None
    )  # no crf.onnx
    # a model engine on a DLA core pairs with the CRF engine on the GPU of the same device
    dla = _crf_manifest(_record(ORIN, dla_core=0), _crf_record(ORIN))
    model, crf = choose_engines(dla, ORIN, "fp16", dla_core=0, crf=True)
    assert crf is not None and (model.action, crf.action) == ("use", "use")


def test_a_crf_engine_is_never_taken_for_a_model_engine_nor_the_reverse() -> None:
    only_crf = _crf_manifest(_crf_record(ORIN))
    fp32 = choose_engine(only_crf, ORIN, "fp32", where="road.edgeseg")
    assert fp32.action == "build" and fp32.record is None
    assert fp32.reason == (
        "road.edgeseg has no fp32 engine; building one from model.onnx with TensorRT 10.3.0.30"
    )
    fp32_model = dataclasses.replace(
        _record(ORIN, "fp32"), graph="model.onnx", graph_sha256="ff" * 32
    )
    model, crf = choose_engines(
        _crf_manifest(fp32_model), ORIN, "fp32", crf=True, where="road.edgeseg"
    )
    assert crf is not None and model.action == "use" and crf.action == "build"
    assert crf.record is None and crf.stage == "crf"
    assert crf.reason == (
        "road.edgeseg has no CRF engine; building one from crf.onnx with TensorRT 10.3.0.30"
    )


def test_a_crf_engine_of_another_tensorrt_or_a_changed_crf_graph_is_rebuilt() -> None:
    newer = DeviceInfo("Orin (nvgpu)", (8, 7), "10.3.0.31")
    model, crf = choose_engines(
        _crf_manifest(_record(ORIN), _crf_record(ORIN)), newer, "fp16", crf=True, where="r"
    )
    assert crf is not None and model.action == crf.action == "build"
    assert crf.record == _crf_record(ORIN)  # the one it replaces (its settings are kept)
    assert "r's CRF engine engine-orin-sm87-trt10.3.0-fp32-crf.plan was built for orin sm87" in (
        crf.found
    )
    assert "TensorRT 10.3.0.30 (this one has 10.3.0.31)" in crf.found
    stale = _crf_manifest(_record(ORIN), _crf_record(ORIN), crf_sha="dd" * 32)
    _, crf = choose_engines(stale, ORIN, "fp16", crf=True)
    assert crf is not None and crf.action == "build"
    assert "graph crf.onnx as it was before it changed" in crf.found
    with pytest.raises(
        EngineMismatchError, match="has no CRF engine; TensorRT is not installed here"
    ):
        choose_engine(_crf_manifest(), DeviceInfo("Orin", (8, 7)), "fp32", stage="crf")


def test_crf_engine_choices_that_make_no_sense_are_refused() -> None:
    with pytest.raises(ConfigError, match="has no separate CRF graph to build an engine of"):
        choose_engine(_manifest(), ORIN, "fp32", stage="crf")
    with pytest.raises(ConfigError, match="crf.onnx is fp32 and its engine runs on the GPU; asked"):
        choose_engine(_crf_manifest(), ORIN, "fp16", stage="crf")
    with pytest.raises(ConfigError, match="on DLA core 0"):
        choose_engine(_crf_manifest(), ORIN, "fp32", dla_core=0, stage="crf")
    with pytest.raises(ConfigError, match="an engine's stage is model or crf, got 'post'"):
        choose_engine(_crf_manifest(), ORIN, "fp32", stage="post")


# -- engine records in bundles --------------------------------------------------------------------


def _engine_bundle(
    tmp_path: Path, name: str, *records: EngineRecord, files: dict[str, bytes]
) -> Bundle:
    base = Manifest.create(
        model={"name": "toy", "source": "module"},
        classes=("a",),
        palette=((0, 0, 0),),
        input=InputSpec(size=(8, 8)),
        precision="fp32",
        opset=19,
        graphs={"fp32": "model.onnx"},
        engines=records,
    )
    return write_bundle(tmp_path / name, base, files)


def test_engine_records_round_trip_and_validation(tmp_path: Path) -> None:
    import hashlib

    graph = b"g"
    record = EngineRecord(
        file="engine-orin-sm87-trt10.3.0-fp32.plan",
        inspector="engine-orin-sm87-trt10.3.0-fp32.json",
        gpu="orin",
        sm="sm87",
        trt_version="10.3.0.30",
        precision="fp32",
        graph="model.onnx",
        graph_sha256=hashlib.sha256(graph).hexdigest(),
        profile=ProfileRecord((8, 8), (8, 8), (8, 8)),
    )
    files = {"model.onnx": graph, record.file: b"plan", str(record.inspector): b"{}"}
    written = _engine_bundle(tmp_path, "e", record, files=files)
    loaded = Bundle.load(written.path)
    assert loaded.manifest.engines == (record,)
    assert choose_engine(loaded.manifest, ORIN, "fp32").action == "use"
    with pytest.raises(
        BundleError, match=r"engines\[0\].file 'engine-orin.*fp32.plan' is not listed"
    ):
        _engine_bundle(tmp_path, "f", record, files={"model.onnx": graph})
    with pytest.raises(
        BundleError, match=r"engines\[0\].inspector 'engine-orin.*fp32.json' is not listed"
    ):
        _engine_bundle(tmp_path, "g", record, files={"model.onnx": graph, record.file: b"plan"})
    with pytest.raises(BundleError, match="listed twice"):
        _engine_bundle(tmp_path, "h", record, record, files=files)
    data = loaded.manifest.to_json()
    for edit, message in [
        (
            {"precision": "fp64"},
            r"engines\[0\].precision must be one of fp32, fp16, int8, got 'fp64'",
        ),
        ({"opt_level": 9}, r"engines\[0\].opt_level must be <= 5, got 9"),
        ({"dla_core": -1}, r"engines\[0\].dla_core must be >= 0, got -1"),
        ({"sm": "87"}, r"engines\[0\].sm '87' is not of the form"),
        ({"file": "../x.plan"}, r"engines\[0\].file '../x.plan' is not of the form"),
        (
            {"profile": {"min": [16, 16], "opt": [8, 8], "max": [8, 8]}},
            "must keep min <= opt <= max",
        ),
        ({"gpu_name_typo": "Orin"}, r"engines\[0\]: unknown key\(s\) gpu_name_typo"),
    ]:
        bad = {**data, "engines": [{**data["engines"][0], **edit}]}
        with pytest.raises(BundleError, match=message):
            Manifest.from_json(bad)
    del data["engines"]  # bundles written before engines existed still load
    assert Manifest.from_json(data).engines == ()


def test_crf_engine_records_round_trip_and_validation(tmp_path: Path) -> None:
    """Each record says which graph its engine runs; a model engine's record is written as
    before (no ``stage`` key), so schema-2 manifests of either kind load."""
    import hashlib

    graph, crf_graph = b"g", b"crf"
    model = EngineRecord(
        file="engine-orin-sm87-trt10.3.0-fp32.plan",
        gpu="orin",
        sm="sm87",
        trt_version="10.3.0.30",
        precision="fp32",
        graph="model.onnx",
        graph_sha256=hashlib.sha256(graph).hexdigest(),
        profile=ProfileRecord((8, 8), (8, 8), (8, 8)),
    )
    crf = dataclasses.replace(
        model,
        file="engine-orin-sm87-trt10.3.0-fp32-crf.plan",
        graph="crf.onnx",
        graph_sha256=hashlib.sha256(crf_graph).hexdigest(),
        stage="crf",
    )
    assert model.stage == "model"
    files = {"model.onnx": graph, "crf.onnx": crf_graph, model.file: b"m", crf.file: b"c"}
    manifest = Manifest.create(
        model={"name": "toy", "source": "module"},
        classes=("a",),
        palette=((0, 0, 0),),
        input=InputSpec(size=(8, 8)),
        precision="fp32",
        opset=19,
        outputs=("mask", "logits"),
        graphs={"fp32": "model.onnx"},
        crf={"mode": "separate", "graph": "crf.onnx"},
        engines=(model, crf),
    )
    written = write_bundle(tmp_path / "pair", manifest, files)
    loaded = Bundle.load(written.path)
    assert loaded.manifest.engines == (model, crf)
    on_disk = json.loads((written.path / "manifest.json").read_text())["engines"]
    assert "stage" not in on_disk[0] and on_disk[1]["stage"] == "crf"
    model_only, crf_json = loaded.manifest.to_json(), on_disk[1]
    for edit, message in [
        ({"stage": "post"}, r"engines\[1\].stage must be one of model, crf, got 'post'"),
        (
            {"graph": "model.onnx"},
            r"engines\[1\]: a crf engine's graph 'model.onnx' is not the bundle's separate crf "
            r"graph \(crf.onnx\)",
        ),
    ]:
        bad = {**model_only, "engines": [on_disk[0], {**crf_json, **edit}]}
        with pytest.raises(BundleError, match=message):
            Manifest.from_json(bad)
    fused = {**model_only, "crf": {"mode": "fused"}}
    with pytest.raises(BundleError, match=r"not the bundle's separate crf graph \(it has none\)"):
        Manifest.from_json(fused)


# -- resolving the choice: use, or build with the injected builder -------------------------------


def test_resolve_engine_uses_or_builds_through_the_injected_builder(tmp_path: Path) -> None:
    import hashlib

    graph = b"g"
    record = EngineRecord(
        file="engine-orin-sm87-trt10.3.0-fp32.plan",
        gpu="orin",
        sm="sm87",
        trt_version="10.3.0.30",
        precision="fp32",
        graph="model.onnx",
        graph_sha256=hashlib.sha256(graph).hexdigest(),
        profile=ProfileRecord((8, 8), (8, 8), (8, 8)),
    )
    empty = _engine_bundle(tmp_path, "empty", files={"model.onnx": graph})
    choice = choose_engine(empty.manifest, ORIN, "fp32")
    assert choice.action == "build"
    with pytest.raises(EngineMismatchError, match=r"has no fp32 engine; engine building is off"):
        resolve_engine(empty, choice, None)
    calls: list[EngineChoice] = []

    def builder(bundle: Bundle, asked: EngineChoice) -> tuple[Bundle, EngineRecord]:
        calls.append(asked)
        files = {"model.onnx": graph, record.file: b"plan"}
        return _engine_bundle(tmp_path, "built", record, files=files), record

    resolved = resolve_engine(empty, choice, builder)
    assert calls == [choice] and resolved.built and resolved.record == record
    assert resolved.path == resolved.bundle.path / record.file and resolved.plugins == ()
    again = choose_engine(resolved.bundle.manifest, ORIN, "fp32")
    used = resolve_engine(resolved.bundle, again, builder)
    assert again.action == "use" and not used.built and len(calls) == 1


def test_an_unwritable_bundle_is_not_built_into(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = _engine_bundle(tmp_path, "ro", files={"model.onnx": b"g"})
    choice = choose_engine(empty.manifest, ORIN, "fp32")
    monkeypatch.setattr(engines, "bundle_writable", lambda bundle: False)  # root writes anywhere

    def builder(bundle: Bundle, asked: EngineChoice) -> tuple[Bundle, EngineRecord]:
        raise AssertionError("a bundle that cannot be written is not built into")

    with pytest.raises(BackendError, match="cannot be written to add one; build it where"):
        resolve_engine(empty, choice, builder)


# -- the backend choice, made once ----------------------------------------------------------------


def test_segmenter_without_tensorrt(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "tensorrt_available", lambda: False)  # as on this CPU machine
    with edgeseg.Segmenter(tiny_bundle) as seg:
        assert seg.backend_name == "onnxruntime"
    with pytest.raises(
        MissingDependencyError,
        match=r"needs TensorRT and pycuda\. TensorRT: on Jetson it "
        r"comes with JetPack \(sudo apt install python3-libnvinfer.*pip install pycuda",
    ):
        edgeseg.Segmenter(tiny_bundle, backend="tensorrt")
    with pytest.raises(
        BackendError, match="unknown backend 'cuda'; valid: auto, onnxruntime, tensorrt"
    ):
        edgeseg.Segmenter(tiny_bundle, backend="cuda")


def test_auto_decides_once_and_keeps_onnxruntime_for_its_options(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[int] = []

    def probe(index: int = 0, **_: Any) -> DeviceInfo:
        probes.append(index)
        return ORIN

    monkeypatch.setattr(backends, "tensorrt_available", lambda: True)
    monkeypatch.setattr(backends, "probe_device", probe)
    bundle = Bundle.load(tiny_bundle)
    choice = backends.choose_backend("auto", bundle, "fp32", {"threads": 1})
    assert choice.name == "onnxruntime" and choice.why == "options threads are for onnxruntime"
    assert probes == []  # not even probed
    choice = backends.choose_backend("auto", bundle, "fp32", {"cuda_graph": True})
    assert choice.name == "tensorrt" and choice.engine is not None
    assert "has no fp32 engine; building one from model.onnx with TensorRT 10.3.0.30" in choice.why
    assert probes == [0]
    with edgeseg.Segmenter(tiny_bundle, threads=1) as seg:
        assert seg.backend_name == "onnxruntime"


def test_auto_without_a_gpu_runs_on_onnxruntime(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_gpu(*_: Any, **__: Any) -> DeviceInfo:
        raise BackendError("cuInit failed: CUDA_ERROR_NO_DEVICE (100)")

    monkeypatch.setattr(backends, "tensorrt_available", lambda: True)
    monkeypatch.setattr(backends, "probe_device", no_gpu)
    choice = backends.choose_backend("auto", Bundle.load(tiny_bundle))
    assert choice.name == "onnxruntime" and "CUDA_ERROR_NO_DEVICE" in choice.why


def test_engine_builder_none_refuses_a_missing_engine(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "tensorrt_available", lambda: True)
    monkeypatch.setattr(backends, "probe_device", lambda *a, **k: ORIN)
    monkeypatch.setattr("edgeseg.runtime.backends.tensorrt_lib.require_tensorrt", lambda: None)
    with pytest.raises(EngineMismatchError, match="has no fp32 engine; engine building is off"):
        edgeseg.Segmenter(tiny_bundle, backend="tensorrt", engine_builder=None)
    with pytest.raises(ConfigError, match="engine_builder must be 'default', None or a callable"):
        edgeseg.Segmenter(tiny_bundle, backend="tensorrt", engine_builder="mine")


def test_an_operator_the_installed_onnxruntime_cannot_run_is_named_with_the_way_out(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import onnxruntime

    from edgeseg.runtime.backends.onnxruntime import check_operators

    monkeypatch.setattr(onnxruntime, "__version__", "1.23.2")  # the last with Python 3.10 wheels
    with pytest.raises(
        BackendError,
        match=r"model.onnx uses DeformConv, which onnxruntime runs on the CPU only from 1\.31; "
        r"this is onnxruntime 1\.23\.2\. Run it with the TensorRT backend \(backend='tensorrt'\)",
    ):
        check_operators(["Conv", "DeformConv"], "model.onnx")
    check_operators(["Conv", "Resize"], "model.onnx")  # nothing it cannot run
    loaded = Bundle.load(tiny_bundle)
    files = {n: tiny_bundle / n for n in loaded.manifest.files}
    recorded = dataclasses.replace(loaded.manifest, op_types={"model.onnx": ("Cast", "DeformConv")})
    bundle = write_bundle(
        tmp_path / "dcn", recorded, files
    )  # as a deformable model's bundle records
    monkeypatch.setattr(backends, "tensorrt_available", lambda: False)
    with pytest.raises(
        BackendError, match="uses DeformConv, which onnxruntime runs on the CPU only from 1.31"
    ):
        edgeseg.Segmenter(bundle.path)
    monkeypatch.setattr(onnxruntime, "__version__", "1.31.0")
    with edgeseg.Segmenter(bundle.path) as seg:
        assert seg.backend_name == "onnxruntime"
