"""Parametrised tests of the model zoo (``edgeseg.models``).

One table of cases (model name + options) drives the build / forward /
``in_channels`` tests; the registry, option, input-size, weights and
complexity tests run over ``list_models()``. Widths are reduced so the whole
file stays fast on a 2-core CPU; full-width models are only built on the meta
device.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from edgeseg.errors import ConfigError, UnknownModelError, WeightsError
from edgeseg.models import (
    LoadReport,
    ModelSpec,
    check_input_size,
    complexity,
    create_model,
    get_spec,
    list_models,
    load_weights,
    parse_option,
)
from edgeseg.models.layers import (
    BilinearConvTranspose2d,
    ModulatedDeformConv2d,
    SqueezeExcite,
    decomposed_deform_conv,
    make_deformable,
    modulated_deform_conv2d_reference,
)

NUM_CLASSES = 3
SMALL_FCN = {"width": 0.125, "fc_channels": 32}
SMALL_DLP = {"width": 0.35, "aspp_channels": 32}

# (model, options): every choice of every enumerated option and every boolean
# option set to True appears at least once (checked by
# test_case_table_covers_every_option).
CASES: list[tuple[str, dict[str, Any]]] = [
    ("fcn32s", SMALL_FCN),
    ("fcn16s", SMALL_FCN),
    ("fcn16s", {**SMALL_FCN, "upsample": "bilinear"}),
    ("fcn8s", SMALL_FCN),
    ("fcn8s", {**SMALL_FCN, "upsample": "bilinear"}),
    ("fcn32s", {**SMALL_FCN, "upsample": "bilinear"}),
    ("unet", {"base_channels": 8}),
    ("unet", {"base_channels": 8, "upsample": "bilinear", "se": True, "deformable": True}),
    ("deeplabv3", {"backbone": "mobilenet_v3_large"}),
    ("deeplabv3", {"backbone": "mobilenet_v3_large", "deformable": True}),
    ("deeplabv3", {"backbone": "resnet50", "deformable": True}),
    ("deeplabv3p", SMALL_DLP),
    ("deeplabv3p", {**SMALL_DLP, "output_stride": 8, "upsample": "transposed", "se": True}),
    ("deeplabv3p", {**SMALL_DLP, "deformable": "aspp"}),
    ("deeplabv3p", {**SMALL_DLP, "deformable": True, "output_stride": 8}),
    ("deeplabv3p", {"backbone": "resnet50", "aspp_channels": 32, "upsample": "transposed"}),
    (
        "deeplabv3p",
        {"backbone": "resnet50", "aspp_channels": 32, "output_stride": 8, "deformable": "backbone"},
    ),
    ("deconvnet", SMALL_FCN),
    ("hypercolumn", {**SMALL_FCN, "column_channels": 16}),
    ("frrn", {"width": 0.125}),
    ("frrn", {"width": 0.125, "variant": "B"}),
    ("deeplabv3p", {"backbone": "efficientnet_b0", "aspp_channels": 32, "deformable": "backbone"}),
    ("deeplabv3p", {"backbone": "densenet121", "aspp_channels": 32, "output_stride": 8}),
    ("deeplabv3p", {"backbone": "googlenet", "aspp_channels": 32}),
]
CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in CASES]
MODEL_NAMES = ["deconvnet", "deeplabv3", "deeplabv3p", "fcn16s", "fcn32s", "fcn8s", "frrn", "hypercolumn", "unet"]


@functools.cache
def _cached_model(index: int) -> nn.Module:
    """Models of the case table, built once, BN-calibrated (read-only use only).

    Freshly initialised nets in eval mode can lose their activations (BN
    running statistics of 0 / 1 do not normalise anything; torchvision's
    MobileNetV3 ends up with ~1e-9 features and constant logits), which would
    hide wiring bugs. A few train-mode passes set the statistics the way
    training would, so the logits depend on the input.
    """
    torch.manual_seed(index)
    name, options = CASES[index]
    model = create_model(name, num_classes=NUM_CLASSES, **options)
    assert not model.training
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, 3, *_sizes(name, model)[0]))
    return model.eval()


def _case(name: str, **options: Any) -> int:
    """Index of the case with exactly these options."""
    return CASES.index((name, options))


def _multiple(name: str, model: nn.Module) -> int:
    """The model's own input multiple: the spec's, or an option's stricter one (FRRN B's 32)."""
    return int(getattr(model, "multiple_of", get_spec(name).multiple_of))


def _sizes(name: str, model: nn.Module) -> list[tuple[int, int]]:
    """Two different valid (H, W), one not square."""
    m = max(_multiple(name, model), 16)
    return [(2 * m, 2 * m), (3 * m, 2 * m)]


# --------------------------------------------------------------------------- case table

# ResNet-50, EfficientNet-B0, DenseNet-121 and GoogLeNet cases (full width) and FRRN B take
# seconds each: the full suite runs them, the fast loop the small backbones and FRRN A
_SLOW_CASES = ("resnet50", "efficientnet_b0", "densenet121", "googlenet", "variant=B")
CASE_PARAMS = [
    pytest.param(
        i, id=CASE_IDS[i], marks=pytest.mark.slow if any(k in CASE_IDS[i] for k in _SLOW_CASES) else ()
    )
    for i in range(len(CASES))
]


@pytest.mark.parametrize("index", CASE_PARAMS)
def test_forward_gives_logits_at_input_size(index: int) -> None:
    name, _ = CASES[index]
    model = _cached_model(index)
    assert not model.training
    first, second = _sizes(name, model)
    with torch.no_grad():
        for h, w in (first, second):
            out = model(torch.randn(1, 3, h, w))
            assert isinstance(out, torch.Tensor)
            assert out.shape == (1, NUM_CLASSES, h, w)
            assert out.dtype == torch.float32
            assert torch.isfinite(out).all()
        # batch items are independent in eval mode
        x = torch.randn(2, 3, *first)
        both = model(x)
        assert both.shape == (2, NUM_CLASSES, *first)
        scale = float(both.abs().max())
        torch.testing.assert_close(both[1:], model(x[1:]), rtol=0, atol=1e-3 * scale)
    assert not torch.allclose(both[0], both[1])


@pytest.mark.parametrize("index", CASE_PARAMS)
def test_forward_rejects_invalid_sizes(index: int) -> None:
    name, _ = CASES[index]
    model = _cached_model(index)
    m = _multiple(name, model)
    with pytest.raises(ConfigError) as info, torch.no_grad():
        model(torch.randn(1, 3, 2 * m + m // 2, 2 * m))
    assert str(info.value) == (
        f"{name} needs input sides that are multiples of {m}; "
        f"{2 * m + m // 2}x{2 * m} is not (use {3 * m}x{2 * m})"
    )
    with pytest.raises(ConfigError, match="4-D"), torch.no_grad():
        model(torch.randn(3, 2 * m, 2 * m))


@pytest.mark.parametrize("index", CASE_PARAMS)
def test_in_channels_one(index: int) -> None:
    name, options = CASES[index]
    model = create_model(name, num_classes=2, in_channels=1, **options)
    assert not model.training
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    h, w = _sizes(name, model)[0]
    with torch.no_grad():
        out = model(torch.randn(1, 1, h, w))
    assert out.shape == (1, 2, h, w)
    assert torch.isfinite(out).all()


def test_case_table_covers_every_option() -> None:
    assert sorted({name for name, _ in CASES}) == [s.name for s in list_models()]
    for spec in list_models():
        used = [opts for name, opts in CASES if name == spec.name]
        for key, default in spec.options.items():
            values = [opts[key] for opts in used if key in opts]
            wanted = list(spec.choices.get(key, ()))
            if isinstance(default, bool) and not wanted:
                wanted = [True]
            for value in wanted:
                if not (type(value) is type(default) and value == default):
                    assert any(type(v) is type(value) and v == value for v in values), (
                        f"{spec.name}: no case with {key}={value!r}"
                    )


# --------------------------------------------------------------------------- registry


def test_list_models_sorted_and_specs_consistent() -> None:
    specs = list_models()
    assert [s.name for s in specs] == MODEL_NAMES
    for spec in specs:
        assert isinstance(spec, ModelSpec)
        assert spec.description and "\n" not in spec.description
        assert spec.multiple_of in (8, 16, 32)
        h, w = spec.default_input_size
        assert h % spec.multiple_of == 0 and w % spec.multiple_of == 0
        for key, allowed in spec.choices.items():
            assert spec.options[key] in allowed
        with pytest.raises(TypeError):
            spec.options["new"] = 1  # type: ignore[index]
        assert get_spec(spec.name) is spec
    assert get_spec("fcn8s").multiple_of == 32
    assert get_spec("unet").multiple_of == 16


@pytest.mark.parametrize("call", ["get_spec", "create_model", "check_input_size"])
def test_unknown_model_lists_valid_names(call: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        if call == "get_spec":
            get_spec("fcn4s")
        elif call == "create_model":
            create_model("fcn4s", num_classes=2)
        else:
            check_input_size("fcn4s", (64, 64))
    message = str(info.value)
    assert message.startswith("unknown model 'fcn4s'; valid: ")
    for name in MODEL_NAMES:
        assert name in message
    assert isinstance(info.value, ConfigError) and isinstance(info.value, KeyError)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_unknown_option_names_valid_options(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_model(name, num_classes=2, dropout=0.5)
    message = str(info.value)
    assert name in message and "dropout" in message
    for key in get_spec(name).options:
        assert key in message


def _wrong_values(spec: ModelSpec, key: str) -> list[Any]:
    default = spec.options[key]
    if key in spec.choices:
        wrong: list[Any] = ["no-such-choice"]
        if any(isinstance(c, bool) for c in spec.choices[key]):
            wrong += [1, 0]  # == True / False but not bools
        if any(isinstance(c, int) and not isinstance(c, bool) for c in spec.choices[key]):
            wrong += [32, 16.0, "16"]
        return wrong
    if isinstance(default, bool):
        return [1, "true", None]
    if isinstance(default, int):
        return [1.5, True, "8"]
    if isinstance(default, float):
        return ["wide", True, None]
    return [1]


WRONG = [
    (spec.name, key, value)
    for spec in list_models()
    for key in spec.options
    for value in _wrong_values(spec, key)
]


@pytest.mark.parametrize(
    ("name", "key", "value"), WRONG, ids=[f"{n}-{k}-{v!r}" for n, k, v in WRONG]
)
def test_wrong_option_value_is_config_error(name: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        create_model(name, num_classes=2, **{key: value})
    assert key in str(info.value) and name in str(info.value)


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("fcn8s", {"width": 0.0}, "width"),
        ("fcn8s", {"fc_channels": 0}, "fc_channels"),
        ("unet", {"base_channels": 0}, "base_channels"),
        ("deeplabv3p", {"aspp_channels": -1}, "aspp_channels"),
        ("deeplabv3p", {"width": -0.5}, "width"),
        ("deeplabv3p", {"backbone": "resnet50", "width": 0.5}, "width"),
        ("deeplabv3p", {"backbone": "googlenet", "width": 0.5}, "width applies to mobilenet_v2 only"),
        ("frrn", {"width": 0.0}, "width must be > 0"),
    ],
)
def test_option_ranges_and_combinations(name: str, options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        create_model(name, num_classes=2, **options)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"num_classes": 2, "in_channels": 0}, "in_channels"),
        ({"num_classes": 2, "in_channels": 2.0}, "in_channels"),
    ],
)
def test_num_classes_and_in_channels_validated(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        create_model("unet", **kwargs)


def test_float_option_accepts_int() -> None:
    model = create_model("fcn32s", num_classes=2, width=1, fc_channels=8)
    assert model.fc[0].in_channels == 512


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_defaults_come_from_spec(name: str) -> None:
    spec = get_spec(name)
    with torch.device("meta"):
        implicit = create_model(name, num_classes=2)
        explicit = create_model(name, num_classes=2, **dict(spec.options))
    shapes = [tuple(p.shape) for p in implicit.parameters()]
    assert shapes == [tuple(p.shape) for p in explicit.parameters()]
    assert not implicit.training


# --------------------------------------------------------------------------- parse_option


@pytest.mark.parametrize(
    ("name", "key", "text", "expected"),
    [
        ("unet", "se", "true", True),
        ("unet", "se", "FALSE", False),
        ("unet", "deformable", "1", True),
        ("unet", "deformable", "0", False),
        ("unet", "base_channels", "32", 32),
        ("fcn8s", "width", "0.5", 0.5),
        ("fcn8s", "width", "1", 1.0),
        ("fcn8s", "upsample", "bilinear", "bilinear"),
        ("deeplabv3", "backbone", "mobilenet_v3_large", "mobilenet_v3_large"),
        ("deeplabv3p", "output_stride", "8", 8),
        ("deeplabv3p", "deformable", "true", True),
        ("deeplabv3p", "deformable", "false", False),
        ("deeplabv3p", "deformable", "backbone", "backbone"),
        ("deeplabv3p", "deformable", "aspp", "aspp"),
        ("deeplabv3p", "backbone", "densenet121", "densenet121"),
        ("frrn", "variant", "B", "B"),
    ],
)
def test_parse_option(name: str, key: str, text: str, expected: Any) -> None:
    value = parse_option(key, get_spec(name), text)
    assert type(value) is type(expected) and value == expected


@pytest.mark.parametrize(
    ("name", "key", "text"),
    [
        ("unet", "se", "yes"),
        ("unet", "base_channels", "3.5"),
        ("fcn8s", "width", "wide"),
        ("fcn8s", "upsample", "nearest"),
        ("deeplabv3p", "output_stride", "32"),
        ("deeplabv3p", "deformable", "dcn"),
        ("deeplabv3p", "no_such_option", "1"),
        ("frrn", "variant", "C"),
    ],
)
def test_parse_option_rejects(name: str, key: str, text: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_option(key, get_spec(name), text)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parse_option_round_trips_defaults_and_choices(name: str) -> None:
    spec = get_spec(name)
    for key, default in spec.options.items():
        for value in (default, *spec.choices.get(key, ())):
            text = str(value).lower() if isinstance(value, bool) else str(value)
            parsed = parse_option(key, spec, text)
            assert type(parsed) is type(value) and parsed == value


# --------------------------------------------------------------------------- input sizes


def test_input_size_message() -> None:
    with pytest.raises(ConfigError) as info:
        check_input_size("fcn8s", (500, 500))
    assert str(info.value) == (
        "fcn8s needs input sides that are multiples of 32; 500x500 is not (use 512x512)"
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_input_sizes(name: str) -> None:
    spec = get_spec(name)
    m = spec.multiple_of
    check_input_size(spec, (m * 5, m * 3))
    check_input_size(name, spec.default_input_size)
    with pytest.raises(ConfigError, match=f"use {m * 6}x{m * 3}"):
        check_input_size(spec, (m * 5 + 1, m * 3))
    with pytest.raises(ConfigError, match=f"use {m * 2}x{m * 4}"):
        check_input_size(name, (m * 2, m * 4 - 1))
    for bad in ((0, m), (m, -m), (m, 1.5), (m,)):
        with pytest.raises(ConfigError):
            check_input_size(spec, bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- weights


def _tiny(num_classes: int = 3, seed: int = 0, **options: Any) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("unet", num_classes=num_classes, base_channels=4, **options)


def _outputs_equal(a: nn.Module, b: nn.Module) -> bool:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize("wrap", [None, "state_dict", "model", "model_state_dict"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_weights_formats(tmp_path: Path, wrap: str | None, prefix: str) -> None:
    src, dst = _tiny(seed=1), _tiny(seed=2)
    assert not _outputs_equal(src, dst)
    state = {prefix + k: v for k, v in src.state_dict().items()}
    obj: Any = state if wrap is None else {wrap: state, "epoch": 7, "optimizer": {}}
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    report = load_weights(dst, path)
    assert isinstance(report, LoadReport)
    assert report == LoadReport(str(path), len(state), (), ())
    assert _outputs_equal(src, dst)


def test_load_weights_reports_missing_and_unexpected(tmp_path: Path) -> None:
    src, dst = _tiny(seed=1), _tiny(seed=2)
    state = src.state_dict()
    del state["head.bias"]
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": state}, path)
    report = load_weights(dst, str(path))
    assert report.missing == ("head.bias",)
    assert report.unexpected == ("extra.weight",)
    assert report.loaded == len(state) - 1
    torch.testing.assert_close(dst.head.weight, src.head.weight)


def test_plain_weights_load_into_deformable_model(tmp_path: Path) -> None:
    src, dst = _tiny(seed=1), _tiny(seed=2, deformable=True)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    report = load_weights(dst, path)
    assert report.unexpected == ()
    assert report.missing and all("conv_offset" in k for k in report.missing)
    assert report.loaded == len(src.state_dict())
    deform = next(m for m in dst.modules() if isinstance(m, ModulatedDeformConv2d))
    assert deform.weight.abs().sum() > 0


def test_load_weights_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(_tiny(num_classes=3).state_dict(), path)
    with pytest.raises(WeightsError) as info:
        load_weights(_tiny(num_classes=5), path)
    message = str(info.value)
    assert "head.weight" in message
    assert "(3, 4, 1, 1)" in message and "(5, 4, 1, 1)" in message


@pytest.mark.parametrize("content", ["garbage", "list", "no-tensors", "missing"])
def test_load_weights_not_a_checkpoint(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.pt"
    if content == "garbage":
        path.write_bytes(b"this is not a checkpoint")
    elif content == "list":
        torch.save([1, 2, 3], path)
    elif content == "no-tensors":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(WeightsError) as info:
        load_weights(_tiny(), path)
    assert str(path) in str(info.value)
    if content in ("garbage", "missing"):
        assert info.value.__cause__ is not None


def test_load_weights_no_common_key(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"encoder.conv.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError) as info:
        load_weights(_tiny(), path)
    message = str(info.value)
    assert str(path) in message and "encoder.conv.weight" in message and "inc.0.0.weight" in message


def test_deeplabv3_keys_match_torchvision(tmp_path: Path) -> None:
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    reference = deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4, aux_loss=False
    ).eval()
    path = tmp_path / "tv.pt"
    torch.save(reference.state_dict(), path)
    ours = create_model("deeplabv3", num_classes=4, backbone="mobilenet_v3_large")
    report = load_weights(ours, path)
    assert (report.missing, report.unexpected) == ((), ())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x)["out"])


def test_deeplabv3p_backbone_keys_match_torchvision(tmp_path: Path) -> None:
    reference = torchvision.models.mobilenet_v2(weights=None, width_mult=0.35)
    state = {f"backbone.{k}": v for k, v in reference.state_dict().items()}
    path = tmp_path / "mbv2.pt"
    torch.save(state, path)
    report = load_weights(create_model("deeplabv3p", num_classes=2, **SMALL_DLP), path)
    assert not [k for k in report.missing if k.startswith("backbone.")]
    assert report.unexpected and all(
        k.startswith(("backbone.features.18.", "backbone.classifier.")) for k in report.unexpected
    )


# --------------------------------------------------------------------------- complexity


def test_complexity_fcn32s_full_width_by_hand() -> None:
    with torch.device("meta"):
        model = create_model("fcn32s", num_classes=21)
    params, gflops = complexity(model, (512, 512))
    # parameters: VGG-16 convs 14,714,688; fc6 7*7*512*4096 + 4096;
    # fc7 4096*4096 + 4096; score 4096*21 + 21; upscore 21*21*64*64 (no bias)
    assert (
        params
        == 14_714_688
        + (7 * 7 * 512 * 4096 + 4096)
        + (4096 * 4096 + 4096)
        + (4096 * 21 + 21)
        + 21 * 21 * 64 * 64
    )
    # multiply-adds: per conv H*W*Cin*Cout*k*k at its resolution
    vgg = [  # (side, cin, cout)
        (512, 3, 64),
        (512, 64, 64),
        (256, 64, 128),
        (256, 128, 128),
        (128, 128, 256),
        (128, 256, 256),
        (128, 256, 256),
        (64, 256, 512),
        (64, 512, 512),
        (64, 512, 512),
        (32, 512, 512),
        (32, 512, 512),
        (32, 512, 512),
    ]
    macs = sum(s * s * ci * co * 9 for s, ci, co in vgg)  # 80.18 G
    macs += 16 * 16 * 512 * 4096 * 49  # fc6: 26.31 G
    macs += 16 * 16 * 4096 * 4096  # fc7: 4.29 G
    macs += 16 * 16 * 4096 * 21  # score_fr
    macs += 16 * 16 * 21 * 21 * 64 * 64  # transposed conv: per input pixel
    assert 2 * macs / 1e9 == pytest.approx(222.53, abs=0.01)
    assert gflops == pytest.approx(2 * macs / 1e9, rel=1e-3)


@pytest.mark.parametrize("index", CASE_PARAMS)
def test_complexity_positive_and_scales(index: int) -> None:
    name, _ = CASES[index]
    model = _cached_model(index)
    device = next(model.parameters()).device
    size = _sizes(name, model)[0]
    params, gflops = complexity(model, size)
    assert params == sum(p.numel() for p in model.parameters()) > 10_000
    # at least one multiply-add per parameter of the convs at the smallest map
    assert 0 < gflops < 50
    _, gflops4 = complexity(model, (2 * size[0], 2 * size[1]))
    assert 3.0 < gflops4 / gflops <= 4.01  # dominated by convs: ~x4 for x2 sides
    assert not model.training and next(model.parameters()).device == device


def test_complexity_counts_deformable_convs_and_restores_mode() -> None:
    plain, deform = _tiny(), _tiny(deformable=True)
    deform.train()
    _, g_plain = complexity(plain, (64, 64))
    p_deform, g_deform = complexity(deform, (64, 64))
    # a deformable conv counts as its plain conv; its conv_offset (27 channels
    # for 3x3) comes on top. The bottleneck runs at 4x4 with 32 -> 64 -> 64 channels.
    offset_flops = sum(2 * 4 * 4 * cin * 27 * 9 for cin in (32, 64))
    assert (g_deform - g_plain) * 1e9 == pytest.approx(offset_flops, rel=1e-6)
    assert deform.training
    assert p_deform > sum(p.numel() for p in plain.parameters())
    with pytest.raises(ConfigError):
        complexity(plain, (0, 64))


# --------------------------------------------------------------------------- layers and structure

DCN_CONFIGS = [  # (cin, cout, kernel, stride, padding, dilation, groups, offset_groups)
    (4, 6, 3, 1, 1, 1, 1, 1),
    (8, 8, 3, 2, 2, 2, 8, 1),
    (6, 4, 3, 2, 1, 1, 2, 2),
    (5, 5, 5, 1, 4, 2, 5, 1),
]


@pytest.mark.parametrize("cfg", DCN_CONFIGS)
def test_deformable_conv_matches_conv_with_zero_offsets(cfg: tuple[int, ...]) -> None:
    cin, cout, k, s, p, d, g, og = cfg
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, s, p, d, g)
    dcn = ModulatedDeformConv2d.from_conv(conv, og)
    x = torch.randn(2, cin, 11, 13)
    with torch.no_grad():
        # DCNv2 init: zero offsets, mask sigmoid(0) = 0.5
        torch.testing.assert_close(
            dcn(x), 0.5 * (conv(x) - conv.bias[:, None, None]) + conv.bias[:, None, None]
        )
        dcn.conv_offset.bias[2 * og * k * k :] = 40.0  # mask -> 1
        torch.testing.assert_close(dcn(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", DCN_CONFIGS)
def test_deformable_export_path_matches_torchvision(cfg: tuple[int, ...]) -> None:
    cin, cout, k, s, p, d, g, og = cfg
    torch.manual_seed(1)
    dcn = ModulatedDeformConv2d(cin, cout, k, s, p, d, g, offset_groups=og)
    x = torch.randn(2, cin, 11, 13)
    with torch.no_grad():
        dcn.conv_offset.weight.normal_(0, 0.5)  # offsets of several pixels, some outside
        dcn.conv_offset.bias.normal_(0, 1.0)
        o1, o2, m = dcn.conv_offset(x).chunk(3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        assert offset.abs().max() > 3
        ref = modulated_deform_conv2d_reference(
            x,
            offset,
            m.sigmoid(),
            dcn.weight,
            dcn.bias,
            dcn.stride,
            dcn.padding,
            dcn.dilation,
            dcn.groups,
        )
        torch.testing.assert_close(ref, dcn(x), rtol=1e-5, atol=1e-5)


def test_make_deformable_replaces_only_matching_convs() -> None:
    block = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4),
        nn.Conv2d(4, 8, 1),
        nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 5, padding=2)),
    )
    originals = [block[0].weight.clone(), block[2][0].weight.clone()]
    assert make_deformable(block) is block
    assert isinstance(block[0], ModulatedDeformConv2d) and isinstance(
        block[2][0], ModulatedDeformConv2d
    )
    assert type(block[1]) is nn.Conv2d and type(block[2][1]) is nn.Conv2d
    assert (block[0].dilation, block[0].padding, block[0].groups) == ((2, 2), (2, 2), 4)
    assert block[2][0].stride == (2, 2)
    torch.testing.assert_close(block[0].weight, originals[0])
    torch.testing.assert_close(block[2][0].weight, originals[1])
    assert block[0].conv_offset.out_channels == 27 and not block[0].conv_offset.weight.any()
    make_deformable(block)  # idempotent: conv_offset stays a plain conv
    assert type(block[0].conv_offset) is nn.Conv2d
    make_deformable(block, kernel_sizes=(5,))
    assert isinstance(block[2][1], ModulatedDeformConv2d)
    assert isinstance(make_deformable(nn.Conv2d(2, 2, 3)), ModulatedDeformConv2d)


@pytest.mark.parametrize(("factor", "groups"), [(2, 1), (4, 1), (4, 6), (8, 6), (32, 1)])
def test_transposed_upsampling_is_bilinear_inside(factor: int, groups: int) -> None:
    up = BilinearConvTranspose2d(6, factor, groups=groups)
    x = torch.randn(1, 6, 5, 4)
    with torch.no_grad():
        y = up(x)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert y.shape == ref.shape == (1, 6, 5 * factor, 4 * factor)
    b = factor  # border where interpolate clamps and the transposed conv zero-pads
    torch.testing.assert_close(y[..., b:-b, b:-b], ref[..., b:-b, b:-b])


def test_squeeze_excite_gates_channels() -> None:
    se = SqueezeExcite(32, reduction=8)
    assert se.fc1.out_channels == 4
    x = torch.rand(2, 32, 5, 5)
    y = se(x)
    ratio = y / x
    assert y.shape == x.shape
    assert ((ratio > 0) & (ratio < 1)).all()
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio))


@pytest.mark.parametrize(
    ("options", "low", "high", "dilations"),
    [
        (SMALL_DLP, 4, 16, (1, 2)),
        ({**SMALL_DLP, "output_stride": 8, "upsample": "transposed", "se": True}, 4, 8, (2, 4)),
    ],
)
def test_deeplabv3p_mobilenet_output_stride(
    options: dict[str, Any], low: int, high: int, dilations: tuple[int, int]
) -> None:
    model = _cached_model(_case("deeplabv3p", **options))
    with torch.no_grad():
        low_f, high_f = model.backbone(torch.randn(1, 3, 64, 96))
    assert low_f.shape[-2:] == (64 // low, 96 // low)
    assert high_f.shape[-2:] == (64 // high, 96 // high)
    features = model.backbone.features
    first, later = (
        next(m for m in features[i].modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
        for i in (14, 15)
    )
    assert (first.dilation[0], later.dilation[0]) == dilations
    assert later.padding == later.dilation and first.stride == (1, 1)


def test_deformable_placement() -> None:
    backbone_true = _cached_model(
        _case("deeplabv3p", **SMALL_DLP, deformable=True, output_stride=8)
    )
    aspp = _cached_model(_case("deeplabv3p", **SMALL_DLP, deformable="aspp"))
    names = [n for n, m in backbone_true.named_modules() if isinstance(m, ModulatedDeformConv2d)]
    assert names and all(n.split(".")[2] in {"14", "15", "16", "17"} for n in names)
    assert all(n.startswith("backbone.features.") for n in names)
    dcn = {
        n: m.dilation[0] for n, m in aspp.named_modules() if isinstance(m, ModulatedDeformConv2d)
    }
    assert sorted(dcn.values()) == [6, 12, 18] and all(n.startswith("aspp.branches.") for n in dcn)
    r50 = _cached_model(
        _case(
            "deeplabv3p",
            backbone="resnet50",
            aspp_channels=32,
            output_stride=8,
            deformable="backbone",
        )
    )
    names = [n for n, m in r50.named_modules() if isinstance(m, ModulatedDeformConv2d)]
    assert len(names) == 3 and all(n.startswith("backbone.layer4.") for n in names)
    with torch.device("meta"):
        as_true = create_model("deeplabv3p", num_classes=2, deformable=True)
        as_str = create_model("deeplabv3p", num_classes=2, deformable="backbone")
    assert [n for n, _ in as_true.named_parameters()] == [n for n, _ in as_str.named_parameters()]


@pytest.mark.parametrize(("decomposed", "op"), [(False, "DeformConv"), (True, "GridSample")])
def test_deformable_module_exports_to_onnx(decomposed: bool, op: str) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    dcn = ModulatedDeformConv2d(4, 6, 3, stride=1, padding=2, dilation=2, groups=2).eval()
    with torch.no_grad():
        dcn.conv_offset.weight.normal_(0, 0.2)
    x = torch.randn(1, 4, 12, 10)
    with decomposed_deform_conv() if decomposed else contextlib.nullcontext():
        program = torch.onnx.export(dcn, (x,), dynamo=True, opset_version=19, verbose=False)
    ops = {node.op_type for node in program.model_proto.graph.node}
    assert op in ops
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), dcn(x), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- DeconvNet's unpooling


def test_switch_unpooling_is_max_unpool_exactly_ties_included() -> None:
    """DeconvNet's SwitchPool/SwitchUnpool (slices, comparisons, depth-to-space: what TensorRT
    imports) give nn.MaxPool2d(return_indices)/nn.MaxUnpool2d's result to the bit, also where a
    window holds its maximum more than once (ReLU zeros, rounded values)."""
    from edgeseg.models.deconvnet import SwitchPool, SwitchUnpool

    torch.manual_seed(0)
    pool, unpool = nn.MaxPool2d(2, 2, return_indices=True), nn.MaxUnpool2d(2, 2)
    for x in (torch.randn(2, 4, 8, 12), torch.relu(torch.randn(2, 4, 8, 12)).round(), torch.zeros(1, 2, 4, 4)):
        expected, indices = pool(x)
        got, switches = SwitchPool()(x)
        assert torch.equal(got, expected)
        y = torch.randn_like(expected)
        assert torch.equal(SwitchUnpool()(y, switches), unpool(y, indices))


# --------------------------------------------------------------------------- FRRN


def test_frrn_follows_the_paper() -> None:
    """Table 1 of Pohlen et al.: FRRN A has 17.7 M parameters and B 24.8 M (ours, with a 1x1
    merge to 48 channels the paper leaves unspecified: 17.71 M and 24.72 M); the residual stream
    keeps 32 channels at full resolution and every FRRU adds to it."""
    with torch.device("meta"):
        a = create_model("frrn", num_classes=19)
        b = create_model("frrn", num_classes=19, variant="B")
    assert sum(p.numel() for p in a.parameters()) == pytest.approx(17.7e6, rel=0.01)
    assert sum(p.numel() for p in b.parameters()) == pytest.approx(24.8e6, rel=0.01)
    units = [[(u.convs[1][0].out_channels, u.scale) for u in g] for g in (*a.encoder, *a.decoder)]
    assert units == [
        [(96, 2)] * 3, [(192, 4)] * 4, [(384, 8)] * 2, [(384, 16)] * 2,
        [(192, 8)] * 2, [(192, 4)] * 2, [(96, 2)] * 2,
    ]
    assert [g[0].scale for g in b.encoder] == [2, 4, 8, 16, 32] and b.decoder[0][0].scale == 16
    assert a.split.out_channels == 32 and all(u.project.out_channels == 32 for g in a.encoder for u in g)
    assert (a.multiple_of, b.multiple_of) == (16, 32)
    model = _cached_model(_case("frrn", width=0.125))
    y_seen = []
    hooks = [u.register_forward_hook(lambda m, i, o: y_seen.append(o[1].shape)) for g in model.encoder for u in g]
    with torch.no_grad():
        model(torch.randn(1, 3, 48, 32))
    for hook in hooks:
        hook.remove()
    assert y_seen == [(1, 4, 48, 32)] * 11  # the residual stream, full resolution, after each encoder FRRU


def test_frrn_b_refuses_multiples_of_16_only() -> None:
    model = create_model("frrn", num_classes=2, width=0.125, variant="B")
    with pytest.raises(ConfigError) as info, torch.no_grad():
        model(torch.randn(1, 3, 48, 64))
    assert str(info.value) == "frrn needs input sides that are multiples of 32; 48x64 is not (use 64x64)"


def test_frrn_b_needs_multiples_of_32_from_the_registry_and_build(tmp_path: Path) -> None:
    """The spec's multiple follows the variant, so build checks sizes and pads dynamic frames to 32."""
    import edgeseg

    spec = get_spec("frrn")
    assert spec.multiple_for() == 16 and spec.multiple_for({"variant": "A"}) == 16
    assert spec.multiple_for({"variant": "B"}) == 32
    check_input_size(spec, (48, 64), {"variant": "A"})
    with pytest.raises(ConfigError, match="multiples of 32"):
        check_input_size(spec, (48, 64), {"variant": "B"})
    with pytest.raises(ConfigError, match="multiples of 32"):
        edgeseg.build("frrn", tmp_path / "b48.edgeseg", options={"variant": "B", "width": 0.125},
                      input_size=(48, 64), target="cpu")
    with pytest.raises(ConfigError, match="multiple_of=16: frrn with these options needs sides that are "
                                          "multiples of 32"):
        edgeseg.build("frrn", tmp_path / "dyn.edgeseg", options={"variant": "B", "width": 0.125},
                      input_size=(64, 64), dynamic=True, multiple_of=16, target="cpu")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- torchvision backbones


