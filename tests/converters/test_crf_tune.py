"""``edgeseg crf-tune``: the bounded search, the rewritten bundle, and what it refuses.

The frames are piecewise-constant two-class images whose model (a stand-in
for a trained one) gives noisy unaries: the image's red channel plus fixed
per-pixel noise that flips about 15 % of the pixels, where a CRF clearly helps.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import edgeseg
from converters.crf import crf_reference
from converters.crf_tune import DEFAULT_BUDGET, DEFAULT_LIMIT, SPACE, search_params, tune_bundle
from edgeseg.cli import cli, crf_tune_cmd
from edgeseg.errors import ConfigError
from edgeseg.manifest import CRFParams, CrfTuningRecord, Manifest
from tests.conftest import tiny_module

H, W = 32, 48
SMALL = {"iterations": 3, "window": 5, "downsample": 2}
COLOURS = np.array([[40, 120, 160], [200, 80, 80]], np.uint8)  # class 0, class 1


def noisy_unaries() -> Any:
    """Logits from the red channel (class 1 bright) plus fixed per-pixel noise."""
    import torch
    from torch import nn

    class NoisyUnaries(nn.Module):
        noise: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.register_buffer("noise", torch.randn(1, 2, H, W, generator=g) * 1.9)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            red = x[:, :1]
            return {"out": torch.cat([-red, red], dim=1) + self.noise}

    return NoisyUnaries().eval()


def write_frames(folder: Path, count: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """``count`` piecewise-constant frames (two regions, cut at random) and their labels."""
    rng = np.random.default_rng(seed)
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(count):
        y, x = np.mgrid[:H, :W]
        cy, cx = rng.integers(8, H - 8), rng.integers(8, W - 8)
        truth = ((y > cy) ^ (x > cx)).astype(np.uint8)
        image = COLOURS[truth].astype(np.int16) + rng.normal(0, 6, (H, W, 3)).astype(np.int16)
        label = truth.copy()
        label[:2] = 255  # a void band, left out of the mIoU
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(images / f"seq_{i:03d}.png")
        Image.fromarray(label, mode="L").save(labels / f"seq_{i:03d}.png")
    return images, labels


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_frames(tmp_path_factory.mktemp("crf-tune-frames"))


@pytest.fixture(scope="module")
def crf_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crf-tune") / "noisy"
    return edgeseg.build(
        noisy_unaries(), out, input_size=(H, W), num_classes=2, num_samples=2, crf="separate",
        crf_params=SMALL, outputs=("mask",), target="cpu",
    ).path


def _copy(bundle: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst)
    return dst


def _digest(bundle: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(bundle.iterdir())}


def test_search_is_bounded_and_never_worse_than_its_start() -> None:
    """On a smooth score with its peak away from the start, the search climbs within the budget."""
    peak = {"w_bilateral": 16.0, "theta_alpha": 20.0, "theta_beta": 12.0, "w_gaussian": 1.0, "theta_gamma": 3.0}

    def score(p: CRFParams) -> float:
        return -sum((np.log2(getattr(p, k)) - np.log2(v)) ** 2 for k, v in peak.items())

    start = CRFParams(**SMALL)
    found = search_params(score, start, budget=30)
    assert found.evaluations <= 30 and found.trials[0].params == start
    assert found.score >= found.start_score and found.score == max(t.score for t in found.trials)
    assert found.score > found.start_score + 5  # it got much closer to the peak
    for t in found.trials:  # inside the space; the CRF's cost (iterations, window, downsample) untouched
        assert (t.params.iterations, t.params.window, t.params.downsample) == (3, 5, 2)
        for k, (low, high) in SPACE.items():
            assert low <= getattr(t.params, k) <= high or getattr(t.params, k) == getattr(start, k)
    assert search_params(score, start, budget=1).evaluations == 1
    with pytest.raises(ConfigError, match="budget must be an integer >= 1, got 0"):
        search_params(score, start, budget=0)
    with pytest.raises(ConfigError, match=r"cannot tune crf setting\(s\) \['window'\]"):
        search_params(score, start, names=("window",))


def test_tuned_bundle_scores_at_least_the_defaults_and_records_it(
    crf_bundle: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle = _copy(crf_bundle, tmp_path)
    images, labels = frames
    result = tune_bundle(bundle, images, labels, ignore_index=255, budget=12)
    r = result.record
    assert result.written and r.frames == 6 and r.evaluations <= 12 and r.ignore_index == 255
    assert r.miou_before > r.miou_model + 0.02  # a CRF clearly helps these unaries ...
    assert r.miou_after >= r.miou_before  # ... and the tuned one at least as much as the built one
    loaded = edgeseg.Bundle.load(bundle)  # verified
    crf = loaded.manifest.crf
    assert crf is not None and crf.params == result.search.best and crf.tuning == r
    assert crf.tuning.previous == CRFParams(**SMALL)
    assert (crf.params.iterations, crf.params.window, crf.params.downsample) == (3, 5, 2)
    parity = loaded.manifest.parity
    assert parity is not None and parity.crf_agreement is not None and parity.crf_agreement >= 0.999
    # the record survives the manifest's JSON round trip
    again = Manifest.from_json(loaded.manifest.to_json(), where="manifest.json")
    assert again.crf is not None and isinstance(again.crf.tuning, CrfTuningRecord)
    # the rewritten crf.onnx runs the tuned settings: the runtime's mask is the NumPy reference's
    frame = np.asarray(Image.open(sorted(images.iterdir())[0]))
    with edgeseg.Segmenter(bundle, outputs=["logits"]) as seg:
        out = seg(frame)
    assert out.logits is not None
    np.testing.assert_array_equal(out.mask, crf_reference(frame, out.logits, crf.params).argmax(axis=0))


def test_dry_run_leaves_the_bundle_byte_identical(crf_bundle: Path, frames: tuple[Path, Path], tmp_path: Path) -> None:
    bundle = _copy(crf_bundle, tmp_path)
    before = _digest(bundle)
    result = tune_bundle(bundle, *frames, ignore_index=255, budget=3, dry_run=True)
    assert not result.written and result.record.evaluations == 3
    assert _digest(bundle) == before


def _write_label(path: Path, label: np.ndarray) -> None:
    Image.fromarray(label.astype(np.uint8), mode="L").save(path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-label", r"1 of 6 images in .* have no label in .* \(e.g. seq_003.png\)"),
        ("label-size", r"label .*seq_002.png is 16x48 but image .*seq_002.png is 32x48"),
        ("class-id", r"label .*seq_001.png has class id\(s\) 7 but the bundle has 2 classes \(0..1\); only ids"),
        ("void-not-ignored", r"has class id\(s\) 255 .*; pass --ignore-index for the void id"),
        ("no-images", r"--images .* holds no images"),
    ],
)
def test_refuses_labels_that_do_not_fit_and_writes_nothing(
    crf_bundle: Path, tmp_path: Path, case: str, message: str
) -> None:
    bundle = _copy(crf_bundle, tmp_path)
    images, labels = write_frames(tmp_path / "frames")
    ignore: int | None = 255
    if case == "missing-label":
        (labels / "seq_003.png").unlink()
    elif case == "label-size":
        _write_label(labels / "seq_002.png", np.zeros((16, W)))
    elif case == "class-id":
        _write_label(labels / "seq_001.png", np.full((H, W), 7))
    elif case == "void-not-ignored":
        ignore = None
    elif case == "no-images":
        for p in images.iterdir():
            p.unlink()
    before = _digest(bundle)
    with pytest.raises(ConfigError, match=message):
        tune_bundle(bundle, images, labels, ignore_index=ignore, budget=2)
    assert _digest(bundle) == before


def test_refuses_a_bundle_without_a_separate_crf(tiny_bundle: Path, frames: tuple[Path, Path], tmp_path: Path) -> None:
    before = _digest(tiny_bundle)
    with pytest.raises(ConfigError, match=r"has no CRF stage to tune; build one with it: edgeseg build \.\.\. --crf separate"):
        tune_bundle(tiny_bundle, *frames, ignore_index=255)
    assert _digest(tiny_bundle) == before
    with pytest.raises(ConfigError, match="--trials must be an integer >= 1, got 0"):
        tune_bundle(tiny_bundle, *frames, budget=0)
    with pytest.raises(ConfigError, match="--ignore-index must be a label id in 0..255, got 300"):
        tune_bundle(tiny_bundle, *frames, ignore_index=300)


@pytest.mark.slow  # builds a fused bundle of its own (2-3 s)
def test_refuses_a_fused_crf(frames: tuple[Path, Path], tmp_path: Path) -> None:
    fused = edgeseg.build(
        tiny_module(num_classes=2), tmp_path / "fused", input_size=(H, W), num_classes=2, num_samples=1,
        crf="fused", crf_params=SMALL, outputs=("mask",), target="cpu",
    ).path
    before = _digest(fused)
    with pytest.raises(ConfigError, match=r"fused into the model's graphs, which crf-tune does not rewrite; build with --crf separate"):
        tune_bundle(fused, *frames, ignore_index=255)
    assert _digest(fused) == before


def test_cli(crf_bundle: Path, frames: tuple[Path, Path], tmp_path: Path) -> None:
    bundle = _copy(crf_bundle, tmp_path)
    images, labels = frames
    runner = CliRunner()
    before = _digest(bundle)
    dry = runner.invoke(cli, ["crf-tune", str(bundle), "--images", str(images), "--labels", str(labels),
                              "--ignore-index", "255", "--trials", "2", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "tuned (dry run, not written)" in dry.output and "on 6 frames, 2 evaluations" in dry.output
    assert _digest(bundle) == before
    bad = runner.invoke(cli, ["crf-tune", str(bundle), "--images", str(images), "--labels", str(labels)])
    assert bad.exit_code == 1 and "pass --ignore-index for the void id" in bad.output
    assert "Traceback" not in bad.output and _digest(bundle) == before
    missing = runner.invoke(cli, ["crf-tune", str(bundle), "--images", str(tmp_path / "nope"), "--labels", str(labels)])
    assert missing.exit_code == 1 and "--images" in missing.output and "does not exist" in missing.output
    ok = runner.invoke(cli, ["crf-tune", str(bundle), "--images", str(images), "--labels", str(labels),
                             "--ignore-index", "255", "--budget", "3", "--json"])
    assert ok.exit_code == 0, ok.output
    import json

    report = json.loads(ok.output[ok.output.index("{"):])
    assert report["written"] and report["evaluations"] <= 3 and report["miou_after"] >= report["miou_before"]
    assert edgeseg.Bundle.load(bundle).manifest.crf.tuning is not None  # type: ignore[union-attr]


def test_cli_defaults_are_the_tuners() -> None:
    """The CLI spells the defaults out (importing the tuner would import onnx); they must agree."""
    defaults = {p.name: p.default for p in crf_tune_cmd.params}
    assert defaults["limit"] == DEFAULT_LIMIT and defaults["budget"] == DEFAULT_BUDGET
