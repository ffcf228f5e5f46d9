"""What popular model libraries return, through edgeseg.build: where the logits are, and logits
smaller than the input upsampled in the graph (issue 14).

Hugging Face's ``ModelOutput`` (``.logits``, a dict keyed ``logits``), torchvision's
``{"out": ...}``, tuples, and heads predicting at 1/4 or 1/8 of the input build with no
wrapper: the graph upsamples the logits (bilinear, the model family's ``align_corners``)
before its argmax and softmax, PyTorch's reference does the same, and the manifest records
where the logits were and the upsampling (``model.output``).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn import functional as F

import edgeseg
from converters.export import (
    DeployWrapper,
    ExportSpec,
    family_align_corners,
    locate_logits,
    probe_module,
)
from edgeseg.errors import ConfigError, ExportError
from edgeseg.testing import assert_parity

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Logits:
    """An output object with a ``.logits`` attribute (not a dict)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class HFLikeOutput(OrderedDict):  # type: ignore[type-arg]
    """What a Hugging Face ``ModelOutput`` is: an OrderedDict whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


class LowRes(nn.Module):
    """A head predicting at 1/``factor`` (per axis), returning its logits as ``wrap`` says."""

    def __init__(self, factor: tuple[int, int] = (4, 4), num_classes: int = 5, wrap: str = "tensor") -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, kernel_size=factor, stride=factor)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, num_classes, 3, padding=1)
        self.wrap = wrap

    def forward(self, x: torch.Tensor) -> Any:
        y = self.head(torch.relu(self.bn(self.stem(x))))
        if self.wrap == "tuple":
            return (y, torch.zeros(1))
        if self.wrap == "logits":
            return {"logits": y, "hidden": x}
        if self.wrap == "out":
            return {"out": y, "aux": y * 0}
        if self.wrap == "attribute":
            return Logits(y)
        if self.wrap == "hf":
            return HFLikeOutput(logits=y)
        return y


def low_res(factor: tuple[int, int] = (4, 4), wrap: str = "tensor", num_classes: int = 5) -> LowRes:
    torch.manual_seed(0)
    model = LowRes(factor, num_classes, wrap).eval()
    with torch.no_grad():  # non-trivial BN statistics and logits of a few units
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.head.weight.mul_(4.0)
    return model


def eighth_logits_module() -> LowRes:
    """The factory ``edgeseg parity --factory`` rebuilds the 1/8 dict-``logits`` module with."""
    return low_res((8, 8), "logits")


def frames(n: int, size: tuple[int, int], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def torch_mask(model: nn.Module, frame: np.ndarray, align_corners: bool = False) -> np.ndarray:
    """PyTorch's own mask for one frame: normalise, forward, upsample to the frame, argmax."""
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = locate_logits(model(x))[0]
        logits = F.interpolate(logits, size=frame.shape[:2], mode="bilinear", align_corners=align_corners)
    return logits.argmax(1)[0].numpy().astype(np.uint8)


def manifest_output(bundle: edgeseg.Bundle) -> dict[str, Any] | None:
    """``model.output`` as written in manifest.json, and the loaded record agrees with it."""
    data = json.loads((bundle.path / "manifest.json").read_text())
    written = data["model"].get("output")
    record = edgeseg.Bundle.load(bundle.path).manifest.model.output
    if written is None:
        assert record is None
    else:
        assert record is not None and record.kind == written["kind"] and list(record.scale) == written["scale"]
    return written


# -- where the logits are ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "kind"),
    [
        (lambda y: y, "tensor"),
        (lambda y: {"out": y, "aux": y * 0}, "out"),
        (lambda y: {"logits": y}, "logits"),
        (lambda y: HFLikeOutput(logits=y), "logits"),
        (lambda y: Logits(y), "attribute"),
        (lambda y: (y, "hidden states"), "tuple"),
        (lambda y: [{"out": y}], "tuple"),
        (lambda y: (Logits(y),), "tuple"),
    ],
    ids=["tensor", "out", "logits", "model-output", "attribute", "tuple", "list-of-dict", "tuple-of-object"],
)
def test_logits_are_found_where_libraries_put_them(output: Any, kind: str) -> None:
    y = torch.randn(1, 3, 4, 4)
    found, got = locate_logits(output(y))
    assert found is y and got == kind