@pytest.mark.parametrize(
    ("mode", "kernel", "dilation", "before", "after"),
    [("max", 3, 1, 0, 2), ("max", 2, 2, 0, 2), ("max", 3, 4, 4, 4), ("avg", 2, 1, 0, 1), ("avg", 2, 2, 0, 2)],
)
def test_atrous_pool_is_a_dilated_stride_1_pool(mode: str, kernel: int, dilation: int, before: int, after: int) -> None:
    """AtrousPool2d (what TensorRT imports: Pad + MaxPool/AveragePool or slices) equals PyTorch's
    dilated pool over the zero-padded input (the inputs it gets in the backbones are >= 0)."""
    from edgeseg.models.backbones import AtrousPool2d

    x = torch.relu(torch.randn(2, 3, 11, 14))
    got = AtrousPool2d(mode, kernel, dilation, before, after)(x)
    padded = F.pad(x, (before, after, before, after))
    if mode == "max":
        expected = F.max_pool2d(padded, kernel, stride=1, dilation=dilation)
    else:  # a dilated mean: the mean of the dilated max-pool's taps, via unfold
        taps = F.unfold(padded, kernel, dilation=dilation).view(2, 3, kernel * kernel, 11, 14)
        expected = taps.mean(dim=2)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="keeps the size"):
        AtrousPool2d(mode, kernel, dilation, before, after + 1)


