"""The CRF graph against its NumPy reference, its settings, and what it does to noisy labels."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from converters.crf import CRFParams, crf_graph, crf_reference
from edgeseg.errors import ConfigError


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
    ],
    ids=["w3-d1", "w5-d2-nogauss", "defaults", "convcrf-w7-d4", "no-iterations"],
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


def test_mean_field_removes_label_noise_inside_flat_regions() -> None:
    """Two flat colour regions, labels right except 15 % flipped pixels: the CRF restores them."""
    rng = np.random.default_rng(1)
    h, w = 32, 48
    truth = np.zeros((h, w), np.int64)
    truth[:, w // 2 :] = 1
    image = np.where(truth[..., None] == 1, 200, 40).astype(np.uint8).repeat(3, axis=2)
    noisy = truth.copy()
    flip = rng.random((h, w)) < 0.15
    noisy[flip] = 1 - noisy[flip]
    logits = np.where(np.arange(2)[:, None, None] == noisy[None], np.log(0.7), np.log(0.3)).astype(np.float32)
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
    ],
)
def test_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CRFParams(**kwargs)  # type: ignore[arg-type]


def test_size_must_fit_the_downsample() -> None:
    with pytest.raises(ConfigError, match="30x32 is not a multiple of downsample 4"):
        crf_graph(CRFParams(downsample=4), 3, height=30, width=32)
    with pytest.raises(ConfigError, match="not a multiple of the crf downsample 4"):
        crf_reference(np.zeros((30, 32, 3), np.uint8), np.zeros((3, 30, 32), np.float32), CRFParams())
