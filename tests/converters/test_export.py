"""torch -> ONNX export, the fused pre/post-processing, and the graph passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from converters.export import DeployWrapper, ExportSpec, logits_of, onnx_from_module, probe_module
from converters.passes import prune_unused, select_outputs, strip_metadata
from edgeseg.errors import ConfigError, ExportError
from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend
from tests.conftest import tiny_module


def test_wrapper_normalises_like_the_textbook() -> None:
    spec = ExportSpec(input_size=(8, 8), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    wrapper = DeployWrapper(torch.nn.Identity(), spec)
    image = torch.randint(0, 256, (1, 8, 8, 3), dtype=torch.uint8)
    expected = (image.permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.25, 0.3]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(wrapper.normalize(image), expected, atol=1e-5, rtol=1e-5)
    mask, probs, logits = wrapper(image)
    assert mask.dtype == torch.uint8 and mask.shape == (1, 8, 8)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 8, 8))


def test_export_graph_interface_and_parity(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = ExportSpec(input_size=(32, 48))
    proto = onnx_from_module(tiny_module(), spec)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["mask", "probs", "logits"]
    image_type = proto.graph.input[0].type.tensor_type
    assert image_type.elem_type == TensorProto.UINT8
    assert [d.dim_value for d in image_type.shape.dim] == [1, 32, 48, 3]
    assert proto.graph.output[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert {op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")} == {19}
    assert not any(n.metadata_props for n in proto.graph.node)
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 48, 3), dtype=np.uint8)
    with OnnxRuntimeBackend(path) as backend:
        got = backend.infer({"image": image})
    with torch.no_grad():
        ref = DeployWrapper(tiny_module(), spec)(torch.from_numpy(image))
    np.testing.assert_allclose(got["logits"], ref[2].numpy(), atol=1e-5)
    np.testing.assert_array_equal(got["mask"], ref[0].numpy())


def test_select_outputs_prunes_the_unused_branch() -> None:
    proto = onnx_from_module(tiny_module(), ExportSpec(input_size=(32, 32)))
    only_mask = select_outputs(proto, ["mask"])
    assert [o.name for o in only_mask.graph.output] == ["mask"]
    assert "Softmax" not in {n.op_type for n in only_mask.graph.node}
    assert "Softmax" in {n.op_type for n in proto.graph.node}  # input untouched
    with pytest.raises(ExportError, match="graph has no output scores; outputs: mask, probs, logits"):
        select_outputs(proto, ["scores"])


def test_prune_and_strip_are_pure() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("Neg", ["x"], ["dead"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])])
    model = helper.make_model(graph)
    model.graph.node[0].metadata_props.add(key="k", value="v")
    pruned = prune_unused(model)
    assert [n.op_type for n in pruned.graph.node] == ["Relu"]
    assert len(pruned.graph.initializer) == 0
    assert len(model.graph.node) == 2
    stripped = strip_metadata(model)
    assert not stripped.graph.node[0].metadata_props and model.graph.node[0].metadata_props


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_size": (0, 8)}, "input_size must be"),
        ({"input_size": (8, 8), "in_channels": 2}, "in_channels must be 1 or 3"),
        ({"input_size": (8, 8), "mean": (0.5,)}, "mean has 1 values for 3 input channels"),
        ({"input_size": (8, 8), "std": (0.2, 0.0, 0.2)}, "std values must be positive"),
        ({"input_size": (8, 8), "mean": (123.7, 116.3, 103.5)}, "0..1 scale"),
        ({"input_size": (8, 8), "opset": 17}, r"opset must be >= 19"),
    ],
)
def test_export_spec_rejects_bad_values(kwargs, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        ExportSpec(**kwargs)


def test_probe_reports_bad_models() -> None:
    spec = ExportSpec(input_size=(16, 16))

    class Shrinks(torch.nn.Module):  # 16 -> 6: not the input divided by an integer
        def forward(self, x):  # type: ignore[no-untyped-def]
            return x[:, :, :6, :6]

    class Grows(torch.nn.Module):
        def forward(self, x):  # type: ignore[no-untyped-def]
            return torch.cat([x, x], dim=2)

    class Broken(torch.nn.Module):
        def forward(self, x):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    with pytest.raises(ExportError, match=r"6x6 logits for a 16x16 input.*multiples of 3x3.*15x15 or 15x18"):
        probe_module(Shrinks(), spec)
    with pytest.raises(ExportError, match=r"32x16 logits for a 16x16 input; expected logits at the input size"):
        probe_module(Grows(), spec)
    with pytest.raises(ExportError, match="model forward failed .*RuntimeError: boom"):
        probe_module(Broken(), spec)
    probe = probe_module(tiny_module(num_classes=6), spec)
    assert probe.num_classes == 6
    assert (probe.output.kind, probe.output.scale, probe.output.align_corners) == ("out", (1, 1), None)
    with pytest.raises(ExportError, match=r"a dict with keys \['aux'\] but neither 'out' nor 'logits'"):
        logits_of({"aux": torch.zeros(1)})
    with pytest.raises(ExportError, match="returned str"):
        logits_of("x")
    assert logits_of((torch.ones(1), torch.zeros(1))).item() == 1.0


def test_grayscale_export() -> None:
    spec = ExportSpec(input_size=(16, 16), in_channels=1, mean=(0.5,), std=(0.25,))
    proto = onnx_from_module(tiny_module(in_channels=1), spec)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 16, 16, 1]


def test_uint8_io_goes_through_float_casts() -> None:
    """TensorRT takes uint8 I/O only via casts to/from float: the check names what breaks it."""
    from converters.export import uint8_io_problems

    def graph(nodes: list, out_type: int = TensorProto.UINT8) -> onnx.ModelProto:
        g = helper.make_graph(
            nodes, "g",
            [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 2, 2, 3])],
            [helper.make_tensor_value_info("mask", out_type, None)],
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])

    good = graph([
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ArgMax", ["f"], ["i"], axis=3, keepdims=0),
        helper.make_node("Cast", ["i"], ["i_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["i_f"], ["mask"], to=TensorProto.UINT8),
    ])
    assert uint8_io_problems(good) == []
    bad = graph([
        helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2], name="tr"),
        helper.make_node("Cast", ["t"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ArgMax", ["f"], ["i"], axis=1, keepdims=0),
        helper.make_node("Cast", ["i"], ["mask"], to=TensorProto.UINT8),
    ])
    problems = uint8_io_problems(bad)
    assert any("feeds Transpose 'tr'" in p for p in problems), problems
    assert any("output 'mask'" in p for p in problems), problems
    # Shape on the uint8 input: what the exporter writes for dynamic graphs, refused by TensorRT
    shape_read = graph([
        helper.make_node("Shape", ["image"], ["dims"], name="dims_of_image"),
        *good.graph.node,
    ])
    assert uint8_io_problems(shape_read) == [
        "input 'image' feeds Shape 'dims_of_image' (expected a Cast to float)"
    ]
    from converters.passes import shapes_after_cast

    fixed = shapes_after_cast(shape_read)
    assert uint8_io_problems(fixed) == []
    assert [n.input[0] for n in fixed.graph.node if n.op_type == "Shape"] == ["f"]
    assert [n.input[0] for n in shape_read.graph.node if n.op_type == "Shape"] == ["image"]  # pure


def test_exported_graphs_keep_uint8_io_tensorrt_friendly(tiny_bundle: Path, dynamic_bundle: Path) -> None:
    from converters.export import uint8_io_problems

    for bundle in (tiny_bundle, dynamic_bundle):
        model = onnx.load(str(bundle / "model.onnx"))
        assert uint8_io_problems(model) == []
        # a dynamic graph reads its height and width through the Cast: `image` feeds a Cast only
        assert [n.op_type for n in model.graph.node if "image" in n.input] == ["Cast"]
