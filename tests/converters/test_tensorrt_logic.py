"""The TensorRT side's logic, on the CPU: profiles, names, engine choice, DLA rules, resolution.

The pure functions (profile shapes, engine file names, :func:`choose_engine`,
DLA rules, the timing-cache path, backend resolution) are tested as they are.

The tests at the end inject small *stand-in* modules for ``tensorrt``,
``pycuda.driver`` and ``cuda.bindings.runtime`` (``monkeypatch.setitem(sys.modules,
...)``). They test **control flow only**: that ``add_engine`` rewrites the
bundle with the engine, its layer information and its manifest entry; that
the backend binds, copies, reallocates and captures in the right order. The
stand-ins compute nothing like TensorRT and prove nothing about TensorRT's
API or results; that is what ``tests/test_tensorrt_gpu.py`` (``pytest -m gpu``)
and ``tools/typecheck_tensorrt.py`` are for.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgeseg
from converters.tensorrt import (
    EngineConfig,
    add_engine,
    dla_mode,
    engine_for_build,
    graph_op_types,
    image_shapes,
    profile_shapes,
    resolve_target,
    timing_cache_path,
)
from edgeseg.bundle import Bundle, InputSpec, Manifest, write_bundle
from edgeseg.engines import DeviceInfo, choose_engine, probe_device, tensorrt_version
from edgeseg.errors import (
    BackendError,
    BundleError,
    ConfigError,
    MissingDependencyError,
)
from edgeseg.manifest import EngineRecord, encode
from edgeseg.manifest import ProfileRecord as ProfileShapes
from edgeseg.runtime.backends import tensorrt as trt_backend

ORIN = DeviceInfo("Orin (nvgpu)", (8, 7), "10.3.0.30")
H100 = DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0), "10.13.0.35")


# -- profiles -------------------------------------------------------------------------------------


def test_static_profile_is_the_graph_size() -> None:
    spec = InputSpec(size=(64, 96))
    assert profile_shapes(spec) == ProfileShapes((64, 96), (64, 96), (64, 96))
    assert profile_shapes(spec).static
    same = EngineConfig(min_shape=(64, 96), opt_shape=(64, 96), max_shape=(64, 96))
    assert profile_shapes(spec, same).static
    with pytest.raises(
        ConfigError, match=r"max shape 128x128: the bundle's graph is static \(64x96\)"
    ):
        profile_shapes(spec, EngineConfig(max_shape=(128, 128)))


def test_dynamic_profile_defaults_and_overrides() -> None:
    spec = InputSpec(size=(64, 96), dynamic=True, multiple_of=4)
    assert profile_shapes(spec) == ProfileShapes((32, 48), (64, 96), (128, 192))
    big = InputSpec(size=(512, 512), dynamic=True, multiple_of=32)
    assert profile_shapes(big) == ProfileShapes((256, 256), (512, 512), (1024, 1024))
    odd = InputSpec(size=(40, 40), dynamic=True, multiple_of=16)  # half is 20: rounds up to 32
    assert profile_shapes(odd).min == (32, 32)
    got = profile_shapes(spec, EngineConfig(min_shape=(8, 8), max_shape=(256, 256)))
    assert got == ProfileShapes((8, 8), (64, 96), (256, 256))
    # a given opt outside the default range widens the defaulted bound, not the given one
    wide = profile_shapes(spec, EngineConfig(opt_shape=(256, 320)))
    assert wide.opt == (256, 320) and wide.max == (256, 320) and wide.min == (32, 48)
    assert image_shapes(profile_shapes(spec), 3) == (
        (1, 32, 48, 3),
        (1, 64, 96, 3),
        (1, 128, 192, 3),
    )
    assert encode(profile_shapes(spec)) == {
        "min": [32, 48],
        "opt": [64, 96],
        "max": [128, 192],
        "input": "image",
    }


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (EngineConfig(max_shape=(130, 192)), r"max shape 130x192: .*multiples of 4; use 132x192"),
        (EngineConfig(min_shape=(96, 96), opt_shape=(64, 96)), "min <= opt <= max"),
        (EngineConfig(opt_shape=(64, 96), max_shape=(32, 96)), "min <= opt <= max"),
    ],
)
def test_bad_profiles(config: EngineConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        profile_shapes(InputSpec(size=(64, 96), dynamic=True, multiple_of=4), config)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"workspace_mb": 0}, "workspace_mb must be a positive integer"),
        ({"opt_level": 6}, "opt_level must be an integer 0..5"),
        ({"dla_core": -1}, "dla_core must be a DLA core index"),
        ({"min_shape": (0, 4)}, "min_shape must be positive"),
        ({"max_shape": "big"}, "max_shape must be"),
        ({"deform_conv": "cuda"}, "deform_conv must be one of native, plugin"),
    ],
)
def test_engine_config_rejects_bad_values(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EngineConfig(**fields)


def test_engine_config_from_mapping_and_record() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown engine options \['workspace'\]; valid: workspace_mb"
    ):
        EngineConfig.from_mapping({"workspace": 64})
    config = EngineConfig.from_mapping({"workspace_mb": 512, "min_shape": [32, 32]})
    assert config.min_shape == (32, 32) and config.workspace_mb == 512
    record = EngineRecord(
        file="engine-orin-sm87-trt10.3.0-fp32.plan",
        gpu="orin",
        sm="sm87",
        trt_version="10.3.0.30",
        precision="fp32",
        graph="model.onnx",
        graph_sha256="aa" * 32,
        profile=ProfileShapes((32, 48), (64, 96), (128, 192)),
        workspace_mb=256,
        opt_level=4,
        dla_core=None,
        deform_conv="plugin",
    )
    again = EngineConfig.from_record(record)
    assert (again.min_shape, again.opt_shape, again.max_shape) == ((32, 48), (64, 96), (128, 192))
    assert again.workspace_mb == 256 and again.opt_level == 4 and again.deform_conv == "plugin"


def test_timing_cache_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    assert timing_cache_path(ORIN) == tmp_path / "cache" / "timing-orin-sm87-trt10.3.0.cache"
    monkeypatch.delenv("EDGESEG_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert (
        timing_cache_path(H100)
        == tmp_path / ".cache" / "edgeseg" / "timing-h100-80gb-hbm3-sm90-trt10.13.0.cache"
    )
    assert timing_cache_path(ORIN, tmp_path / "x").parent == tmp_path / "x"
    with pytest.raises(ConfigError, match="timing cache needs a TensorRT version"):
        timing_cache_path(DeviceInfo("Orin", (8, 7)))


# -- DLA rules ------------------------------------------------------------------------------------

STATIC = ProfileShapes((64, 96), (64, 96), (64, 96))


@pytest.mark.parametrize(
    ("version", "mode"),
    [
        ("10.3.0.30", "legacy-dla"),
        ("10.7.0", "legacy-dla"),
        ("10.0.1", "legacy-dla"),
        ("11.4.1", "strongly-typed"),
        ("11.5.0", "strongly-typed"),
        ("12.0.0", "strongly-typed"),
    ],
)
def test_dla_mode_by_tensorrt_version(version: str, mode: str) -> None:
    assert dla_mode(version, "fp16", STATIC, 0, dla_cores=2) == mode


@pytest.mark.parametrize("version", ["10.8.0", "10.13.0.35", "11.0.0", "11.3.1", "11.4.0"])
def test_dla_refused_where_tensorrt_has_none(version: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"TensorRT {version} cannot build for DLA: TensorRT 10\.7 .*11\.4\.1"
    ):
        dla_mode(version, "int8", STATIC, 0)


@pytest.mark.parametrize(
    ("precision", "profile", "core", "cores", "message"),
    [
        ("fp32", STATIC, 0, 2, "DLA runs FP16 and INT8 only, not fp32"),
        (
            "fp16",
            ProfileShapes((32, 48), (64, 96), (128, 192)),
            0,
            2,
            r"DLA needs static shapes, but the profile is 32x48 / 64x96 / 128x192",
        ),
        (
            "fp16",
            STATIC,
            2,
            2,
            r"DLA core 2 does not exist: this device has 2 DLA core\(s\) \(0\.\.1\)",
        ),
        ("fp16", STATIC, 0, 0, "has 0 DLA core.*Jetson AGX Orin"),
        ("fp16", STATIC, -1, None, "dla_core must be a DLA core index"),
    ],
)
def test_dla_refusals(
    precision: str, profile: ProfileShapes, core: int, cores: int | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        dla_mode("10.3.0.30", precision, profile, core, dla_cores=cores)


# -- graphs, targets, resolution ------------------------------------------------------------------


def _deform_graph(path: Path, op: str, domain: str = "") -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node(op, ["x", "w", "off"], ["y"], name=f"{op}_0", domain=domain)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "w", "off")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    imports = [helper.make_opsetid("", 19)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=imports), str(path))


def test_graph_op_types_recorded_or_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    native, plugin = tmp_path / "native.onnx", tmp_path / "plugin.onnx"
    _deform_graph(native, "DeformConv")
    _deform_graph(plugin, "EdgesegDeformConv", domain="edgeseg")
    manifest = Manifest.create(
        model={"name": "dcn", "source": "module"},
        classes=("a",),
        palette=((0, 0, 0),),
        input=InputSpec(size=(8, 8)),
        precision="fp32",
        opset=19,
        graphs={"fp32": "model.onnx", "fp16": "model.fp16.onnx"},
        op_types={
            "model.onnx": ["DeformConv"]
        },  # schema 2 records them; fp16's left out on purpose
    )
    files = {"model.onnx": native.read_bytes(), "model.fp16.onnx": plugin.read_bytes()}
    bundle = write_bundle(tmp_path / "dcn", manifest, files)
    assert graph_op_types(bundle, "model.onnx") == {"DeformConv"}
    assert graph_op_types(bundle, "model.fp16.onnx") == {"EdgesegDeformConv"}  # read with onnx
    monkeypatch.setitem(sys.modules, "onnx", None)  # a robot with TensorRT but no onnx
    assert graph_op_types(bundle, "model.onnx") == {"DeformConv"}  # recorded: no onnx needed
    with pytest.raises(
        MissingDependencyError,
        match=r"was built before bundles recorded their operator types, and reading "
        r"model.fp16.onnx needs onnx: pip install onnx",
    ):
        graph_op_types(bundle, "model.fp16.onnx")


def test_resolve_target(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_target("cpu")[0] == "cpu" and resolve_target("tensorrt")[0] == "tensorrt"
    with pytest.raises(ConfigError, match="target must be one of auto, tensorrt, cpu, got 'gpu'"):
        resolve_target("gpu")
    monkeypatch.setattr("converters.tensorrt.tensorrt_version", lambda: None)
    assert resolve_target("auto") == (
        "cpu",
        "TensorRT is not installed: the bundle runs on ONNX Runtime",
    )
    monkeypatch.setattr("converters.tensorrt.tensorrt_version", lambda: "10.3.0")

    def no_gpu(**_: Any) -> DeviceInfo:
        raise BackendError("cuInit failed: CUDA_ERROR_NO_DEVICE (100)")

    monkeypatch.setattr("converters.tensorrt.probe_device", no_gpu)
    target, why = resolve_target("auto")
    assert target == "cpu" and "no GPU (cuInit failed: CUDA_ERROR_NO_DEVICE (100))" in why
    monkeypatch.setattr("converters.tensorrt.probe_device", lambda **_: ORIN)
    assert resolve_target("auto") == ("tensorrt", "Orin (nvgpu) with TensorRT 10.3.0")


def test_deploy_time_modules_stay_thin() -> None:
    code = (
        "import edgeseg.engines, edgeseg.runtime.backends.tensorrt, converters.tensorrt, "
        "edgeseg.doctor, sys\n"
        "heavy = ('tensorrt', 'pycuda', 'torch', 'onnx', 'cuda')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_engine_options_need_an_engine_target(tiny_bundle: Path) -> None:
    bundle = Bundle.load(tiny_bundle)
    with pytest.raises(ConfigError, match="engine options were given with target='cpu'"):
        engine_for_build(bundle, "cpu", {"workspace_mb": 64})
    assert engine_for_build(bundle, "cpu") is bundle


def test_tensorrt_target_without_tensorrt_keeps_the_onnx_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import tiny_module

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if TensorRT were not installed
    with pytest.raises(
        MissingDependencyError,
        match=r"TensorRT's Python package is not installed.*python3-libnvinfer.*the ONNX bundle "
        r".*tiny.edgeseg was written; add the engine later on the device with `edgeseg engine",
    ):
        edgeseg.build(
            tiny_module(),
            tmp_path / "tiny",
            input_size=(32, 32),
            num_classes=4,
            num_samples=1,
            target="tensorrt",
        )
    assert Bundle.load(tmp_path / "tiny.edgeseg").manifest.engines == ()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeseg", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # CLI subprocesses
def test_cli_engine_options_and_one_line_errors(tiny_bundle: Path) -> None:
    help_text = _cli("build", "--help").stdout
    for option in (
        "--target",
        "--deform-conv",
        "--workspace-mb",
        "--opt-level",
        "--dla-core",
        "--min-shape",
        "--opt-shape",
        "--max-shape",
        "--plugin-library",
    ):
        assert option in help_text, option
    assert "--cuda-arch" in _cli("plugins", "build", "--help").stdout
    proc = _cli("engine", str(tiny_bundle), "--max-shape", "96x96")
    try:
        probe_device(with_tensorrt=False)
        gpu = True
    except BackendError:
        gpu = False
    if not gpu:  # said first: there is nothing to build for
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("Error: no NVIDIA GPU here to build an engine for")
    elif tensorrt_version() is None:
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "TensorRT's Python package is not installed" in proc.stderr
    proc = _cli("engine", str(tiny_bundle), "--opt-level", "9")
    assert proc.returncode == 2 and "0<=x<=5" in proc.stderr.replace(" ", "")
    proc = _cli("engine", str(tiny_bundle), "--min-shape", "64x")
    assert proc.returncode == 2 and "is not HxW" in proc.stderr


# -- stand-ins: control flow only -----------------------------------------------------------------
#
# Nothing below says anything about TensorRT's behaviour: the stand-ins only
# record calls and move bytes, so that the order and bookkeeping of the
# builder and backend code can be checked without a GPU.


class _Enum:
    def __init__(self, name: str, value: int) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Enum) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def _enum(**members: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{k: _Enum(k, v) for k, v in members.items()})


_ONNX_TYPES = {1: "FLOAT", 2: "UINT8", 10: "HALF", 7: "INT64", 6: "INT32"}


def fake_tensorrt(version: str = "10.3.0.30", dla_cores: int = 0) -> types.ModuleType:
    """A stand-in ``tensorrt`` (control flow only): records the build, serializes JSON 'plans'."""
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    trt.calls = []  # type: ignore[attr-defined]
    trt.enqueued = []  # type: ignore[attr-defined]  # (engine's input names, stream handle) per launch
    trt.NetworkDefinitionCreationFlag = _enum(STRONGLY_TYPED=1)
    trt.MemoryPoolType = _enum(WORKSPACE=0)
    trt.ProfilingVerbosity = _enum(DETAILED=2)
    trt.LayerInformationFormat = _enum(JSON=1)
    trt.DeviceType = _enum(GPU=0, DLA=1)
    trt.BuilderFlag = _enum(FP16=0, INT8=1, GPU_FALLBACK=3)
    trt.TensorIOMode = _enum(NONE=0, INPUT=1, OUTPUT=2)

    class ILogger:
        Severity = int

        def __init__(self) -> None:
            pass

    class Logger(ILogger):
        ERROR = 1

        def __init__(self, severity: int = 2) -> None:
            super().__init__()

    registry = types.SimpleNamespace(
        load_library=lambda path: trt.calls.append(("load_library", path)) or object(),
        all_creators=[types.SimpleNamespace(name="EdgesegDeformConv")],
    )
    trt.ILogger, trt.Logger = ILogger, Logger
    trt.init_libnvinfer_plugins = lambda logger, namespace: (
        trt.calls.append(("init_plugins",)) or True
    )
    trt.get_plugin_registry = lambda: registry
    trt.Dims = lambda values: tuple(values)

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.inputs, self.outputs = flags, [], []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Any:
            name, dtype, dims = self.inputs[i]
            return types.SimpleNamespace(name=name, shape=tuple(dims))

    class OnnxParser:
        def __init__(self, network: Network, logger: Any) -> None:
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path: str) -> bool:
            import onnx

            model = onnx.load(path)
            trt.calls.append(("parse", Path(path).name))
            for values, target in (
                (model.graph.input, self.network.inputs),
                (model.graph.output, self.network.outputs),
            ):
                for v in values:
                    t = v.type.tensor_type
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
                    target.append((v.name, _ONNX_TYPES[t.elem_type], dims))
            return True

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return self.data + b"+timings"

    class Config:
        def __init__(self) -> None:
            self.flags: set[str] = set()
            self.profiles: list[dict[str, Any]] = []
            self.cache: Cache | None = None
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            trt.calls.append(("workspace", size))

        def add_optimization_profile(self, profile: Any) -> int:
            self.profiles.append(profile.shapes)
            return 0

        def create_timing_cache(self, data: bytes) -> Cache:
            return Cache(data)

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> Cache:
            assert self.cache is not None
            return self.cache

        def set_flag(self, flag: _Enum) -> None:
            self.flags.add(flag.name)

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, Any] = {}

        def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
            self.shapes[name] = [list(low), list(opt), list(high)]

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger: Any) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            plan = {
                "inputs": network.inputs,
                "outputs": network.outputs,
                "profile": config.profiles[0] if config.profiles else None,
                "flags": sorted(config.flags),
                "strongly_typed": network.flags == 2,
                "opt_level": config.builder_optimization_level,
                "dla_core": config.DLA_core
                if config.default_device_type == trt.DeviceType.DLA
                else None,
            }
            trt.calls.append(("build", plan))
            return json.dumps(plan).encode()

    trt.Builder, trt.OnnxParser = Builder, OnnxParser

    class Engine:
        def __init__(self, plan: dict[str, Any]) -> None:
            self.plan = plan
            self.tensors = [(*t, True) for t in plan["inputs"]] + [
                (*t, False) for t in plan["outputs"]
            ]

        @property
        def num_io_tensors(self) -> int:
            return len(self.tensors)

        def _find(self, name: str) -> tuple[str, str, list[int], bool]:
            return next(t for t in self.tensors if t[0] == name)

        def get_tensor_name(self, i: int) -> str:
            return self.tensors[i][0]

        def get_tensor_dtype(self, name: str) -> Any:
            return types.SimpleNamespace(name=self._find(name)[1])

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return tuple(self._find(name)[2])

        def get_tensor_mode(self, name: str) -> _Enum:
            return trt.TensorIOMode.INPUT if self._find(name)[3] else trt.TensorIOMode.OUTPUT

        def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
            return [tuple(s) for s in self.plan["profile"][name]]

        def create_execution_context(self) -> Context:
            return Context(self)

        def create_engine_inspector(self) -> Any:
            return types.SimpleNamespace(
                get_engine_information=lambda fmt: json.dumps(
                    {"Layers": ["fake"], "format": fmt.name}
                )
            )

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes = {t[0]: tuple(t[2]) for t in engine.tensors}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            low, _, high = self.engine.plan["profile"][name]
            if any(s < lo or s > hi for s, lo, hi in zip(shape, low, high, strict=True)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            _, h, w, _ = self.shapes["image"]
            dims = self.shapes[name]
            return (1, h, w) if len(dims) == 3 else (1, dims[1], h, w)

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self, handle: int) -> bool:
            inputs = tuple(t[0] for t in self.engine.tensors if t[3])
            trt.enqueued.append((inputs, handle))
            cudart = sys.modules.get("cuda.bindings.runtime")
            if cudart is not None and getattr(cudart, "capturing", False):
                cudart.captured.append(self._execute)
            else:
                self._execute()
            return True

        def _read(self, name: str, dtype: type) -> np.ndarray:
            """Input ``name`` from the stand-in device memory at the address bound to it."""
            memory = sys.modules["pycuda.driver"].MEMORY
            shape = self.shapes[name]
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            data = bytes(memory[self.addresses[name]][:size])
            return np.frombuffer(data, dtype).reshape(shape)

        def _execute(self) -> None:
            """Model engines: mask = image[..., 0] % 4, float outputs its one-hot over the
            classes. An engine with a ``logits`` input (the stand-in CRF): each pixel's class
            from the logits it reads, moved to the next class (mask, and probs one-hot)."""
            memory = sys.modules["pycuda.driver"].MEMORY
            image = self._read("image", np.uint8)
            trt.calls.append(("execute", image.shape))
            if "logits" in self.addresses and any(
                t[0] == "logits" and t[3] for t in self.engine.tensors
            ):
                logits = self._read("logits", np.float32)
                labels = (logits.argmax(axis=1) + 1) % logits.shape[1]
            else:
                labels = image[..., 0] % 4
            for name, dtype, _, is_input in self.engine.tensors:
                if is_input:
                    continue
                out_shape = self.get_tensor_shape(name)
                if dtype == "UINT8":
                    value = labels.astype(np.uint8)
                else:
                    classes = np.arange(out_shape[1]).reshape(1, -1, 1, 1)
                    value = (labels[:, None] == classes).astype(np.float32)
                data = value.tobytes()
                memory[self.addresses[name]][: len(data)] = data

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.DLA_core = -1

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            try:
                return Engine(json.loads(bytes(data)))
            except ValueError:
                return None

    trt.Runtime = Runtime
    return trt


def fake_pycuda() -> tuple[types.ModuleType, types.ModuleType]:
    """Stand-in ``pycuda`` and ``pycuda.driver`` (control flow only): memory is a dict of bytes."""
    package = types.ModuleType("pycuda")
    package.__spec__ = importlib.machinery.ModuleSpec("pycuda", None)
    package.VERSION_TEXT = "stand-in"
    driver = types.ModuleType("pycuda.driver")
    driver.MEMORY = {}
    driver.log = []
    driver.contexts = []
    counter = iter(range(0x1000, 1 << 40, 0x1000))

    class Allocation:
        def __init__(self, size: int) -> None:
            self.address = next(counter)
            driver.MEMORY[self.address] = bytearray(size)
            driver.log.append(("alloc", size))

        def __int__(self) -> int:
            return self.address

        def free(self) -> None:
            driver.MEMORY.pop(self.address)
            driver.log.append(("free", self.address))

    class Context:
        def push(self) -> None:
            driver.contexts.append(self)

        def pop(self) -> None:
            driver.contexts.pop()

        def detach(self) -> None:
            driver.log.append(("detach",))

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return "Orin (nvgpu)"

        def retain_primary_context(self) -> Context:
            return Context()

    class Event:
        def record(self, stream: Any) -> None:
            assert driver.contexts, "CUDA work outside the backend's context"

        def time_till(self, other: Event) -> float:
            return 0.25

    def htod(device: Allocation, host: np.ndarray, stream: Any) -> None:
        assert driver.contexts, "copy outside the backend's context"
        driver.log.append(("htod", int(device), host.nbytes, stream.handle))
        data = host.tobytes()
        driver.MEMORY[int(device)][: len(data)] = data

    def dtoh(host: np.ndarray, device: Allocation, stream: Any) -> None:
        driver.log.append(("dtoh", int(device), host.nbytes, stream.handle))
        host[:] = np.frombuffer(bytes(driver.MEMORY[int(device)][: host.nbytes]), np.uint8)

    driver.init = lambda: None
    driver.Device, driver.Event, driver.Error = Device, Event, RuntimeError
    streams = iter(range(1234, 1 << 30))  # each stream its own handle
    driver.Stream = lambda: types.SimpleNamespace(handle=next(streams), synchronize=lambda: None)
    driver.mem_alloc = Allocation
    driver.pagelocked_empty = lambda size, dtype: np.zeros(size, dtype)
    driver.memcpy_htod_async, driver.memcpy_dtoh_async = htod, dtoh
    driver.mem_get_info = lambda: (sum(map(len, driver.MEMORY.values())), 1 << 30)
    package.driver = driver
    return package, driver


def fake_cudart(fail: bool = False) -> types.ModuleType:
    """Stand-in ``cuda.bindings.runtime`` (control flow only): 'captures' what is enqueued."""
    cudart = types.ModuleType("cuda.bindings.runtime")
    cudart.capturing = False
    cudart.captured = []
    cudart.launches = 0
    cudart.destroyed = []
    cudart.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

    def begin(handle: int, mode: int) -> tuple[int]:
        cudart.capturing = True
        return (0,)

    def end(handle: int) -> tuple[int, Any]:
        cudart.capturing = False
        return (900, None) if fail else (0, "graph")

    def launch(graph_exec: Any, handle: int) -> tuple[int]:
        cudart.launches += 1
        for work in cudart.captured:
            work()
        return (0,)

    cudart.cudaStreamBeginCapture, cudart.cudaStreamEndCapture = begin, end
    cudart.cudaGraphInstantiate = lambda graph, flags: (0, "exec")
    cudart.cudaGraphLaunch = launch
    cudart.cudaGraphExecDestroy = lambda e: cudart.destroyed.append(e) or (0,)
    cudart.cudaGraphDestroy = lambda g: cudart.destroyed.append(g) or (0,)
    cudart.cudaGetErrorName = lambda status: (0, b"cudaErrorStreamCaptureInvalidated")
    return cudart


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> types.SimpleNamespace:
    """Stand-in tensorrt, pycuda and cuda-python modules and an Orin device (control flow only)."""
    trt = fake_tensorrt()
    package, driver = fake_pycuda()
    cudart = fake_cudart()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    monkeypatch.setattr("edgeseg.runtime.backends.probe_device", lambda index=0, **_: ORIN)
    monkeypatch.setattr("converters.tensorrt.probe_device", lambda index=0, **_: ORIN)
    monkeypatch.setattr("edgeseg.runtime.backends.tensorrt_lib._SHARED", {})  # logger, plugins
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    return types.SimpleNamespace(trt=trt, driver=driver, cudart=cudart)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / bundle.name
    shutil.copytree(bundle, out)
    return out


def test_add_engine_rewrites_the_bundle(
    stand_ins: types.SimpleNamespace, tiny_bundle: Path, tmp_path: Path
) -> None:
    """Control flow only: the bundle gains the engine, its inspector JSON and a manifest entry."""
    path = _copy(tiny_bundle, tmp_path)
    before = set(Bundle.load(path).manifest.files)
    said: list[str] = []
    bundle = add_engine(
        path, config={"workspace_mb": 256, "opt_level": 4}, device=ORIN, progress=said.append
    )
    name = "engine-orin-sm87-trt10.3.0-fp32.plan"
    assert set(bundle.manifest.files) == before | {name, "engine-orin-sm87-trt10.3.0-fp32.json"}
    (entry,) = bundle.manifest.engines
    assert entry.file == name and entry.precision == "fp32" and entry.graph == "model.onnx"
    assert entry.graph_sha256 == bundle.manifest.files["model.onnx"].sha256
    assert entry.profile == ProfileShapes((64, 96), (64, 96), (64, 96))
    assert entry.gpu == "orin" and entry.sm == "sm87" and entry.trt_version == "10.3.0.30"
    assert entry.mode == "strongly-typed" and entry.dla_core is None and entry.plugins == ()
    assert entry.built_at is not None and entry.built_at.endswith("+00:00")
    assert entry.workspace_mb == 256
    plan = json.loads((path / name).read_bytes())
    assert (
        plan["strongly_typed"] and plan["opt_level"] == 4 and plan["profile"] is None
    )  # static graph
    assert ("workspace", 256 << 20) in stand_ins.trt.calls and (
        "parse",
        "model.onnx",
    ) in stand_ins.trt.calls
    assert (
        json.loads((path / "engine-orin-sm87-trt10.3.0-fp32.json").read_text())["format"] == "JSON"
    )
    cache = tmp_path / "cache" / "timing-orin-sm87-trt10.3.0.cache"
    assert cache.read_bytes() == b"+timings"
    assert any("building the engine with TensorRT 10.3.0.30" in m for m in said)
    assert choose_engine(bundle.manifest, ORIN, "fp32").action == "use"
    from click.testing import CliRunner

    from edgeseg.cli import cli

    info = CliRunner().invoke(cli, ["info", str(path)])
    assert info.exit_code == 0, info.output
    assert (
        "engine      engine-orin-sm87-trt10.3.0-fp32.plan: fp32 on Orin (nvgpu) sm87 (GPU), "
        "TensorRT 10.3.0.30, 64x96, built 20"
    ) in info.output
    again = add_engine(path, device=ORIN)  # same device and precision: replaced, not duplicated
    assert len(again.manifest.engines) == 1 and cache.read_bytes() == b"+timings+timings"


def test_add_engine_profiles_and_refusals(
    stand_ins: types.SimpleNamespace, dynamic_bundle: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """Control flow only: a dynamic bundle gets a profile; DLA and missing graphs are refused."""
    path = _copy(dynamic_bundle, tmp_path)
    bundle = add_engine(path, config=EngineConfig(max_shape=(256, 256)), device=ORIN)
    plan = json.loads((path / bundle.manifest.engines[0].file).read_bytes())
    assert plan["profile"]["image"] == [[1, 32, 48, 3], [1, 64, 96, 3], [1, 256, 256, 3]]
    static = _copy(tiny_bundle, tmp_path / "s")
    with pytest.raises(ConfigError, match="DLA runs FP16 and INT8 only, not fp32"):
        add_engine(static, None, {"dla_core": 0}, device=ORIN)
    with pytest.raises(BundleError, match="has no int8 graph; it has fp32"):
        add_engine(static, "int8", device=ORIN)


def test_add_engine_refuses_a_graph_the_parser_would_refuse_before_building(
    stand_ins: types.SimpleNamespace, tiny_bundle: Path, tmp_path: Path
) -> None:
    """The offline acceptance check runs first and names the node; TensorRT is never asked."""
    import onnx

    from edgeseg.bundle import write_bundle
    from edgeseg.errors import ExportError

    loaded = Bundle.load(tiny_bundle)
    model = onnx.load(str(loaded.graph()))
    node = next(n for n in model.graph.node if n.op_type == "Conv")
    node.op_type, node.name = "MaxUnpool", "planted_unpool"
    del node.attribute[:]
    path = tmp_path / "planted.edgeseg"
    write_bundle(path, loaded.manifest, {"model.onnx": model.SerializeToString()})
    with pytest.raises(ExportError, match=r"TensorRT 10.3.0.30 would refuse model.onnx \(1 node\(s\)\): "
                       r"planted_unpool \(MaxUnpool\): refused: MaxUnpool is not imported"):
        add_engine(path, device=ORIN)
    assert not [c for c in stand_ins.trt.calls if c[0] in ("parse", "build")]
    assert Bundle.load(path).manifest.engines == ()


def test_plugin_mode_needs_a_library(
    stand_ins: types.SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control flow only: DeformConv with --deform-conv plugin needs libedgeseg_plugins.so."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["xf"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "DeformConv", ["x", "w", "off", "", "m"], ["y"], name="dcn", pads=[1, 1, 1, 1]
        ),
        helper.make_node("ArgMax", ["y"], ["am"], axis=1, keepdims=0),
        helper.make_node("Cast", ["am"], ["amf"], to=TensorProto.FLOAT),  # TensorRT: uint8 from float
        helper.make_node("Cast", ["amf"], ["mask"], to=TensorProto.UINT8),
    ]
    inits = [
        helper.make_tensor("w", TensorProto.FLOAT, [2, 3, 3, 3], np.ones(54, np.float32).tolist()),
        helper.make_tensor(
            "off", TensorProto.FLOAT, [1, 18, 10, 10], np.zeros(18 * 100, np.float32).tolist()
        ),
        helper.make_tensor("m", TensorProto.FLOAT, [1, 9, 10, 10], np.ones(900, np.float32).tolist()),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 10, 10, 3])],
        [helper.make_tensor_value_info("mask", TensorProto.UINT8, [1, 10, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    manifest = Manifest.create(
        model={"name": "dcn", "source": "module"},
        classes=("a", "b"),
        palette=((0, 0, 0), (1, 1, 1)),
        input=InputSpec(size=(10, 10)),
        precision="fp32",
        opset=19,
        outputs=("mask",),
        graphs={"fp32": "model.onnx"},
        op_types={"model.onnx": ["Cast", "Transpose", "DeformConv", "ArgMax"]},
    )
    path = write_bundle(tmp_path / "dcn", manifest, {"model.onnx": model.SerializeToString()}).path
    with pytest.raises(
        ConfigError,
        match=r"needs edgeseg's EdgesegDeformConv plugin but .*dcn.edgeseg has no "
        r"libedgeseg_plugins.so: build it on this device with `edgeseg plugins build --bundle",
    ):
        add_engine(path, config={"deform_conv": "plugin"}, device=ORIN)
    native = add_engine(path, device=ORIN)
    assert native.manifest.engines[0].deform_conv == "native"
    assert ("init_plugins",) in stand_ins.trt.calls
    library = tmp_path / "libedgeseg_plugins.so"
    library.write_bytes(b"\x7fELF stand-in")
    pytest.importorskip("converters.passes.deform")
    try:
        with_plugin = add_engine(
            path, config={"deform_conv": "plugin", "plugin_library": library}, device=ORIN
        )
    except (
        edgeseg.errors.ExportError
    ) as err:  # the rewrite checks the graph more than this toy allows
        pytest.skip(f"to_plugin refuses the toy graph: {err}")
    entries = {e.deform_conv: e for e in with_plugin.manifest.engines}
    assert entries["plugin"].plugins == ("libedgeseg_plugins.so",)
    assert (with_plugin.path / "libedgeseg_plugins.so").read_bytes() == b"\x7fELF stand-in"
    assert ("parse", "model.plugin.onnx") in stand_ins.trt.calls
    # opening the bundle does not load the library it carries (its code) unless asked
    only_plugin = write_bundle(
        with_plugin.path,
        dataclasses.replace(with_plugin.manifest, engines=(entries["plugin"],)),
        {n: with_plugin.path / n for n in with_plugin.manifest.files},
        overwrite=True,
    )
    loads: list[Any] = []
    monkeypatch.setattr(
        "edgeseg.runtime.backends.tensorrt.load_plugin_libraries",
        lambda logger, libraries: loads.append(list(libraries)),
    )
    with pytest.raises(
        BackendError,
        match=r"needs the plugin library libedgeseg_plugins.so that .* carries; loading it runs that "
        r"library's code, so it is not loaded unasked: pass allow_plugins=True \(--allow-plugins\)",
    ):
        edgeseg.Segmenter(only_plugin.path, backend="tensorrt")
    with edgeseg.Segmenter(only_plugin.path, backend="auto") as seg:
        assert seg.backend_name == "onnxruntime"  # auto falls back rather than run unasked code
    assert loads == []
    with edgeseg.Segmenter(only_plugin.path, backend="tensorrt", allow_plugins=True):
        pass
    assert loads == [[only_plugin.path / "libedgeseg_plugins.so"]]


def test_backend_data_path(
    stand_ins: types.SimpleNamespace, dynamic_bundle: Path, tmp_path: Path
) -> None:
    """Control flow only: shapes set, buffers grown (never shrunk), copies in its context."""
    path = _copy(dynamic_bundle, tmp_path)
    bundle = add_engine(path, device=ORIN)
    engine = bundle.file(bundle.manifest.engines[0].file)
    rng = np.random.default_rng(0)
    with trt_backend.TensorRTBackend(engine) as backend:
        assert backend.input_names == ["image"] and backend.output_names == ["mask"]
        assert backend.input_shape("image") == [1, None, None, 3]
        for h, w in [(64, 96), (128, 192), (32, 48)]:
            image = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
            out = backend.infer({"image": image})
            np.testing.assert_array_equal(out["mask"], image[..., 0] % 4)
        allocations = [e for e in stand_ins.driver.log if e[0] == "alloc"]
        assert (
            len(allocations) == 4
        )  # image and mask at 64x96, then both grown once; 32x48 reuses them
        assert backend.last_timings == {"h2d": 0.25, "compute": 0.25, "d2h": 0.25}
        assert (
            backend.last_gpu_ms == 0.25
            and "tensorrt 10.3.0.30 on Orin (nvgpu)" == backend.description
        )
        with pytest.raises(
            BackendError,
            match=r"input 'image' shape \(1, 512, 512, 3\) is outside .*profile "
            r"\(1, 32, 48, 3\)\.\.\(1, 128, 192, 3\); rebuild the engine with a larger --max-shape",
        ):
            backend.infer({"image": np.zeros((1, 512, 512, 3), np.uint8)})
        with pytest.raises(BackendError, match="input 'image' of .* is uint8, got float32"):
            backend.infer({"image": np.zeros((1, 64, 96, 3), np.float32)})
        with pytest.raises(BackendError, match="has no output 'probs'; it has mask"):
            backend.infer({"image": np.zeros((1, 64, 96, 3), np.uint8)}, ["probs"])
        with pytest.raises(BackendError, match="takes inputs image; missing image"):
            backend.infer({})
        with pytest.raises(ConfigError, match="cuda_graph=True needs an engine with static shapes"):
            trt_backend.TensorRTBackend(engine, cuda_graph=True)
    assert (
        not stand_ins.driver.MEMORY and not stand_ins.driver.contexts
    )  # all freed, context popped
    assert (
        stand_ins.driver.log.count(("detach",)) == 2
    )  # the refused backend gave its context back too
    backend.close()  # idempotent
    with pytest.raises(BackendError, match="is closed"):
        backend.infer({"image": np.zeros((1, 64, 96, 3), np.uint8)})


def test_cuda_graph_capture_and_fallback(
    stand_ins: types.SimpleNamespace,
    tiny_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control flow only: one ordinary run, capture, replays; a failed capture falls back."""
    path = _copy(tiny_bundle, tmp_path)
    engine = add_engine(path, device=ORIN)
    plan = engine.file(engine.manifest.engines[0].file)
    image = np.random.default_rng(1).integers(0, 256, (1, 64, 96, 3), dtype=np.uint8)
    with trt_backend.TensorRTBackend(plan, cuda_graph=True) as backend:
        first = backend.infer({"image": image}, ["mask", "probs"])
        assert backend.cuda_graph_active and stand_ins.cudart.launches == 0
        again = backend.infer({"image": image}, ["mask", "probs"])
        assert stand_ins.cudart.launches == 1
        np.testing.assert_array_equal(first["mask"], again["mask"])
        assert first["probs"].shape == (1, 4, 64, 96) and first["probs"].dtype == np.float32
    assert stand_ins.cudart.destroyed == ["exec", "graph"]
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake_cudart(fail=True))
    with trt_backend.TensorRTBackend(plan, cuda_graph=True) as backend:
        backend.infer({"image": image})
        assert not backend.cuda_graph_active
        assert "cudaErrorStreamCaptureInvalidated" in str(backend.cuda_graph_error)
        np.testing.assert_array_equal(backend.infer({"image": image})["mask"], first["mask"])


