"""The margin for unseen frames: frame-level bootstrap bounds, and a target judged on them."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.mixed import Evaluator, Figures, Target, bootstrap_bounds
from edgeseg.errors import ConfigError
from edgeseg.metrics import confusion_matrix, mean_iou


def test_the_bound_is_below_the_mean_and_widens_with_spread_and_narrows_with_frames() -> None:
    rng = np.random.default_rng(1)
    calm = 0.995 + rng.normal(0, 0.001, 16)
    rough = 0.995 + rng.normal(0, 0.01, 16)
    low_calm, _ = bootstrap_bounds(calm, 0.95)
    low_rough, _ = bootstrap_bounds(rough, 0.95)
    assert low_calm < calm.mean() and low_rough < rough.mean()
    assert calm.mean() - low_calm < rough.mean() - low_rough  # more varied frames: a wider margin
    many = 0.995 + rng.normal(0, 0.01, 256)
    low_many, _ = bootstrap_bounds(many, 0.95)
    assert many.mean() - low_many < 0.5 * (rough.mean() - low_rough)  # ~1/sqrt(n): 4x the frames, half
    # a higher confidence asks for more margin; identical frames leave none to ask for
    assert bootstrap_bounds(rough, 0.99)[0] < low_rough
    assert bootstrap_bounds(np.full(8, 0.97), 0.95)[0] == pytest.approx(0.97)
    # reproducible: a fixed seed
    assert bootstrap_bounds(rough, 0.95) == bootstrap_bounds(rough, 0.95)


def test_the_bound_covers_the_mean_of_unseen_frames_at_about_its_confidence() -> None:
    """Draw 'judged' and 'unseen' frames from one distribution: the bound fails about 5 % of the time."""
    rng = np.random.default_rng(2)
    misses = 0
    trials = 300
    for _ in range(trials):
        judged = 1 - rng.gamma(2.0, 0.004, 32)  # skewed, as per-frame agreement is
        low, _ = bootstrap_bounds(judged, 0.95, resamples=500, seed=int(rng.integers(1 << 30)))
        misses += low > 1 - 2.0 * 0.004  # the true mean of unseen frames
    assert 0.02 * trials <= misses <= 0.12 * trials


def test_the_miou_drop_bound_matches_the_miou_of_a_resample() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (6, 8, 8))
    ref = labels.copy()
    ref[:, :2] = (ref[:, :2] + 1) % 3
    worse = ref.copy()
    worse[:3, 2:4] = (worse[:3, 2:4] + 1) % 3  # half the frames lose more pixels
    cms = np.stack([confusion_matrix(m, t, 3) for m, t in zip(worse, labels, strict=True)])
    ref_cms = np.stack([confusion_matrix(m, t, 3) for m, t in zip(ref, labels, strict=True)])
    drop = 100 * (mean_iou(ref_cms.sum(0)) - mean_iou(cms.sum(0)))
    _, high = bootstrap_bounds(np.ones(6), 0.95, cms=cms, ref_cms=ref_cms)
    assert high is not None and high > drop > 0
    _, same = bootstrap_bounds(np.ones(6), 0.95, cms=ref_cms, ref_cms=ref_cms)
    assert same == 0.0


def test_a_target_with_confidence_judges_the_bounds_and_says_so() -> None:
    target = Target(0.99, 0.3, confidence=0.95)
    judged = Figures(0.993, 0.0, 0.6, 0.1, frames=16, agreement_low=0.988, miou_drop_high=0.5)
    misses = target.failures(judged)
    assert len(misses) == 2
    assert "lower 95% bound over 16 frames is 98.8000%" in misses[0] and "< 99.0000%" in misses[0]
    assert "upper 95% bound is 0.50" in misses[1]
    assert Target(0.99, 0.3).failures(judged) == []  # no confidence: the figures themselves
    assert Target(0.99, 0.3, confidence=0.95).failures(Figures(0.993, 0.0, 0.6, 0.1)) == []  # no bounds
    for bad in (0.4, 1.0, -0.5):
        with pytest.raises(ConfigError, match="confidence"):
            Target(confidence=bad)


def test_the_evaluator_gives_bounds_only_when_asked_and_only_over_every_frame() -> None:
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    ref = rng.normal(size=(12, 3, 8, 8)).astype(np.float32)
    labels = ref.argmax(1).astype(np.uint8)
    evaluator = Evaluator(images, ref, labels=labels, confidence=0.9)
    assert evaluator.ref_cms is not None and evaluator.ref_cms.shape == (12, 3, 3)
    with pytest.raises(ConfigError, match="confidence"):
        Evaluator(images, ref, confidence=1.5)