def test_out_is_preferred_to_logits() -> None:
    a, b = torch.zeros(1, 2, 4, 4), torch.ones(1, 2, 4, 4)
    assert locate_logits({"logits": b, "out": a}) == (a, "out")


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ({"aux": torch.zeros(1), "feats": 1}, r"a dict with keys \['aux', 'feats'\] but neither 'out' nor 'logits'"),
        (HFLikeOutput(loss=torch.zeros(1)), r"a HFLikeOutput \(a dict\) with keys \['loss'\]"),
        ("logits", r"model returned str;"),
        ((), r"an empty tuple"),
        (("a", torch.zeros(1)), r"a tuple of 2 items whose first is str"),
        (None, r"model returned NoneType;"),
        ({"out": "x"}, r"a dict with keys \['out'\]"),
    ],
    ids=["unknown-dict", "model-output-without-logits", "string", "empty-tuple", "tuple-of-string", "none", "out-not-a-tensor"],
)
def test_anything_else_is_refused_naming_what_was_returned(output: Any, message: str) -> None:
    with pytest.raises(ExportError, match=message) as err:
        locate_logits(output)
    accepted = str(err.value).split("; expected ", 1)[1]
    for what in ("tensor", "'out'", "'logits'", "ModelOutput", ".logits attribute", "tuple/list"):
        assert what in accepted


# -- logits smaller than the input --------------------------------------------------------------


@pytest.mark.parametrize(
    ("factor", "wrap", "kind"),
    [((4, 4), "hf", "logits"), ((8, 8), "logits", "logits"), ((2, 4), "tuple", "tuple"), ((1, 1), "out", "out")],
)
def test_probe_finds_the_scale_of_the_logits(factor: tuple[int, int], wrap: str, kind: str) -> None:
    probe = probe_module(low_res(factor, wrap), ExportSpec(input_size=(32, 64)))
    assert probe.num_classes == 5
    assert probe.output.kind == kind and probe.output.scale == factor
    assert probe.output.align_corners == (None if factor == (1, 1) else False)


def test_align_corners_follows_the_option_then_the_model_family() -> None:
    spec = ExportSpec(input_size=(32, 32))
    model = low_res((4, 4))
    assert probe_module(model, spec, align_corners=True).output.align_corners is True
    assert family_align_corners(model) == (False, family_align_corners(model)[1])
    model.align_corners = True  # type: ignore[assignment]  # mmsegmentation's segmentors carry one
    assert probe_module(model, spec).output.align_corners is True
    assert probe_module(model, spec, align_corners=False).output.align_corners is False  # the option wins
    headed = low_res((4, 4))
    headed.decode_head = nn.Module()
    headed.decode_head.align_corners = True  # type: ignore[assignment]
    assert family_align_corners(headed) == (True, "its decode_head's align_corners attribute")
    hf_like = type("SegformerLike", (LowRes,), {"__module__": "transformers.models.segformer.modeling"})()
    assert family_align_corners(hf_like) == (False, "Hugging Face's rule")


def test_a_factor_that_does_not_divide_is_refused_with_sizes_that_work() -> None:
    class Ceil(nn.Module):  # stride 4 with padding: ceil(h / 4), 17x17 for 66x66
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(x, 4, 4, ceil_mode=True)

    with pytest.raises(ExportError, match=r"17x17 logits for a 66x66 input.*66/17 and 66/17.*1/4 x 1/4.*"
                                          r"multiples of 4x4.*64x64 or 64x68 or 68x64 or 68x68"):
        probe_module(Ceil(), ExportSpec(input_size=(66, 66)))