def test_segmenter_auto_builds_and_runs_an_engine(
    stand_ins: types.SimpleNamespace,
    tiny_bundle: Path,
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control flow only: auto picks TensorRT, builds the missing engine, runs it; the engine
    is chosen once per Segmenter (the build returns its record: nothing is chosen again)."""
    import edgeseg.engines as engines

    choices: list[str] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        choice = choose_engine(*args, **kwargs)
        choices.append(choice.action)
        return choice

    # every engine choice goes through engines.choose_engine (choose_engines calls it)
    monkeypatch.setattr(engines, "choose_engine", counted)
    path = _copy(tiny_bundle, tmp_path)
    frame = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    with edgeseg.Segmenter(path, outputs=["probs"]) as seg:
        assert seg.backend_name == "tensorrt" and choices == ["build"]
        assert len(seg.bundle.manifest.engines) == 1  # the Segmenter holds the rewritten bundle
        result = seg(frame)
    np.testing.assert_array_equal(result.mask, frame[..., 0] % 4)
    assert result.probs is not None and result.probs.shape == (4, 64, 96)
    assert len(Bundle.load(path).manifest.engines) == 1  # built once, into the bundle
    with edgeseg.Segmenter(path, backend="tensorrt", cuda_graph=True) as seg:
        seg(frame)
        np.testing.assert_array_equal(seg(frame).mask, frame[..., 0] % 4)
    assert choices == ["build", "use"]
    builds = [c for c in stand_ins.trt.calls if c[0] == "build"]
    assert len(builds) == 1  # the second Segmenter used the engine the first one built


def test_segmenter_auto_falls_back_when_the_engine_fails(
    stand_ins: types.SimpleNamespace,
    tiny_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control flow only: auto runs on onnxruntime when building or loading the engine fails."""
    path = _copy(tiny_bundle, tmp_path)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise BackendError("TensorRT 10.3.0.30 cannot parse model.onnx: stand-in failure")

    monkeypatch.setattr("edgeseg.runtime.backends.resolve_engine", broken)
    with edgeseg.Segmenter(path) as seg:
        assert seg.backend_name == "onnxruntime"
    with pytest.raises(BackendError, match="stand-in failure"):
        edgeseg.Segmenter(path, backend="tensorrt")


def test_edgesegs_plugin_library_is_registered_once_per_process(
    stand_ins: types.SimpleNamespace, tmp_path: Path
) -> None:
    """Control flow only: the bundle's copy after the build folder's is not loaded again
    (TensorRT logs an ERROR when a creator is registered twice)."""
    from edgeseg.runtime.backends.tensorrt_lib import load_plugin_libraries, make_logger

    built, copied = tmp_path / "build", tmp_path / "bundle.edgeseg"
    for folder in (built, copied):
        folder.mkdir()
        (folder / "libedgeseg_plugins.so").write_bytes(b"\x7fELF stand-in")
    logger = make_logger()
    load_plugin_libraries(logger, [built / "libedgeseg_plugins.so"])
    load_plugin_libraries(
        logger, [copied / "libedgeseg_plugins.so", built / "libedgeseg_plugins.so"]
    )
    loads = [c for c in stand_ins.trt.calls if c[0] == "load_library"]
    assert loads == [("load_library", str((built / "libedgeseg_plugins.so").resolve()))]
