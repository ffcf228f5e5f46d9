"""TensorRT's acceptance, offline (converters.acceptance, `edgeseg check`).

Planted graphs that TensorRT's ONNX parser refuses must be refused here, by the
node's name and for the stated reason, and graphs it takes must pass; every
graph the zoo builds (model x precision x static/dynamic x CRF) must pass for
10.3, 10.13 and 11 (the full suite builds them all).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from converters.acceptance import (
    FALLBACK,
    VERSIONS,
    check_bundle,
    check_model,
    resolve_version,
)
from edgeseg.cli import cli
from edgeseg.errors import ConfigError

ALL = tuple(VERSIONS)
U8, F32, I64 = TensorProto.UINT8, TensorProto.FLOAT, TensorProto.INT64


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[tuple[str, int, list[Any]]],
    outputs: list[tuple[str, int, list[Any]]],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 19,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _refused(model: onnx.ModelProto, version: str, **kwargs: Any) -> dict[str, list[str]]:
    report = check_model(model, version, **kwargs)
    found: dict[str, list[str]] = {}
    for f in report.refused:
        found.setdefault(f.node, []).append(f"{f.rule}: {f.message}")
    return found


def _image_graph(
    *tail: onnx.NodeProto, out: str = "y", out_type: int = F32, **kw: Any
) -> onnx.ModelProto:
    """uint8 NHWC image -> Cast -> Transpose -> tail."""
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=F32, name="cast_in"),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        *tail,
    ]
    return _model(nodes, [("image", U8, [1, 8, 8, 3])], [(out, out_type, None)], **kw)


# --------------------------------------------------------------------------- graphs TensorRT takes


@pytest.mark.parametrize("version", ALL)
def test_a_clean_graph_is_accepted(version: str) -> None:
    model = _image_graph(
        helper.make_node("Conv", ["nchw", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("ArgMax", ["c"], ["idx"], axis=1, keepdims=0, name="argmax"),
        helper.make_node("Cast", ["idx"], ["idxf"], to=F32, name="index_to_float"),
        helper.make_node("Cast", ["idxf"], ["mask"], to=U8, name="mask_out"),
        out="mask",
        out_type=U8,
        initializers={"w": np.ones((4, 3, 3, 3), np.float32)},
    )
    report = check_model(model, version)
    assert report.ok, [str(f) for f in report.findings]
    assert report.nodes == 6 and report.version == version


def test_versions_resolve_to_the_newest_table_at_or_below() -> None:
    assert resolve_version("10.3.0.30") == "10.3"
    assert resolve_version("10.8") == "10.3"
    assert resolve_version("10.13.2") == "10.13"
    assert resolve_version("10.15") == "10.13"
    assert resolve_version("11.4.1") == "11"
    for bad in ("9.2", "abc", "", "8"):
        with pytest.raises(ConfigError):
            resolve_version(bad)


# --------------------------------------------------------------------------- planted graphs it refuses


@pytest.mark.parametrize("version", ALL)
def test_shape_on_the_uint8_input_is_refused(version: str) -> None:
    model = _model(
        [
            helper.make_node("Shape", ["image"], ["s"], name="shape_of_image"),
            helper.make_node("Cast", ["image"], ["y"], to=F32, name="cast_in"),
        ],
        [("image", U8, [1, "h", "w", 3])],
        [("y", F32, None), ("s", I64, None)],
    )
    refused = _refused(model, version)
    assert list(refused) == ["shape_of_image"]
    assert refused["shape_of_image"][0].startswith("uint8: reads network input 'image'")


@pytest.mark.parametrize("version", ALL)
def test_a_uint8_output_not_cast_from_float_is_refused(version: str) -> None:
    model = _image_graph(
        helper.make_node("ArgMax", ["nchw"], ["idx"], axis=1, keepdims=0, name="argmax"),
        helper.make_node("Cast", ["idx"], ["mask"], to=U8, name="index_to_uint8"),
        out="mask",
        out_type=U8,
    )
    refused = _refused(model, version)
    assert list(refused) == ["index_to_uint8"]
    assert "uint8 network output 'mask'" in refused["index_to_uint8"][0]


@pytest.mark.parametrize("version", ALL)
def test_an_operator_the_parser_lacks_is_refused(version: str) -> None:
    model = _image_graph(helper.make_node("Unique", ["nchw"], ["y"], name="unique"))
    refused = _refused(model, version)
    assert list(refused) == ["unique"]
    assert refused["unique"][0].startswith("operator: Unique is not imported")


@pytest.mark.parametrize("version", ALL)
def test_a_wrong_dtype_is_refused(version: str) -> None:
    model = _image_graph(
        helper.make_node("Cast", ["nchw"], ["i"], to=TensorProto.INT32, name="to_int"),
        helper.make_node("Sqrt", ["i"], ["yi"], name="sqrt_of_int"),
        helper.make_node("Cast", ["yi"], ["y"], to=F32, name="back"),
    )
    refused = _refused(model, version)
    assert list(refused) == ["sqrt_of_int"]
    assert refused["sqrt_of_int"][0].startswith("dtype: input 0 ('i') is INT32")


def test_a_cast_to_a_type_tensorrt_lacks_is_refused() -> None:
    model = _image_graph(
        helper.make_node("Cast", ["nchw"], ["d"], to=TensorProto.UINT16, name="to_uint16"),
        helper.make_node("Cast", ["d"], ["y"], to=F32, name="back"),
    )
    assert "to_uint16" in _refused(model, "10.3")


@pytest.mark.parametrize("version", ALL)
def test_attribute_and_constant_input_restrictions(version: str) -> None:
    model = _image_graph(
        helper.make_node("Shape", ["nchw"], ["shape"], name="shape"),
        helper.make_node("Slice", ["shape", "one", "two"], ["axes"], name="axes_from_shape"),
        helper.make_node("Sub", ["axes", "one"], ["axes2"], name="computed_axes"),
        helper.make_node("ReduceMean", ["nchw", "axes2"], ["m"], name="mean_computed_axes"),
        helper.make_node("Resize", ["m", "", "scales"], ["r"], mode="cubic", name="cubic"),
        helper.make_node("MaxPool", ["r"], ["y", "ind"], kernel_shape=[2, 2], name="pool_indices"),
        initializers={
            "one": np.array([1], np.int64),
            "two": np.array([2], np.int64),
            "scales": np.array([1, 1, 2, 2], np.float32),
        },
    )
    refused = _refused(model, version)
    assert set(refused) == {"mean_computed_axes", "cubic", "pool_indices"}
    assert "`axes` must be a build-time constant" in refused["mean_computed_axes"][0]
    assert "mode='cubic'" in refused["cubic"][0]
    assert "Indices" in refused["pool_indices"][0]


def test_pad_axes_from_a_tensor_are_refused_before_10_4() -> None:
    model = _image_graph(
        helper.make_node("Shape", ["nchw"], ["shape"], name="shape"),
        helper.make_node("Slice", ["shape", "zero", "one"], ["axes"], name="axes_from_shape"),
        helper.make_node("Pad", ["nchw", "pads", "", "axes"], ["y"], name="pad_tensor_axes"),
        initializers={
            "zero": np.array([0], np.int64),
            "one": np.array([1], np.int64),
            "pads": np.array([1, 1], np.int64),
        },
    )
    assert list(_refused(model, "10.3")) == ["pad_tensor_axes"]
    assert _refused(model, "10.13") == {} and _refused(model, "11") == {}


def test_deform_conv_without_a_mask_is_refused_and_with_one_is_accepted() -> None:
    inits = {
        "w": np.ones((4, 3, 3, 3), np.float32),
        "off": np.zeros((1, 18, 8, 8), np.float32),
        "mask": np.ones((1, 9, 8, 8), np.float32),
    }
    dcnv1 = _image_graph(
        helper.make_node(
            "DeformConv", ["nchw", "w", "off"], ["y"], pads=[1, 1, 1, 1], name="dcn_v1"
        ),
        initializers=inits,
    )
    for version in ALL:
        refused = _refused(dcnv1, version)
        assert list(refused) == ["dcn_v1"]
        assert "no mask input" in refused["dcn_v1"][0]
    dcnv2 = _image_graph(
        helper.make_node(
            "DeformConv", ["nchw", "w", "off", "", "mask"], ["y"], pads=[1, 1, 1, 1], name="dcn_v2"
        ),
        initializers=inits,
    )
    assert all(check_model(dcnv2, v).ok for v in ALL)
    uneven = _image_graph(
        helper.make_node(
            "DeformConv", ["nchw", "w", "off", "", "mask"], ["y"], pads=[1, 1, 2, 2], name="uneven"
        ),
        initializers=inits,
    )
    assert "begin and end must be the same" in _refused(uneven, "10.3")["uneven"][0]


def test_plugin_ops_are_accepted_and_unknown_custom_ops_are_not() -> None:
    model = _image_graph(
        helper.make_node("EdgesegDeformConv", ["nchw"], ["d"], name="ours"),
        helper.make_node("FancyOp", ["d"], ["y"], domain="com.example", name="theirs"),
    )
    refused = _refused(model, "10.3")
    assert list(refused) == ["theirs"]
    assert "domain 'com.example'" in refused["theirs"][0]
    assert "plugin named 'FancyOp'" in refused["theirs"][0]
    assert list(_refused(model, "10.3", plugins=())) == ["ours", "theirs"]


def test_an_operator_newer_than_the_version_is_refused_only_there() -> None:
    model = _image_graph(
        helper.make_node("Reshape", ["nchw", "shape4"], ["q"], name="to_4d"),
        helper.make_node("Attention", ["q", "q", "q"], ["y"], name="attention"),
        initializers={"shape4": np.array([1, 1, 64, 3], np.int64)},
    )
    assert list(_refused(model, "10.3")) == ["attention"]
    assert list(_refused(model, "10.13")) == ["attention"]
    assert _refused(model, "11") == {}


def test_asymmetric_uint8_qdq_is_refused_by_name() -> None:
    model = _image_graph(
        helper.make_node("QuantizeLinear", ["nchw", "s", "zp"], ["q"], name="q_uint8"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq_uint8"),
        initializers={"s": np.array(0.1, np.float32), "zp": np.array(128, np.uint8)},
    )
    refused = _refused(model, "10.3")
    assert {"q_uint8", "dq_uint8"} <= set(refused)
    assert any(r.startswith("qdq-") for r in refused["q_uint8"])
    symmetric = _image_graph(
        helper.make_node("QuantizeLinear", ["nchw", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq"),
        initializers={"s": np.array(0.1, np.float32), "zp": np.array(0, np.int8)},
    )
    assert check_model(symmetric, "10.3").ok


def test_opset_above_the_documented_range_is_a_warning_not_a_refusal() -> None:
    model = _image_graph(helper.make_node("Relu", ["nchw"], ["y"], name="relu"), opset=23)
    report = check_model(model, "10.3")
    assert report.ok
    assert [f.rule for f in report.findings] == ["opset"]
    assert check_model(model, "11").findings == ()


# --------------------------------------------------------------------------- DLA


def test_dla_names_what_falls_back_to_the_gpu() -> None:
    model = _image_graph(
        helper.make_node("Conv", ["nchw", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("HardSwish", ["r"], ["h"], name="hardswish"),
        helper.make_node(
            "Resize", ["h", "", "", "sizes"], ["big"], mode="linear", name="resize_sizes"
        ),
        helper.make_node(
            "Resize", ["big", "", "scales"], ["y"], mode="linear", name="resize_scales"
        ),
        initializers={
            "w": np.ones((4, 3, 3, 3), np.float32),
            "sizes": np.array([1, 4, 16, 16], np.int64),
            "scales": np.array([1, 1, 2, 2], np.float32),
        },
    )
    report = check_model(model, "10.3", dla=True)
    assert report.ok  # fallbacks are not refusals
    fallback = {f.node: f.message for f in report.findings if f.severity == FALLBACK}
    assert set(fallback) == {"cast_in", "to_nchw", "hardswish", "resize_sizes"}
    assert "sizes" in fallback["resize_sizes"]
    assert check_model(model, "10.3").findings == ()  # no DLA rules without dla


# --------------------------------------------------------------------------- bundles and the CLI


def test_the_tiny_bundle_passes_for_every_version(tiny_bundle: Path) -> None:
    for version in ALL:
        report = check_bundle(tiny_bundle, version)
        assert report.ok, report.format()
        assert [g.graph for g in report.graphs] == ["model.onnx"]


def test_dla_refuses_an_fp32_only_bundle_and_versions_without_dla(tiny_bundle: Path) -> None:
    report = check_bundle(tiny_bundle, "10.3", dla=True)
    assert not report.ok
    assert any("FP16 and INT8 only" in f.message for f in report.findings)
    report = check_bundle(tiny_bundle, "11", dla=True)
    assert any("builds no DLA engines" in f.message for f in report.findings)


def test_cli_check_prints_a_table_and_exits_0(tiny_bundle: Path) -> None:
    result = CliRunner().invoke(cli, ["check", str(tiny_bundle)])
    assert result.exit_code == 0, result.output
    assert "TensorRT 10.3" in result.output and "TensorRT 11" in result.output
    assert "model.onnx" in result.output and "accepted" in result.output
    result = CliRunner().invoke(cli, ["check", str(tiny_bundle), "--tensorrt", "10.13", "--json"])
    assert result.exit_code == 0
    (report,) = json.loads(result.output)
    assert report["tensorrt"] == "10.13" and report["ok"] is True


def test_cli_check_exits_1_naming_the_refused_node(tiny_bundle: Path, tmp_path: Path) -> None:
    from edgeseg.bundle import Bundle, write_bundle

    loaded = Bundle.load(tiny_bundle)
    model = onnx.load(str(loaded.graph()))
    relu = next(n for n in model.graph.node if n.op_type in ("Relu", "Conv", "Add"))
    relu.op_type, relu.name = "MaxUnpool", "planted_unpool"
    del relu.attribute[:]
    copy = tmp_path / "planted.edgeseg"
    write_bundle(copy, loaded.manifest, {"model.onnx": model.SerializeToString()})
    result = CliRunner().invoke(cli, ["check", str(copy), "--tensorrt", "10.3"])
    assert result.exit_code == 1
    assert "planted_unpool (MaxUnpool): refused: MaxUnpool is not imported" in result.output
    assert "REFUSED" in result.output


def test_cli_check_refuses_a_bad_version_in_one_line(tiny_bundle: Path) -> None:
    result = CliRunner().invoke(cli, ["check", str(tiny_bundle), "--tensorrt", "8.6"])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == "Error: TensorRT 8.6 is older than 10.3, the oldest edgeseg supports"
    )


def test_placement_follows_the_target() -> None:
    from converters.options import QuantOptions

    assert QuantOptions().placement is None
    assert QuantOptions().for_target("cpu").placement == "cpu"
    assert QuantOptions(placement="cpu").for_target("tensorrt").placement == "cpu"  # given: kept
    assert QuantOptions().for_target("tensorrt").placement == "tensorrt"
    # auto: the bundle may become an engine on another machine, so TensorRT's placement
    assert QuantOptions().for_target("auto").placement == "tensorrt"


def _planted_unique() -> onnx.ModelProto:
    return _image_graph(helper.make_node("Unique", ["nchw"], ["y"], name="planted_unique"))


def test_build_refuses_a_graph_the_engine_target_would_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    from converters import build as build_module
    from converters.options import BuildOptions
    from edgeseg.errors import ExportError

    monkeypatch.setattr(build_module, "resolve_target", lambda target: ("tensorrt", "stand-in"))
    monkeypatch.setattr(build_module, "tensorrt_version", lambda: "10.3.0.30")
    options = BuildOptions.from_kwargs(target="tensorrt")
    with pytest.raises(ExportError, match=r"model.onnx: 1 node\(s\) TensorRT 10.3 .* planted_unique"):
        build_module.acceptance_step({"model.onnx": _planted_unique()}, None, options, lambda m: None)


def test_build_warns_about_a_refused_graph_unless_the_target_is_cpu() -> None:
    import warnings

    from converters import build as build_module
    from converters.options import BuildOptions

    cpu_only: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a CPU-only bundle: said, not warned
        build_module.acceptance_step(
            {"bad.onnx": _planted_unique()}, None, BuildOptions.from_kwargs(target="cpu"), cpu_only.append
        )
    assert cpu_only[0].startswith("bad.onnx is for ONNX Runtime only: TensorRT 10.3, 10.13, 11 would refuse it")
    said: list[str] = []
    options = BuildOptions.from_kwargs(target="auto")
    clean = _image_graph(helper.make_node("Relu", ["nchw"], ["y"], name="relu"))
    with pytest.warns(UserWarning, match=r"bad.onnx would be refused by TensorRT 10.3, 10.13, 11"):
        reports = build_module.acceptance_step(
            {"good.onnx": clean, "bad.onnx": _planted_unique()}, None, options, said.append
        )
    assert reports["good.onnx"]["10.3"].ok and not reports["bad.onnx"]["11"].ok
    assert said == ["TensorRT 10.3, 10.13, 11 would take good.onnx (checked offline)"]


# --------------------------------------------------------------------------- the zoo's bundles

# Each zoo model's FP32 graph (static) is checked in tests/models/test_zoo_export.py and the
# dynamic ones in its dynamic test. Here the graphs the other steps make: FP16, INT8 in both Q/DQ
# placements, a separate and a fused CRF, on the models whose op sets differ most (MobileNetV3's
# HardSwish/HardSigmoid and SE, DeformConv, transposed-conv FCN).
MATRIX = [
    ("deeplabv3", {"backbone": "mobilenet_v3_large"}, (64, 64), "fp16"),
    ("deeplabv3", {"backbone": "mobilenet_v3_large"}, (64, 64), "int8-tensorrt"),
    ("unet", {"base_channels": 8, "deformable": True}, (64, 64), "int8-tensorrt"),
    ("unet", {"base_channels": 8, "deformable": True}, (64, 64), "fp16"),
    ("deeplabv3p", {"width": 0.25, "aspp_channels": 32, "se": True}, (64, 64), "crf-separate"),
    ("fcn8s", {"width": 0.125, "fc_channels": 64}, (64, 64), "crf-fused"),
    ("fcn8s", {"width": 0.125, "fc_channels": 64}, (64, 64), "int8-cpu"),
]


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    from converters.samples import synthetic_images

    folder = tmp_path_factory.mktemp("calib")
    for i, image in enumerate(synthetic_images(32, (64, 64), seed=3)):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", MATRIX, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}-{var}" for n, o, _, var in MATRIX]
)
def test_zoo_bundles_pass_for_every_version(
    case: tuple[str, dict[str, Any], tuple[int, int], str], calib_dir: Path, tmp_path: Path
) -> None:
    import warnings

    import edgeseg
    from tests.models.test_zoo_export import _model

    name, options, size, variant = case
    extra: dict[str, Any] = {
        "fp16": {"precision": "fp16"},
        "int8-tensorrt": {"precision": "int8", "placement": "tensorrt"},
        "int8-cpu": {"precision": "int8", "placement": "cpu"},
        "crf-separate": {"crf": "separate"},
        "crf-fused": {"crf": "fused"},
    }[variant]
    if variant.startswith("int8"):
        extra |= {"calib": calib_dir, "calib_size": 16, "mixed_precision": False}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = edgeseg.build(
            _model(name, options), tmp_path / "b", input_size=size, num_classes=5, num_samples=2,
            min_agreement=0.0, **extra,
        )
    refusal_warnings = [str(w.message) for w in caught if "would be refused by TensorRT" in str(w.message)]
    reports = {v: check_bundle(bundle.path, v) for v in VERSIONS}
    if variant == "int8-cpu":  # ONNX Runtime's uint8 Q/DQ: refused everywhere, said at build
        assert refusal_warnings and "--placement tensorrt" in refusal_warnings[0]
        for report in reports.values():
            assert not report.ok
            int8 = next(g for g in report.graphs if g.precision == "int8")
            assert int8.refused and all(f.op_type in ("QuantizeLinear", "DequantizeLinear") for f in int8.refused)
            assert any(f.rule == "placement" for f in report.findings)
        return
    assert refusal_warnings == []
    for version, report in reports.items():
        assert report.ok, report.format()
        expected = {"fp32", *([extra["precision"]] if "precision" in extra else [])}
        expected |= {"crf"} if variant == "crf-separate" else set()
        assert {g.precision for g in report.graphs} == expected, version