def test_the_wrapper_upsamples_before_argmax_and_softmax() -> None:
    """Every output at the input size; the fixed-size (scale) and dynamic (size) paths agree."""
    model = low_res((4, 4), "hf")
    image = torch.from_numpy(frames(1, (32, 48))[0])[None]
    fixed = DeployWrapper(model, ExportSpec(input_size=(32, 48), logits_scale=(4, 4))).eval()
    dynamic = DeployWrapper(model, ExportSpec(input_size=(32, 48), logits_scale=(4, 4), dynamic=True, multiple_of=16))
    with torch.no_grad():
        mask, probs, logits = fixed(image)
        d_mask, d_probs, d_logits = dynamic.eval()(image)
        low = model(fixed.normalize(image))["logits"]
    assert mask.shape == (1, 32, 48) and probs.shape == logits.shape == (1, 5, 32, 48)
    expected = F.interpolate(low, size=(32, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(d_logits, logits)
    assert torch.equal(mask, expected.argmax(1).to(torch.uint8)) and torch.equal(d_mask, mask)
    torch.testing.assert_close(probs, expected.softmax(1))


def test_a_dynamic_graph_needs_sizes_the_factor_divides() -> None:
    with pytest.raises(ConfigError, match=r"1/8 x 1/8 of the input.*multiple_of is 4: pass multiple_of=8"):
        ExportSpec(input_size=(64, 64), dynamic=True, multiple_of=4, logits_scale=(8, 8))
    with pytest.raises(ConfigError, match="logits_scale must be"):
        ExportSpec(input_size=(64, 64), logits_scale=(0, 4))


# -- through edgeseg.build ----------------------------------------------------------------------


def test_build_refuses_what_it_cannot_deploy_and_writes_nothing(tmp_path: Path) -> None:
    class Features(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"features": x, "aux": x}

    class Text(nn.Module):
        def forward(self, x: torch.Tensor) -> str:
            return "road"

    with pytest.raises(ExportError, match=r"16x16 logits for a 66x66 input.*64x64 or 64x68"):
        edgeseg.build(low_res((4, 4)), tmp_path / "b", input_size=(66, 66), num_classes=5)
    with pytest.raises(ExportError, match=r"a dict with keys \['features', 'aux'\] but neither"):
        edgeseg.build(Features(), tmp_path / "b", input_size=(32, 32), num_classes=3)
    with pytest.raises(ExportError, match=r"model returned str; expected the logits as a tensor"):
        edgeseg.build(Text(), tmp_path / "b", input_size=(32, 32), num_classes=3)
    with pytest.raises(ConfigError, match=r"multiple_of is 2: pass multiple_of=4"):
        edgeseg.build(low_res((4, 4)), tmp_path / "b", input_size=(64, 64), num_classes=5, dynamic=True, multiple_of=2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("factor", "wrap", "record"),
    [
        ((1, 1), "tensor", None),
        ((1, 1), "tuple", {"kind": "tuple", "scale": [1, 1]}),
        ((8, 8), "logits", {"kind": "logits", "scale": [8, 8], "align_corners": False}),
        ((4, 4), "attribute", {"kind": "attribute", "scale": [4, 4], "align_corners": False}),
        ((2, 4), "tuple", {"kind": "tuple", "scale": [2, 4], "align_corners": False}),
    ],
    ids=["full-res-tensor", "tuple", "dict-logits-eighth", "attribute-quarter", "tuple-2x4"],
)
def test_stand_in_modules_build_with_parity_and_their_record(
    tmp_path: Path, factor: tuple[int, int], wrap: str, record: dict[str, Any] | None
) -> None:
    model = low_res(factor, wrap)
    bundle = edgeseg.build(model, tmp_path / "b", input_size=(64, 96), num_classes=5, outputs=["mask", "logits"],
                           num_samples=4)
    assert manifest_output(bundle) == record  # a tensor at the input size is left out (the default)
    parity = bundle.manifest.parity
    assert parity is not None and parity.agreement >= 0.9999
    assert parity.max_abs_error is not None and parity.max_abs_error < 1e-4
    frame = frames(1, (64, 96))[0]
    with edgeseg.Segmenter(bundle.path) as seg:
        result = seg(frame)
    assert result.mask.shape == (64, 96)
    assert (result.mask == torch_mask(model, frame)).mean() >= 0.999
    assert_parity(bundle.path, model, list(frames(3, (64, 96), seed=2)), max_abs_error=1e-4)


@pytest.mark.slow
def test_the_align_corners_option_reaches_graph_manifest_and_reference(tmp_path: Path) -> None:
    model = low_res((4, 4), "out")
    bundle = edgeseg.build(model, tmp_path / "ac", input_size=(64, 64), num_classes=5, align_corners=True,
                           num_samples=2)
    assert manifest_output(bundle) == {"kind": "out", "scale": [4, 4], "align_corners": True}
    graph = onnx.load(str(bundle.graph("fp32")))
    resize = next(n for n in graph.graph.node if n.op_type == "Resize")
    assert {a.name: a.s for a in resize.attribute}["coordinate_transformation_mode"] == b"align_corners"
    frame = frames(1, (64, 64))[0]
    with edgeseg.Segmenter(bundle.path) as seg:
        mask = seg(frame).mask
    assert (mask == torch_mask(model, frame, align_corners=True)).mean() >= 0.999
    assert (mask != torch_mask(model, frame, align_corners=False)).any()  # the option changed something
    assert_parity(bundle.path, model, [frame], max_abs_error=1e-4)
    from click.testing import CliRunner

    from edgeseg.cli import cli

    info = CliRunner().invoke(cli, ["info", str(bundle.path)])
    assert info.exit_code == 0, info.output
    assert "output      logits from out, upsampled x4x4 in the graph (bilinear, align_corners=True)" in info.output


@pytest.mark.slow
def test_parity_cli_rebuilds_the_upsampling_from_the_manifest(tmp_path: Path) -> None:
    """``edgeseg parity --factory`` on a 1/8 bundle: the reference upsamples as the graph does."""
    from PIL import Image

    from edgeseg.cli import cli

    bundle = edgeseg.build(eighth_logits_module(), tmp_path / "eighth", input_size=(64, 64), num_classes=5)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames(3, (64, 64))):
        Image.fromarray(frame).save(folder / f"{i}.png")
    result = CliRunner().invoke(cli, [
        "parity", str(bundle.path), "--images", str(folder),
        "--factory", "tests.converters.test_model_outputs:eighth_logits_module",
        "--min-agreement", "0.999", "--max-abs-error", "1e-4", "--json", str(tmp_path / "p.json"),
    ])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "p.json").read_text())["artefacts"][0]
    assert figures["agreement"] >= 0.999 and figures["max_abs_error"] < 1e-4


