"""converters.passes.deform: DeformConv <-> edgeseg::EdgesegDeformConv (the TensorRT plugin op)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.passes.deform import (
    DEFAULTED_ATTR,
    PLUGIN_FIELDS,
    SYNTHESIZED_ATTR,
    apply_deform_conv_mode,
    explicit_masks,
    to_native,
    to_plugin,
)
from converters.plugins import PLUGIN_DOMAIN, PLUGIN_NAMESPACE, PLUGIN_OP, PLUGIN_VERSION
from edgeseg.errors import ConfigError, ExportError

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

DEFAULTS: dict[str, Any] = {
    "strides": [1, 1],
    "pads": [0, 0, 0, 0],
    "dilations": [1, 1],
    "group": 1,
    "offset_group": 1,
}
PLUGIN_ONLY = {"plugin_namespace", "plugin_version", SYNTHESIZED_ATTR, DEFAULTED_ATTR}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    def text(v: Any) -> Any:
        return v.decode() if isinstance(v, bytes) else v

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: [text(x) for x in v] if isinstance(v, list) else text(v) for k, v in values.items()}


def _semantics(node: onnx.NodeProto) -> dict[str, Any]:
    """What a DeformConv computes: op, inputs (no trailing empties), outputs, full attributes."""
    inputs = list(node.input)
    while inputs and not inputs[-1]:
        inputs.pop()
    attrs = {**DEFAULTS, **{k: v for k, v in _attrs(node).items() if k not in PLUGIN_ONLY}}
    return {"op": node.op_type, "inputs": inputs, "outputs": list(node.output), "attrs": attrs}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return [np.asarray(o) for o in session.run(None, feeds)]


def _plugin_as_deform_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """The plugin graph with 5-input DeformConv nodes, so ONNX Runtime runs the helpers too."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.op_type == PLUGIN_OP:
            node.op_type, node.domain = "DeformConv", ""
            keep = [a for a in node.attribute if a.name not in PLUGIN_ONLY]
            del node.attribute[:]
            node.attribute.extend(keep)
    kept = [o for o in out.opset_import if o.domain != PLUGIN_DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    return out


# ---------------------------------------------------------------- an exported model


@pytest.fixture(scope="module")
def exported() -> onnx.ModelProto:
    """A small network exported by edgeseg: three DeformConv, with/without mask, bias, groups."""
    torch = pytest.importorskip(
        "torch", reason="torch is not installed (pip install -e '.[build]')"
    )
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
    from torch import nn

    from converters.export import ExportSpec, onnx_from_module
    from edgeseg.models.layers import ModulatedDeformConv2d

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = ModulatedDeformConv2d(3, 8, 3, padding=1)
            self.b = ModulatedDeformConv2d(
                8, 8, 3, stride=2, padding=2, dilation=2, groups=2, bias=False, offset_groups=4
            )
            self.offset = nn.Conv2d(8, 2 * 3, (3, 1), padding=(1, 0))
            self.weight = nn.Parameter(torch.randn(5, 8, 3, 1) * 0.2)
            self.head = nn.Conv2d(5, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.b(torch.relu(self.a(x))))
            # torchvision's op without mask and bias: the exporter leaves the mask out
            y = torchvision.ops.deform_conv2d(y, self.offset(y), self.weight, padding=(1, 0))
            return nn.functional.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear")

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # offsets that land between pixels, as after training
        for conv in (net.a.conv_offset, net.b.conv_offset, net.offset):
            conv.weight.normal_(0.0, 0.05)
            conv.bias.uniform_(-1.5, 1.5)
    return onnx_from_module(net, ExportSpec(input_size=(24, 32)))


def test_exported_graph_has_the_cases(exported: onnx.ModelProto) -> None:
    deform = [n for n in exported.graph.node if n.op_type == "DeformConv"]
    assert len(deform) == 3
    # torchvision's op without mask (DCNv1) exports without one; the export gives it an explicit
    # ones mask, because TensorRT's importer sizes a missing mask from the offset (2x the channels)
    assert all(len(n.input) == 5 and n.input[4] for n in deform)
    assert sum(n.input[4].endswith("/ones_mask") for n in deform) == 1


def test_to_plugin_rewrites_every_deform_conv(exported: onnx.ModelProto) -> None:
    before = exported.SerializeToString()
    plugin = to_plugin(exported)
    assert exported.SerializeToString() == before  # the input is never modified
    assert not [n for n in plugin.graph.node if n.op_type == "DeformConv"]
    natives = {n.name: n for n in exported.graph.node if n.op_type == "DeformConv"}
    plugins = [n for n in plugin.graph.node if n.op_type == PLUGIN_OP]
    assert sorted(n.name for n in plugins) == sorted(natives)
    for node in plugins:
        native = natives[node.name]
        attrs = _attrs(node)
        assert node.domain == PLUGIN_DOMAIN
        assert len(node.input) == 5 and list(node.input[:3]) == list(native.input[:3])
        assert list(node.output) == list(native.output)
        assert (
            attrs["plugin_namespace"] == PLUGIN_NAMESPACE
            and attrs["plugin_version"] == PLUGIN_VERSION
        )
        assert {k: attrs[k] for k in PLUGIN_FIELDS} == _semantics(native)["attrs"]
    assert (PLUGIN_DOMAIN, 1) in {(o.domain, o.version) for o in plugin.opset_import}
    onnx.checker.check_model(plugin)


def test_round_trip_restores_the_graph_and_its_outputs(exported: onnx.ModelProto) -> None:
    back = to_native(to_plugin(exported))
    assert back.SerializeToString() == exported.SerializeToString()
    natives = [_semantics(n) for n in exported.graph.node if n.op_type == "DeformConv"]
    assert [_semantics(n) for n in back.graph.node if n.op_type == "DeformConv"] == natives
    image = np.random.default_rng(0).integers(0, 256, (1, 24, 32, 3), dtype=np.uint8)
    for got, expected in zip(
        _run(back, {"image": image}), _run(exported, {"image": image}), strict=True
    ):
        np.testing.assert_array_equal(got, expected)


def test_synthesized_mask_gives_the_same_outputs(exported: onnx.ModelProto) -> None:
    """The ones mask built from the offset's shape computes what the mask-less DeformConv did."""
    plugin = to_plugin(exported)
    image = np.random.default_rng(1).integers(0, 256, (1, 24, 32, 3), dtype=np.uint8)
    got = _run(_plugin_as_deform_conv(plugin), {"image": image})
    expected = _run(exported, {"image": image})
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- hand-built graphs


def _deform_model(
    *,
    x_shape: tuple[int | str, ...] = ("N", 4, 6, 7),
    w_shape: tuple[int, ...] = (6, 2, 3, 3),
    offset_shape: tuple[int | str, ...] = ("N", 18, 6, 7),
    attrs: dict[str, Any] | None = None,
    elem_type: int = TensorProto.FLOAT,
    computed_weight: bool = False,
    inputs: tuple[str, ...] = ("x", "w", "offset"),
    name: str = "dcn",
) -> onnx.ModelProto:
    """One DeformConv over graph inputs x and offset; W an initializer (or Identity of one)."""
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.standard_normal(w_shape) * 0.3).astype(dtype), "w_init")
    nodes = [helper.make_node("Identity", ["w_init"], ["w"], name="weight")]
    if not computed_weight:
        weight.name, nodes = "w", []
    nodes.append(
        helper.make_node(
            "DeformConv",
            list(inputs),
            ["y"],
            name=name,
            **(attrs if attrs is not None else {"pads": [1, 1, 1, 1], "group": 2}),
        )
    )
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", elem_type, list(x_shape)),
            helper.make_tensor_value_info("offset", elem_type, list(offset_shape)),
        ],
        [helper.make_tensor_value_info("y", elem_type, [x_shape[0], w_shape[0], None, None])],
        initializer=[weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


@pytest.mark.parametrize(
    "computed_weight", [False, True], ids=["weight-initializer", "computed-weight"]
)
def test_missing_bias_and_mask_are_supplied_and_removed_again(computed_weight: bool) -> None:
    model = _deform_model(computed_weight=computed_weight)
    plugin = to_plugin(model)
    node = next(n for n in plugin.graph.node if n.op_type == PLUGIN_OP)
    assert node.input[3] and node.input[4]
    assert _attrs(node)[SYNTHESIZED_ATTR] == [3, 4]
    assert set(_attrs(node)[DEFAULTED_ATTR]) == {"strides", "dilations", "offset_group"}
    onnx.checker.check_model(plugin, full_check=True)

    back = to_native(plugin)
    assert back.SerializeToString() == model.SerializeToString()

    rng = np.random.default_rng(2)
    feeds = {
        "x": rng.standard_normal((2, 4, 6, 7)).astype(np.float32),
        "offset": (rng.standard_normal((2, 18, 6, 7)) * 2).astype(np.float32),
    }
    expected = _run(model, feeds)[0]
    np.testing.assert_allclose(
        _run(_plugin_as_deform_conv(plugin), feeds)[0], expected, rtol=0, atol=1e-6
    )
    np.testing.assert_array_equal(_run(back, feeds)[0], expected)


def test_explicit_masks_compute_what_the_maskless_deform_conv_did() -> None:
    model = _deform_model()  # X, W, offset: no bias, no mask
    masked = explicit_masks(model)
    assert model.graph.node[-1].input == ["x", "w", "offset"]  # the input is never modified
    node = next(n for n in masked.graph.node if n.op_type == "DeformConv")
    assert len(node.input) == 5 and node.input[3].endswith("zero_bias")
    assert node.input[4] == "edgeseg_dcn/dcn/ones_mask"
    onnx.checker.check_model(masked, full_check=True)
    rng = np.random.default_rng(3)
    feeds = {
        "x": rng.standard_normal((2, 4, 6, 7)).astype(np.float32),
        "offset": (rng.standard_normal((2, 18, 6, 7)) * 2).astype(np.float32),
    }
    np.testing.assert_allclose(_run(masked, feeds)[0], _run(model, feeds)[0], rtol=0, atol=1e-6)
    again = explicit_masks(masked)  # a node with a mask is left as it is
    assert again.SerializeToString() == masked.SerializeToString()
    # and the plugin pass takes the explicit mask as given (nothing synthesized)
    plugin = next(n for n in to_plugin(masked).graph.node if n.op_type == PLUGIN_OP)
    assert _attrs(plugin).get(SYNTHESIZED_ATTR, []) == []


def test_fp16_graph_gets_fp16_helpers() -> None:
    plugin = to_plugin(_deform_model(elem_type=TensorProto.FLOAT16))
    bias = next(i for i in plugin.graph.initializer if i.name.endswith("zero_bias"))
    assert bias.data_type == TensorProto.FLOAT16 and list(bias.dims) == [6]
    ones = next(n for n in plugin.graph.node if n.op_type == "ConstantOfShape")
    value = helper.get_attribute_value(ones.attribute[0])
    assert value.data_type == TensorProto.FLOAT16 and numpy_helper.to_array(value).tolist() == [1.0]


def test_graph_without_deform_conv_is_unchanged() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    for rewritten in (to_plugin(model), to_native(model)):
        assert rewritten.SerializeToString() == model.SerializeToString()
        assert rewritten is not model


def test_mode_selects_the_pass() -> None:
    model = _deform_model()
    plugin = apply_deform_conv_mode(model, "plugin")
    assert any(n.op_type == PLUGIN_OP for n in plugin.graph.node)
    assert apply_deform_conv_mode(plugin, "native").SerializeToString() == model.SerializeToString()
    with pytest.raises(ConfigError, match="plugin, native; got 'cuda'"):
        apply_deform_conv_mode(model, "cuda")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {
                "x_shape": (1, 4, 6, 7, 5),
                "w_shape": (6, 2, 3, 3, 3),
                "offset_shape": (1, 162, 6, 7, 5),
                "attrs": {"kernel_shape": [3, 3, 3], "group": 2},
            },
            r"kernel_shape=\[3, 3, 3\] is not 2-D",
        ),
        (
            {
                "x_shape": (1, 4, 6, 7, 5),
                "w_shape": (6, 2, 3, 3, 3),
                "offset_shape": (1, 162, 6, 7, 5),
                "attrs": {"group": 2},
            },
            "has rank 5; the plugin runs 2-D",
        ),
        ({"attrs": {"strides": [1, 1, 1]}}, r"strides=\[1, 1, 1\] is not 2-D"),
        (
            {"elem_type": TensorProto.DOUBLE},
            "input x is DOUBLE; the plugin runs FLOAT and FLOAT16 only",
        ),
        ({"attrs": {"pads": [1, -1, 1, 1]}}, "unsupported pads="),
        (
            {"attrs": {"group": 2, "kernel_shape": [5, 5]}},
            r"kernel_shape=\[5, 5\] but W w has shape",
        ),
        ({"attrs": {"group": 4}}, "6 output channels are not a multiple of group=4"),
        ({"attrs": {"offset_group": 3}}, "4 input channels are not a multiple"),
        ({"attrs": {"auto_pad": "SAME"}}, "unknown attribute"),
        ({"inputs": ("x", "w")}, "needs inputs X, W, offset"),
    ],
    ids=[
        "3d-kernel",
        "3d-rank",
        "3d-strides",
        "double",
        "negative-pad",
        "kernel-mismatch",
        "group",
        "offset-group",
        "unknown-attribute",
        "missing-offset",
    ],
)
def test_unsupported_deform_conv_names_the_node(kwargs: dict[str, Any], message: str) -> None:
    model = _deform_model(name="backbone.dcn7", **kwargs)
    with pytest.raises(ExportError, match=rf"DeformConv node backbone\.dcn7: .*{message}"):
        to_plugin(model)


def test_to_native_refuses_another_plugin_version() -> None:
    plugin = to_plugin(_deform_model(name="dcn_v"))
    node = next(n for n in plugin.graph.node if n.op_type == PLUGIN_OP)
    for attr in node.attribute:
        if attr.name == "plugin_version":
            attr.s = b"2"
    with pytest.raises(
        ExportError, match=f"{PLUGIN_OP} node dcn_v: plugin edgeseg::{PLUGIN_OP} version 2"
    ):
        to_native(plugin)


def test_to_native_refuses_unknown_plugin_attributes() -> None:
    plugin = to_plugin(_deform_model(name="dcn_u"))
    node = next(n for n in plugin.graph.node if n.op_type == PLUGIN_OP)
    node.attribute.append(helper.make_attribute("alpha", 1.0))
    with pytest.raises(ExportError, match=f"{PLUGIN_OP} node dcn_u: unknown attribute"):
        to_native(plugin)
