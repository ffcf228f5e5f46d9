"""The CRF graph against its NumPy reference, its settings, and what it does to noisy labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import edgeseg
from converters.crf import CRFParams, crf_graph, crf_reference
from edgeseg.errors import ConfigError
from tests.conftest import tiny_module


def _run(params: CRFParams, image: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model = crf_graph(params, logits.shape[0], height=image.shape[0], width=image.shape[1])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probs, mask = session.run(None, {"image": image[None], "logits": logits[None]})
    return probs[0], mask[0]


@pytest.mark.parametrize(
    "params",
    [
        CRFParams(iterations=1, window=3, downsample=1),
        CRFParams(iterations=3, window=5, downsample=2, w_gaussian=0.0),
        CRFParams(),  # the defaults: 5 iterations, window 5, downsample 4
        CRFParams(iterations=4, window=7, downsample=4, w_bilateral=10.0, theta_alpha=80.0, theta_beta=13.0, theta_gamma=3.0),
        CRFParams(iterations=0),
        CRFParams(window=5, downsample=4, dilation=2, theta_alpha=20.0, theta_gamma=6.0),
        CRFParams(iterations=3, window=3, downsample=2, dilation=3, w_bilateral=10.0, theta_beta=13.0),
        # reaches 3 * 3 = 9 coarse pixels on a 6x8 grid: offsets past the border and past the whole grid
        CRFParams(iterations=2, window=7, downsample=4, dilation=3, w_bilateral=10.0, theta_alpha=40.0),
    ],
    ids=["w3-d1", "w5-d2-nogauss", "defaults", "convcrf-w7-d4", "no-iterations", "w5-d4-dil2", "w3-d2-dil3",
         "w7-d4-dil3-past-the-grid"],
)
def test_graph_matches_numpy_reference(params: CRFParams) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    image[:, 16:] //= 4  # a colour edge, so the bilateral term is not uniform
    logits = rng.normal(0, 2, (5, 24, 32)).astype(np.float32)
    probs, mask = _run(params, image, logits)
    ref = crf_reference(image, logits, params)
    assert np.abs(probs - ref).max() <= 1e-4
    np.testing.assert_array_equal(mask, ref.argmax(axis=0))
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    plain = np.exp(logits) / np.exp(logits).sum(axis=0)
    if params.iterations:
        assert np.abs(ref - plain).max() > 0.05  # the CRF did change something
    else:
        np.testing.assert_allclose(ref, plain, atol=1e-6)


def _two_regions_with_noise(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two flat colour regions; labels right except 15 % flipped; unaries 0.7 on the (noisy) label."""
    rng = np.random.default_rng(seed)
    h, w = 32, 48
    truth = np.zeros((h, w), np.int64)
    truth[:, w // 2 :] = 1
    image = np.where(truth[..., None] == 1, 200, 40).astype(np.uint8).repeat(3, axis=2)
    noisy = truth.copy()
    flip = rng.random((h, w)) < 0.15
    noisy[flip] = 1 - noisy[flip]
    logits = np.where(np.arange(2)[:, None, None] == noisy[None], np.log(0.7), np.log(0.3)).astype(np.float32)
    return truth, noisy, image, logits


def test_mean_field_removes_label_noise_inside_flat_regions() -> None:
    """Two flat colour regions, labels right except 15 % flipped pixels: the CRF restores them."""
    truth, noisy, image, logits = _two_regions_with_noise(seed=1)
    _, mask = _run(CRFParams(downsample=1, window=5, w_bilateral=5.0, theta_beta=20.0), image, logits)
    before = (noisy == truth).mean()
    after = (mask == truth).mean()
    assert before < 0.9 and after > 0.99


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 4}, "window must be an odd integer >= 3"),
        ({"window": 1}, "window must be an odd integer >= 3"),
        ({"iterations": -1}, "iterations must be an integer >= 0"),
        ({"downsample": 0}, "downsample must be an integer >= 1"),
        ({"theta_beta": 0.0}, "theta_beta must be > 0"),
        ({"w_bilateral": -1.0}, "w_bilateral must be >= 0"),
        ({"dilation": 0}, "dilation must be an integer >= 1, got 0"),
        ({"dilation": 1.5}, "dilation must be an integer >= 1, got 1.5"),
        ({"dilation": True}, "dilation must be an integer >= 1, got True"),
    ],
)
def test_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CRFParams(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{}, {"window": 7, "downsample": 2, "iterations": 3}])
def test_dilation_1_is_the_undilated_crf(kwargs: dict[str, int]) -> None:
    """dilation 1 (the default) builds byte for byte the graph built without the field, and the
    manifest and the params' JSON leave it out, so bundles written before it stay as they were."""
    from edgeseg.manifest import decode, encode

    plain = CRFParams(**kwargs)
    explicit = CRFParams(**kwargs, dilation=1)
    assert plain == explicit
    r = plain.window // 2  # the window as it was before the field: offsets one coarse pixel apart
    assert plain.offsets() == [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    a = crf_graph(plain, 4, height=24, width=32).SerializeToString()
    b = crf_graph(explicit, 4, height=24, width=32).SerializeToString()
    assert a == b
    assert "dilation" not in plain.to_json() and "dilation" not in encode(plain)
    assert decode(CRFParams, encode(plain), "crf.params") == plain
    dilated = CRFParams(**kwargs, dilation=2)
    assert encode(dilated)["dilation"] == 2 and dilated.to_json()["dilation"] == 2
    assert decode(CRFParams, encode(dilated), "crf.params") == dilated
    assert crf_graph(dilated, 4, height=24, width=32).SerializeToString() != a


def test_dilation_spaces_the_offsets() -> None:
    params = CRFParams(window=5, downsample=4, dilation=2)
    offsets = params.offsets()
    assert len(offsets) == 25 and max(dy for dy, _ in offsets) == 4  # +-4 coarse pixels = +-16 px
    spatial, gauss = params.offset_constants()
    undilated_spatial, _ = CRFParams(window=5, downsample=4).offset_constants()
    i = offsets.index((0, 2))  # two coarse pixels = 8 px: the undilated window's (0, 2)
    assert spatial[i] == pytest.approx(undilated_spatial[CRFParams().offsets().index((0, 2))])


def test_crf_param_dilation_parses_as_an_integer() -> None:
    from edgeseg.cli import _crf_settings

    assert _crf_settings(("dilation=2", "window=5")) == {"dilation": 2, "window": 5}
    with pytest.raises(ConfigError, match="--crf-param 'dilation=1.5' is not KEY=NUMBER"):
        _crf_settings(("dilation=1.5",))
    with pytest.raises(ConfigError, match="dilation must be an integer >= 1, got 0"):
        CRFParams(**_crf_settings(("dilation=0",)))  # type: ignore[arg-type]


def test_size_must_fit_the_downsample() -> None:
    with pytest.raises(ConfigError, match="30x32 is not a multiple of downsample 4"):
        crf_graph(CRFParams(downsample=4), 3, height=30, width=32)
    with pytest.raises(ConfigError, match="not a multiple of the crf downsample 4"):
        crf_reference(np.zeros((30, 32, 3), np.uint8), np.zeros((3, 30, 32), np.float32), CRFParams())


# --------------------------------------------------------------------------- in bundles and the runtime

SMALL = {"iterations": 3, "window": 5, "downsample": 2}


@pytest.fixture(scope="module")
def crf_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("crf")
    common = {"input_size": (32, 48), "num_classes": 4, "num_samples": 2, "crf_params": SMALL}
    return {
        "separate": edgeseg.build(tiny_module(), out / "sep", crf="separate", outputs=("mask", "probs"), **common).path,
        "fused": edgeseg.build(tiny_module(), out / "fused", crf="fused", outputs=("mask", "probs"), **common).path,
    }


def test_bundles_record_the_crf(crf_bundles: dict[str, Path]) -> None:
    sep = edgeseg.Bundle.load(crf_bundles["separate"]).manifest
    assert sep.crf is not None and sep.crf.mode == "separate" and sep.crf.graph == "crf.onnx"
    assert sep.crf.params.window == 5 and "crf.onnx" in sep.files
    assert "logits" in sep.outputs  # the CRF stage reads them
    assert sep.parity.crf_agreement >= 0.999  # graph vs NumPy reference on PyTorch's logits
    fused = edgeseg.Bundle.load(crf_bundles["fused"]).manifest
    assert fused.crf is not None and fused.crf.mode == "fused" and "crf.onnx" not in fused.files


def test_separate_and_fused_agree_and_match_the_reference(crf_bundles: dict[str, Path]) -> None:
    import torch

    from converters.export import DeployWrapper, ExportSpec

    frame = np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    with edgeseg.Segmenter(crf_bundles["separate"], outputs=["probs"]) as sep, \
            edgeseg.Segmenter(crf_bundles["fused"], outputs=["probs"]) as fused:
        a, b = sep(frame), fused(frame)
    with torch.no_grad():
        logits = DeployWrapper(tiny_module(), ExportSpec(input_size=(32, 48)))(torch.from_numpy(frame)[None])[2][0].numpy()
    ref = crf_reference(frame, logits, CRFParams(**SMALL))
    assert a.probs is not None and b.probs is not None
    assert np.abs(a.probs - ref).max() <= 1e-4 and np.abs(b.probs - ref).max() <= 1e-4
    np.testing.assert_array_equal(a.mask, ref.argmax(axis=0))
    np.testing.assert_array_equal(a.mask, b.mask)
    assert "crf" in a.timings and "crf" not in b.timings  # fused: inside the one graph


def test_separate_crf_switches_off_at_run_time(crf_bundles: dict[str, Path]) -> None:
    frame = np.random.default_rng(4).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    with edgeseg.Segmenter(crf_bundles["separate"], crf=False, outputs=["logits"]) as plain:
        r = plain(frame)
        assert not plain.crf and "crf" not in r.timings
        assert r.logits is not None
        np.testing.assert_array_equal(r.mask, r.logits.argmax(axis=0))
    with edgeseg.Segmenter(crf_bundles["separate"]) as seg:
        assert seg.crf
        results = list(seg.stream([frame] * 4))
        assert all("crf" in x.timings for x in results)
        assert "crf" in seg.profile().stages  # the profile shows the CRF as its own stage


def test_crf_errors(crf_bundles: dict[str, Path], tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is fused into .* build with crf='separate'"):
        edgeseg.Segmenter(crf_bundles["fused"], crf=False)
    with pytest.raises(ConfigError, match="has no CRF stage"):
        edgeseg.Segmenter(tiny_bundle, crf=True)
    args = {"input_size": (32, 48), "num_classes": 4, "num_samples": 1}
    with pytest.raises(ConfigError, match="cannot be combined with dynamic=True"):
        edgeseg.build(tiny_module(), tmp_path / "x", crf="separate", dynamic=True, multiple_of=4, **args)
    with pytest.raises(ConfigError, match=r"unknown crf_params \['sigma'\]"):
        edgeseg.build(tiny_module(), tmp_path / "x", crf="fused", crf_params={"sigma": 1}, **args)
    with pytest.raises(ConfigError, match="crf must be one of separate, fused"):
        edgeseg.build(tiny_module(), tmp_path / "x", crf="dense", **args)
    with pytest.raises(ConfigError, match="crf_params were given without crf"):
        edgeseg.build(tiny_module(), tmp_path / "x", crf_params={"window": 3}, **args)
    with pytest.raises(ConfigError, match="not a multiple of downsample 4"):
        edgeseg.build(tiny_module(), tmp_path / "x", crf="fused", input_size=(30, 48), num_classes=4, num_samples=1)


@pytest.mark.slow
def test_cli_crf(tmp_path: Path) -> None:
    import subprocess
    import sys

    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(frames / "a.png")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edgeseg", *args], capture_output=True, text=True, timeout=600)

    out = tmp_path / "u.edgeseg"
    proc = cli("build", "--model", "unet", "-o", "base_channels=4", "--input-size", "32x48", "--num-classes", "3",
               "--num-samples", "1", "--out", str(out), "--crf", "separate", "--crf-param", "iterations=2",
               "--crf-param", "downsample=2")
    assert proc.returncode == 0, proc.stderr
    info = cli("info", str(out))
    assert "crf         separate: iterations=2, window=5, downsample=2" in info.stdout
    for flag in ("--crf", "--no-crf"):
        run = cli("run", str(out), "--source", str(frames), "--masks", str(tmp_path / flag), flag)
        assert run.returncode == 0, run.stderr
        has_row = any(line.startswith("crf ") for line in run.stdout.splitlines())
        assert has_row == (flag == "--crf")  # the latency table has a crf row only when on
    bad = cli("build", "--model", "unet", "--out", str(tmp_path / "b"), "--crf", "fused", "--crf-param", "window")
    assert bad.returncode == 1 and "--crf-param 'window' is not KEY=NUMBER" in bad.stderr


def test_pydensecrf_and_ours_both_clean_the_same_noisy_labels() -> None:
    """The reference implementation, given the same unaries and kernel settings, agrees on the fix."""
    dcrf = pytest.importorskip(
        "pydensecrf.densecrf",
        reason="pydensecrf2 is not installed (pip install cython && pip install --no-build-isolation pydensecrf2)",
    )
    truth, noisy, image, logits = _two_regions_with_noise(seed=2)
    h, w = truth.shape
    params = CRFParams(downsample=1, window=5, w_bilateral=5.0, theta_alpha=20.0, theta_beta=20.0, w_gaussian=3.0, theta_gamma=3.0)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(-logits.reshape(2, -1)))
    crf.addPairwiseGaussian(sxy=params.theta_gamma, compat=params.w_gaussian)
    crf.addPairwiseBilateral(sxy=params.theta_alpha, srgb=params.theta_beta, rgbim=np.array(image), compat=params.w_bilateral)
    theirs = np.array(crf.inference(5)).reshape(2, h, w).argmax(axis=0)
    _, ours = _run(params, image, logits)
    assert (theirs == truth).mean() > 0.99 and (ours == truth).mean() > 0.99


def test_parity_of_crf_bundles(crf_bundles: dict[str, Path]) -> None:
    """Fused: the graph's mask is compared with PyTorch's logits through the NumPy CRF; separate: the model."""
    from edgeseg.testing import assert_parity

    frames = np.random.default_rng(6).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    for kind in ("fused", "separate"):
        report = assert_parity(crf_bundles[kind], tiny_module(), frames, min_agreement=0.999, max_abs_error=1e-4)
        assert report.artefacts[0].figures["max_abs_logit"] > 0.1