@pytest.mark.slow
def test_dynamic_quarter_resolution_head_runs_at_another_size(tmp_path: Path) -> None:
    """The graph upsamples to the size it is fed, not the one it was exported at."""
    model = low_res((4, 4), "hf")
    bundle = edgeseg.build(model, tmp_path / "dyn", input_size=(64, 64), num_classes=5, dynamic=True,
                           outputs=["mask", "logits"], num_samples=2)
    assert manifest_output(bundle) == {"kind": "logits", "scale": [4, 4], "align_corners": False}
    graph = onnx.load(str(bundle.graph("fp32")))
    assert [d.dim_param for d in graph.graph.output[0].type.tensor_type.shape.dim[1:]] == ["height", "width"]
    for size in ((96, 160), (128, 64)):
        frame = frames(1, size, seed=sum(size))[0]
        with edgeseg.Segmenter(bundle.path) as seg:
            result = seg(frame)
        assert result.mask.shape == size
        np.testing.assert_array_equal(result.mask, torch_mask(model, frame))
    assert_parity(bundle.path, model, [frames(1, (96, 160))[0], frames(1, (128, 64))[0]], max_abs_error=1e-4)


@pytest.mark.slow
def test_huggingface_segformer_builds_with_no_wrapper(tmp_path: Path) -> None:
    transformers = pytest.importorskip(
        "transformers", reason="Hugging Face transformers is not installed (pip install 'edgeseg[test]')"
    )
    config = transformers.SegformerConfig(
        depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 32, 64],
        num_attention_heads=[1, 1, 2, 4], mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=32, num_labels=5,
        initializer_range=0.3,  # logits of several units, so that the argmax is not decided by noise
    )
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    bundle = edgeseg.build(model, tmp_path / "segformer", input_size=(64, 64), num_classes=5,
                           outputs=["mask", "probs", "logits"])
    assert manifest_output(bundle) == {"kind": "logits", "scale": [4, 4], "align_corners": False}
    parity = bundle.manifest.parity
    assert parity is not None and parity.agreement >= 0.9999 and parity.max_abs_logit is not None
    assert parity.max_abs_logit > 1.0
    assert parity.max_abs_error is not None and parity.max_abs_error < 1e-3
    # the fused upsampling is one Resize by constant scales, half-pixel (align_corners=False)
    graph = onnx.load(str(bundle.graph("fp32")))
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.graph.initializer}
    last = [n for n in graph.graph.node if n.op_type == "Resize"][-1]
    np.testing.assert_array_equal(constants[last.input[2]], [1, 1, 4, 4])
    assert {a.name: a.s for a in last.attribute}["coordinate_transformation_mode"] == b"half_pixel"
    # Hugging Face's own post-processing: logits upsampled with align_corners=False, then argmax
    frame = frames(1, (64, 64))[0]
    with edgeseg.Segmenter(bundle.path) as seg:
        result = seg(frame)
    assert (result.mask == torch_mask(model, frame)).mean() >= 0.999
    report = assert_parity(bundle.path, model, list(frames(4, (64, 64), seed=3)), max_abs_error=1e-3)
    assert report.artefacts[0].agreement >= 0.999


@pytest.mark.slow
def test_torchvision_out_at_full_resolution(tmp_path: Path) -> None:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()
    bundle = edgeseg.build(model, tmp_path / "lraspp", input_size=(64, 64), num_classes=3, num_samples=4)
    assert manifest_output(bundle) == {"kind": "out", "scale": [1, 1]}
    output = bundle.manifest.model.output
    assert output is not None and output.scale == (1, 1) and output.align_corners is None
    parity = bundle.manifest.parity
    assert parity is not None and parity.agreement >= 0.999
    assert parity.max_abs_error is not None and parity.max_abs_error < 1e-3
