"""converters.options: build()'s options defined once, their defaults, checks and flat keywords."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from typing import Any

import pytest

from converters.options import (
    CALIBRATE_CHECK,
    DEFAULT_EVAL_IMAGES,
    BuildOptions,
    CheckOptions,
    CRFOptions,
    ModelOptions,
    QuantOptions,
    flat_names,
)
from converters.tensorrt import EngineConfig
from edgeseg.errors import ConfigError
from edgeseg.metrics import DEFAULT_MIN_AGREEMENT

# build()'s keyword defaults before the options object existed (in_channels=None meant RGB).
OLD_DEFAULTS: dict[str, Any] = {
    "classes": None,
    "num_classes": None,
    "input_size": None,
    "in_channels": 3,
    "mean": None,
    "std": None,
    "precision": "fp32",
    "weights": None,
    "options": None,
    "outputs": ("mask",),
    "palette": None,
    "dynamic": False,
    "multiple_of": None,
    "samples": None,
    "num_samples": 8,
    "min_agreement": None,
    "opset": 19,
    "overwrite": False,
    "crf": None,
    "crf_params": None,
    "calib": None,
    "calib_size": 200,
    "calib_seed": 0,
    "method": "entropy",
    "placement": None,  # follows the target (QuantOptions.for_target): was "cpu", which TensorRT refuses
    "mixed_precision": True,
    "labels": None,
    "label_format": "auto",
    "ignore_index": None,
    "max_miou_drop": None,
    "confidence": 0.95,  # new: fp16/int8 are judged on bounds that hold for unseen frames
    "trt_cache_version": "10.3.0",
    "min_int8_share": 0.5,  # new: an int8 graph must quantize half the compute
    "align_corners": None,  # new: low-resolution logits follow the model family
    "target": "auto",
    "engine": EngineConfig(),
}


def test_defaults_are_the_old_ones() -> None:
    assert BuildOptions().to_kwargs() == OLD_DEFAULTS
    assert BuildOptions.from_kwargs() == BuildOptions()
    # `edgeseg calibrate` judges on more images when not told (no PyTorch check there)
    assert CALIBRATE_CHECK == CheckOptions(num_samples=DEFAULT_EVAL_IMAGES) and DEFAULT_EVAL_IMAGES == 16


def test_mask_is_the_first_graph_output() -> None:
    from converters import export

    assert ModelOptions().outputs[0] == export.GRAPH_OUTPUTS[0] == "mask"


def test_importing_the_options_pulls_in_no_heavy_module() -> None:
    code = (
        "import sys, converters.options\n"
        "print(' '.join(m for m in ('torch', 'onnx', 'tensorrt', 'cv2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_flat_names_cover_every_field_once() -> None:
    table = flat_names()
    groups = [ModelOptions, CheckOptions, QuantOptions, CRFOptions]
    assert len(table) == 4 + sum(len(fields(g)) for g in groups)  # precision, target, overwrite, engine
    assert table["calib_seed"] == ("quant", "seed")
    assert table["crf"] == ("crf", "mode") and table["crf_params"] == ("crf", "params")
    assert table["engine"] == (None, "engine") and table["min_agreement"] == ("check", "min_agreement")


def test_unknown_keyword_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown build options \['colour'\]; valid: precision, target") as err:
        BuildOptions.from_kwargs(colour="red", num_classes=3)
    assert all(name in str(err.value) for name in flat_names())


def test_unknown_group_field_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown QuantOptions fields \['sed'\]; valid: calib, calib_size, seed"):
        QuantOptions.from_mapping({"sed": 1})
    base = QuantOptions(calib="frames", calib_size=16)
    assert QuantOptions.from_mapping({"method": "minmax"}, base=base) == QuantOptions(
        calib="frames", calib_size=16, method="minmax"
    )


def test_round_trip_through_the_flat_keywords() -> None:
    options = BuildOptions.from_kwargs(
        classes=["sky", "road"],
        input_size=(64, 96),
        in_channels=1,
        mean=[0.5],
        std=(0.25,),
        options={"width": 2},
        outputs=["logits", "mask"],
        palette=[[0, 0, 0], [255, 255, 255]],
        opset=20,
        samples="frames",
        labels="labels",
        num_samples=3,
        min_agreement=0.98,
        max_miou_drop=0.5,
        precision="int8",
        calib="calib.npz",
        calib_size=16,
        calib_seed=7,
        method="minmax",
        placement="tensorrt",
        mixed_precision=False,
        crf="separate",
        crf_params={"window": 3, "iterations": 2},
        target="cpu",
        overwrite=True,
        engine={"opt_level": 1, "max_shape": [64, 64]},
    )
    assert BuildOptions.from_kwargs(**options.to_kwargs()) == options
    assert options.model.classes == ("sky", "road") and options.model.mean == (0.5,)
    assert options.model.outputs == ("mask", "logits")  # the graph's order, mask first
    assert options.model.palette == ((0, 0, 0), (255, 255, 255))
    assert options.quant.seed == 7 and options.crf.mode == "separate"
    assert options.crf.params is not None and options.crf.params.window == 3  # type: ignore[union-attr]
    assert options.engine == EngineConfig(opt_level=1, max_shape=(64, 64))


def test_groups_may_be_given_as_dicts() -> None:
    options = BuildOptions(model={"num_classes": 3}, engine={"opt_level": 2})  # type: ignore[arg-type]
    assert options.model == ModelOptions(num_classes=3) and options.engine.opt_level == 2


def test_agreement_targets_come_from_the_metrics_defaults() -> None:
    assert BuildOptions().parity_target() == DEFAULT_MIN_AGREEMENT["fp32"]
    assert BuildOptions.from_kwargs(min_agreement=0.9).parity_target() == 0.9
    # with fp16/int8, min_agreement is the lowered graph's target; fp32 keeps its own
    assert BuildOptions.from_kwargs(precision="fp16", min_agreement=0.9).parity_target() == 0.999


def test_crf_params_resolve_lazily() -> None:
    from converters.crf import CRFParams

    assert CRFOptions().crf_params() is None
    assert CRFOptions(mode="fused").crf_params() == CRFParams()
    given = CRFParams(window=3)
    assert CRFOptions(mode="fused", params=given).crf_params() is given


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # ModelOptions
        ({"classes": "road"}, r"classes must be a list of names, got 'road'"),
        ({"num_classes": 0}, r"num_classes must be a positive integer, got 0"),
        ({"input_size": (0, 4)}, r"input_size must be positive \(height, width\), got \(0, 4\)"),
        ({"input_size": "big"}, r"input_size must be \(height, width\), got 'big'"),
        ({"in_channels": 2}, r"in_channels must be 1 or 3, got 2"),
        ({"mean": "a,b"}, r"mean must be per-channel numbers, got 'a,b'"),
        ({"std": [None]}, r"std must be per-channel numbers, got \[None\]"),
        ({"options": ["width"]}, r"options must be a dict of zoo model options, got \['width'\]"),
        ({"outputs": ["mask", "scores"]}, r"unknown outputs \['scores'\]; valid: mask, probs, logits"),
        ({"palette": [[0, 0, 300]]}, r"palette entry 0 is \[0, 0, 300\]; expected \[r, g, b\]"),
        ({"palette": [[0, 0, 0], "red"]}, r"palette entry 1 is 'red'"),
        ({"dynamic": "yes"}, r"dynamic must be True or False, got 'yes'"),
        ({"multiple_of": 0}, r"multiple_of must be >= 1, got 0"),
        ({"opset": "19"}, r"opset must be an integer from 19 to 23 .*, got '19'"),
        ({"opset": 99}, r"opset must be an integer from 19 to 23 \(what torch.onnx's exporter writes and ONNX DeformConv needs\), got 99"),
        ({"opset": 18}, r"opset must be an integer from 19 to 23 .*, got 18"),
        ({"opset": True}, r"opset must be an integer from 19 to 23 .*, got True"),
        # CheckOptions
        ({"num_samples": 0}, r"num_samples must be >= 1, got 0"),
        ({"label_format": "png"}, r"label_format must be one of auto, ids, voc, cityscapes, got 'png'"),
        ({"ignore_index": 1.5}, r"ignore_index must be an integer label id, got 1.5"),
        ({"min_agreement": 99.9}, r"min_agreement must be a fraction in \[0, 1\], got 99.9"),
        ({"max_miou_drop": -1}, r"max_miou_drop must be >= 0 \(mIoU points\), got -1"),
        ({"labels": "labels"}, r"labels need samples=DIR \(--samples\)"),
        # QuantOptions
        ({"calib_size": 0}, r"calib_size must be >= 1, got 0"),
        ({"calib_seed": "a"}, r"calib_seed must be an integer, got 'a'"),
        ({"method": "kl"}, r"method must be one of minmax, percentile, entropy, got 'kl'"),
        ({"placement": "gpu"}, r"placement must be one of cpu, tensorrt, got 'gpu'"),
        ({"mixed_precision": "yes"}, r"mixed_precision must be True or False, got 'yes'"),
        ({"trt_cache_version": ""}, r"trt_cache_version must be a TensorRT version such as '10.3.0', got ''"),
        # CRFOptions
        ({"crf": "dense"}, r"crf must be one of separate, fused \(or None\), got 'dense'"),
        ({"crf_params": {"window": 3}}, r"crf_params were given without crf='separate' or crf='fused'"),
        ({"crf": "fused", "crf_params": {"sigma": 1}}, r"unknown crf_params \['sigma'\]; valid: iterations, window"),
        ({"crf": "fused", "crf_params": {"window": 4}}, r"crf window must be an odd integer >= 3, got 4"),
        ({"crf": "fused", "crf_params": "small"}, r"crf_params must be CRFParams or a dict of its fields, got 'small'"),
        # BuildOptions, and what needs two groups
        ({"precision": "int4"}, r"precision must be one of fp32, fp16, int8, got 'int4'"),
        ({"target": "gpu"}, r"target must be one of auto, tensorrt, cpu, got 'gpu'"),
        ({"overwrite": "yes"}, r"overwrite must be True or False, got 'yes'"),
        ({"precision": "int8"}, r"int8 needs a calibration set: calib=PATH \(--calib\)"),
        ({"calib": "frames"}, r"calib is for precision='int8'; this build is fp32"),
        ({"crf": "separate", "dynamic": True}, r"cannot be combined with dynamic=True"),
        ({"engine": {"opt_level": 9}}, r"opt_level must be an integer 0..5, got 9"),
        ({"engine": {"colour": 1}}, r"unknown engine options \['colour'\]; valid: workspace_mb"),
        ({"engine": 3}, r"engine must be an EngineConfig or a dict of its fields, got int"),
    ],
)
def test_each_check_names_the_option_and_value(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BuildOptions.from_kwargs(**kwargs)


def test_a_group_of_the_wrong_type() -> None:
    with pytest.raises(ConfigError, match=r"model must be ModelOptions or a dict of its fields, got 'unet'"):
        BuildOptions(model="unet")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"calib": "frames", "colour": 1}, r"unknown calibrate options \['colour'\]; valid: calib, calib_size"),
        ({"calib": "frames", "quant": QuantOptions(), "calib_size": 8},
         r"give quant= or its fields \['calib_size'\] as keywords, not both"),
        ({"calib": "frames", "check": CheckOptions(), "num_samples": 8},
         r"give check= or its fields \['num_samples'\] as keywords, not both"),
        ({}, r"int8 needs a calibration set"),
        ({"calib": "a", "quant": QuantOptions(calib="b")}, r"calib a and quant.calib b differ; give one"),
        ({"calib": "frames", "labels": "labels"}, r"labels need samples=DIR"),
    ],
)
def test_calibrate_bundle_options(call: dict[str, Any], message: str) -> None:
    """calibrate_bundle takes QuantOptions/CheckOptions, or their fields as its old keywords."""
    from converters.precision import calibrate_bundle

    with pytest.raises(ConfigError, match=message):  # before the bundle is even read
        calibrate_bundle("/nonexistent.edgeseg", **call)


def test_calibrate_bundle_defaults() -> None:
    from converters.precision import _calibrate_options

    quant, check = _calibrate_options("frames", None, None, {"seed": 3})
    assert quant == QuantOptions(calib="frames", seed=3) and check == CALIBRATE_CHECK
    quant, check = _calibrate_options(None, QuantOptions(calib="x"), CheckOptions(), {})
    assert quant.calib == "x" and check.num_samples == CheckOptions().num_samples


def test_opset_range_is_what_the_installed_exporter_supports() -> None:
    """MAX_OPSET is torch.onnx's own ceiling (a constant so that converters.options needs no torch)."""
    torch_constants = pytest.importorskip("torch.onnx._constants")
    from converters.options import MAX_OPSET, MIN_OPSET

    assert MAX_OPSET == torch_constants.ONNX_MAX_OPSET
    assert MIN_OPSET == 19 and ModelOptions(opset=MIN_OPSET).opset == 19
    assert ModelOptions(opset=MAX_OPSET).opset == MAX_OPSET
