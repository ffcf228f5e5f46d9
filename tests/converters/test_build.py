"""edgeseg.build from users' own modules: parity, manifest, and every bad argument."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import edgeseg
from edgeseg.errors import BundleExistsError, ConfigError, ParityError, WeightsError
from tests.conftest import tiny_module


def test_manifest_records_what_was_built(tiny_bundle: Path) -> None:
    m = edgeseg.Bundle.load(tiny_bundle).manifest
    assert m.model.source == "module" and m.model.name == "Tiny"
    assert m.classes == ("sky", "road", "car", "person")
    assert m.input.size == (64, 96) and m.input.channels == 3 and not m.input.dynamic
    assert m.outputs == ("mask", "probs", "logits")
    assert m.opset == 19 and m.precision == "fp32"
    assert {"torch", "onnx", "onnxruntime", "edgeseg"} <= set(m.versions)
    p = m.parity
    assert p is not None and p.samples == 8 and p.sample_source == "generated"
    assert p.max_abs_error is not None and 0 <= p.max_abs_error < 1e-4 and p.agreement >= 0.9999
    assert p.min_agreement == 0.999


@pytest.mark.slow
def test_torchvision_model_deploys_unchanged(tmp_path: Path) -> None:
    """A user's torchvision model with its own state dict goes through build as it is."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    torch.manual_seed(0)
    trained = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5, aux_loss=False)
    ckpt = tmp_path / "user.pth"
    torch.save({"epoch": 3, "state_dict": trained.state_dict()}, ckpt)
    fresh = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5, aux_loss=False)
    bundle = edgeseg.build(
        fresh, tmp_path / "tv", input_size=(96, 128), classes=list("abcde"), weights=ckpt, num_samples=3
    )
    model, parity = bundle.manifest.model, bundle.manifest.parity
    assert model.class_name is not None and model.class_name.endswith("DeepLabV3")
    assert model.weights is not None and model.weights.file == "user.pth"
    assert parity is not None and parity.agreement >= 0.9999
    assert parity.max_abs_error is not None and parity.max_abs_error < 1e-4
    frame = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    x = (torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = trained.eval()(x)["out"].argmax(1)[0].numpy()
    with edgeseg.Segmenter(bundle.path) as seg:
        assert (seg(frame).mask == ref).mean() > 0.9999


def test_parity_failure_writes_nothing(tmp_path: Path) -> None:
    """A model whose graph cannot reproduce PyTorch (fresh random noise each run) must fail."""

    class Noisy(torch.nn.Module):
        def forward(self, x):  # type: ignore[no-untyped-def]
            return torch.rand(x.shape[0], 4, x.shape[2], x.shape[3]) + 0 * x[:, :1]

    with pytest.raises(ParityError, match=r"agrees with PyTorch on .*% of pixels, under min_agreement.*nothing was written"):
        edgeseg.build(Noisy(), tmp_path / "noisy", input_size=(16, 16), num_classes=4, num_samples=2)
    assert list(tmp_path.iterdir()) == []


def test_samples_folder_is_used_and_bad_files_counted(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    bundle = edgeseg.build(tiny_module(), tmp_path / "b", input_size=(32, 32), num_classes=4, samples=folder)
    parity = bundle.manifest.parity
    assert parity is not None and parity.samples == 3 and parity.samples_skipped == 1
    assert parity.sample_source == str(folder)


def test_module_weights_are_loaded(tmp_path: Path) -> None:
    source = tiny_module()
    with torch.no_grad():
        source.head.bias.fill_(0.0)
        source.head.bias[2] = 100.0  # every pixel becomes class 2
    ckpt = tmp_path / "w.pth"
    torch.save(source.state_dict(), ckpt)
    bundle = edgeseg.build(tiny_module(), tmp_path / "b", input_size=(32, 32), num_classes=4, weights=ckpt)
    with edgeseg.Segmenter(bundle.path) as seg:
        assert np.all(seg(np.zeros((32, 32, 3), np.uint8)).mask == 2)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="junk.pth"):
        edgeseg.build(tiny_module(), tmp_path / "c", input_size=(32, 32), num_classes=4, weights=tmp_path / "junk.pth")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"input_size": None}, ConfigError, r"input_size=\(height, width\) is required"),
        ({"options": {"width": 2}}, ConfigError, "options are for zoo models"),
        ({"classes": ["a", "b"]}, ConfigError, "outputs 4 classes but 2 class names"),
        ({"precision": "int8"}, ConfigError, "int8 needs a calibration set"),
        ({"precision": "int4"}, ConfigError, "precision must be one of fp32, fp16, int8"),
        ({"outputs": ["mask", "scores"]}, ConfigError, r"unknown outputs \['scores'\]"),
        ({"min_agreement": 99.9}, ConfigError, r"min_agreement must be a fraction"),
        ({"in_channels": 2}, ConfigError, "in_channels must be 1 or 3"),
        ({"palette": [[0, 0, 0]]}, ConfigError, "palette has 1 colours for 4 classes"),
        ({"palette": [[0, 0, 0, 0]] * 4}, ConfigError, "palette entry 0"),
        ({"dynamic": True, "input_size": (30, 32)}, ConfigError, "not a multiple of 32"),
        ({"samples": "/nonexistent/frames"}, ConfigError, "samples folder /nonexistent/frames does not exist"),
        ({"multiple_of": 0}, ConfigError, "multiple_of must be >= 1, got 0"),
        ({"num_samples": 0}, ConfigError, "num_samples must be >= 1, got 0"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs, error, message: str) -> None:  # type: ignore[no-untyped-def]
    args = {"input_size": (32, 32), **kwargs}
    with pytest.raises(error, match=message):
        edgeseg.build(tiny_module(), tmp_path / "b", **args)
    assert not (tmp_path / "b.edgeseg").exists()