def _strided_features(name: str, reference: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if name == "densenet121":
        return F.relu(reference.features(x))
    for child in ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
                  "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d",
                  "inception4e", "maxpool4", "inception5a", "inception5b"):
        x = getattr(reference, child)(x)
    return x


@pytest.mark.slow
@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("name", ["densenet121", "googlenet"])
def test_dilated_backbone_equals_the_strided_network_on_its_grid(name: str, output_stride: int) -> None:
    """DenseNet-121 / GoogLeNet at output stride 16 or 8 compute torchvision's stride-32 features
    exactly, at every (32 / output_stride)-th position: the "a trous" algorithm, so torchvision
    checkpoints keep their meaning; the stride-4 features are conv3's / denseblock1's."""
    from torchvision.models import densenet121, googlenet

    from edgeseg.models.backbones import DenseNet121Backbone, GoogLeNetBackbone
    from edgeseg.models.layers import init_weights

    torch.manual_seed(0)
    reference = densenet121(weights=None) if name == "densenet121" else googlenet(weights=None, aux_logits=False, init_weights=True)
    init_weights(reference)  # Kaiming: GoogLeNet's own init leaves 1e-11 features at the end
    backbone = DenseNet121Backbone(3, output_stride) if name == "densenet121" else GoogLeNetBackbone(3, output_stride)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith(("fc.", "classifier."))}
    assert backbone.load_state_dict(state, strict=True)
    reference.eval(), backbone.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        low, high = backbone(x)
        expected = _strided_features(name, reference, x)
    assert low.shape == (1, backbone.low_channels, 16, 24)
    assert high.shape == (1, backbone.high_channels, 64 // output_stride, 96 // output_stride)
    step = 32 // output_stride
    scale = float(expected.abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(high[..., ::step, ::step], expected, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("output_stride", [pytest.param(16, marks=pytest.mark.slow), 8])
def test_efficientnet_backbone_dilation_and_deformable_placement(output_stride: int) -> None:
    """EfficientNet-B0: the stage that would pass the output stride keeps stride 1, its first
    depthwise conv the previous dilation, later ones dilated; deformable="backbone" turns the 5x5
    (stage 6) and 3x3 (stage 7) depthwise convs after stride 16 into DCNv2."""
    with torch.device("meta"):
        model = create_model("deeplabv3p", num_classes=2, backbone="efficientnet_b0", output_stride=output_stride)
        deform = create_model(
            "deeplabv3p", num_classes=2, backbone="efficientnet_b0", output_stride=output_stride, deformable=True
        )
        low, high = model.backbone(torch.empty(1, 3, 64, 96))
    assert low.shape == (1, 24, 16, 24) and high.shape == (1, 320, 64 // output_stride, 96 // output_stride)
    depthwise = [
        (int(name.split(".")[1]), m.stride[0], m.dilation[0], m.padding[0], m.kernel_size[0])
        for name, m in model.backbone.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups == m.in_channels and m.kernel_size[0] > 1
    ]
    first_of = {stage: next(d for d in depthwise if d[0] == stage) for stage in range(1, 8)}
    assert all(p == d * (k - 1) // 2 for _, _, d, p, k in depthwise)
    if output_stride == 16:
        assert [first_of[s][1:3] for s in (4, 6, 7)] == [(2, 1), (1, 1), (1, 2)]
    else:
        assert [first_of[s][1:3] for s in (3, 4, 5, 6, 7)] == [(2, 1), (1, 1), (1, 2), (1, 2), (1, 4)]
    dcn = {n: m.kernel_size[0] for n, m in deform.named_modules() if isinstance(m, ModulatedDeformConv2d)}
    assert set(dcn.values()) == {3, 5}
    assert all(n.startswith(("backbone.features.6.", "backbone.features.7.")) for n in dcn)


@pytest.mark.slow
def test_torchvision_backbone_keys_load() -> None:
    """The three backbones' keys are torchvision's under ``backbone.``."""
    from torchvision.models import densenet121, efficientnet_b0, googlenet

    with torch.device("meta"):
        references = {
            "efficientnet_b0": {f"features.{k}" for k in efficientnet_b0(weights=None).features.state_dict() if not k.startswith("8.")},
            "densenet121": {f"features.{k}" for k in densenet121(weights=None).features.state_dict()},
            "googlenet": {k for k in googlenet(weights=None, aux_logits=False, init_weights=False).state_dict() if not k.startswith("fc.")},
        }
        for name, keys in references.items():
            model = create_model("deeplabv3p", num_classes=2, backbone=name)
            ours = {k.removeprefix("backbone.") for k in model.state_dict() if k.startswith("backbone.")}
            assert ours == keys, name