def test_too_many_classes_for_the_mask(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="300 classes do not fit the uint8 mask"):
        edgeseg.build(tiny_module(num_classes=300), tmp_path / "b", input_size=(16, 16))
    assert not (tmp_path / "b.edgeseg").exists()


def test_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a zoo model name or a torch.nn.Module, got int"):
        edgeseg.build(42, tmp_path / "b", input_size=(32, 32))


def test_existing_output_needs_overwrite(tiny_bundle: Path) -> None:
    before = (tiny_bundle / "manifest.json").read_text()
    with pytest.raises(BundleExistsError, match="already exists"):
        edgeseg.build(tiny_module(), tiny_bundle, input_size=(64, 96), num_classes=4)
    assert (tiny_bundle / "manifest.json").read_text() == before


def test_grayscale_module(tmp_path: Path) -> None:
    bundle = edgeseg.build(tiny_module(num_classes=2, in_channels=1), tmp_path / "g", input_size=(32, 32), in_channels=1, classes=["membrane", "cell"])
    data = json.loads((bundle.path / "manifest.json").read_text())
    assert data["input"]["channels"] == 1 and data["input"]["color"] == "GRAY"
    assert data["input"]["mean"] == [0.449]
    with edgeseg.Segmenter(bundle.path) as seg:
        assert seg(np.zeros((40, 40, 3), np.uint8)).mask.shape == (40, 40)


def test_options_object_or_keywords(tmp_path: Path) -> None:
    """build() takes its options as keywords or as one BuildOptions (config=), not both."""
    from converters.options import BuildOptions

    config = BuildOptions.from_kwargs(input_size=(32, 32), num_classes=4, num_samples=1, outputs=["mask", "probs"])
    bundle = edgeseg.build(tiny_module(), tmp_path / "c", config=config)
    parity = bundle.manifest.parity
    assert bundle.manifest.outputs == ("mask", "probs") and parity is not None and parity.samples == 1
    with pytest.raises(ConfigError, match=r"give config=BuildOptions\(...\) or keyword options, not both \(got config and num_samples\)"):
        edgeseg.build(tiny_module(), tmp_path / "d", config=config, num_samples=2)
    with pytest.raises(ConfigError, match="config must be a BuildOptions, got dict"):
        edgeseg.build(tiny_module(), tmp_path / "d", config={"num_samples": 2})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"unknown build options \['colour'\]; valid: precision"):
        edgeseg.build(tiny_module(), tmp_path / "d", input_size=(32, 32), colour="red")
    assert not (tmp_path / "d.edgeseg").exists()
