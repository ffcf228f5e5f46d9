"""The margin for frames a decision never saw: per-frame agreement and bootstrap mIoU bounds."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.mixed import Evaluator, Figures, Target, unseen_bounds
from edgeseg.errors import ConfigError
from edgeseg.metrics import confusion_matrix, mean_iou


def test_the_agreement_bound_is_the_share_of_frames_that_each_reach_it() -> None:
    frames = np.array([0.999, 0.998, 0.997, 0.995, 0.99, 0.98, 0.999, 0.999, 0.998, 0.997])
    low, high = unseen_bounds(frames, 0.9)
    assert high is None  # no labels, no mIoU bound
    assert np.mean(frames >= low) >= 0.9 - 1e-9 and low < frames.mean()
    assert low == pytest.approx(np.quantile(frames, 0.1))
    # one bad frame in ten pulls a 90 % bound down, not just the mean a little
    assert unseen_bounds(frames, 0.95)[0] < low < unseen_bounds(np.sort(frames)[1:], 0.9)[0] + 1e-12
    # identical frames: no margin to ask for
    assert unseen_bounds(np.full(8, 0.97), 0.95)[0] == pytest.approx(0.97)


def test_the_agreement_bound_covers_a_new_frame_at_about_its_confidence() -> None:
    """Judged and new frames from one distribution: a new frame falls below the bound ~5 % of the time."""
    rng = np.random.default_rng(2)
    misses = 0
    trials = 400
    for _ in range(trials):
        judged = 1 - rng.gamma(2.0, 0.004, 32)  # skewed, as per-frame agreement is
        low, _ = unseen_bounds(judged, 0.95)
        misses += (1 - rng.gamma(2.0, 0.004)) < low
    assert 0.01 * trials <= misses <= 0.12 * trials


def test_the_miou_drop_bound_is_above_the_drop_and_zero_for_the_reference() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (6, 8, 8))
    ref = labels.copy()
    ref[:, :2] = (ref[:, :2] + 1) % 3
    worse = ref.copy()
    worse[:3, 2:4] = (worse[:3, 2:4] + 1) % 3  # half the frames lose more pixels
    cms = np.stack([confusion_matrix(m, t, 3) for m, t in zip(worse, labels, strict=True)])
    ref_cms = np.stack([confusion_matrix(m, t, 3) for m, t in zip(ref, labels, strict=True)])
    drop = 100 * (mean_iou(ref_cms.sum(0)) - mean_iou(cms.sum(0)))
    _, high = unseen_bounds(np.ones(6), 0.95, cms=cms, ref_cms=ref_cms)
    assert high is not None and high > drop > 0
    assert unseen_bounds(np.ones(6), 0.95, cms=cms, ref_cms=ref_cms) == (1.0, high)  # a fixed seed
    _, same = unseen_bounds(np.ones(6), 0.95, cms=ref_cms, ref_cms=ref_cms)
    assert same == 0.0


def test_a_target_with_confidence_judges_the_bounds_and_says_so() -> None:
    target = Target(0.99, 0.3, confidence=0.95)
    judged = Figures(0.993, 0.0, 0.6, 0.1, frames=16, agreement_low=0.988, miou_drop_high=0.5)
    misses = target.failures(judged)
    assert len(misses) == 2
    assert "but 5% of the 16 frames agree on less than 98.8000% (the target: 95% of the frames >= 99.0000%)" in misses[0]
    assert "upper 95% bound is 0.50" in misses[1]
    assert Target(0.99, 0.3).failures(judged) == []  # no confidence: the figures themselves
    assert Target(0.99, 0.3, confidence=0.95).failures(Figures(0.993, 0.0, 0.6, 0.1)) == []  # no bounds
    for bad in (0.4, 1.0, -0.5):
        with pytest.raises(ConfigError, match="confidence"):
            Target(confidence=bad)


def test_the_evaluator_keeps_one_confusion_matrix_per_frame() -> None:
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    ref = rng.normal(size=(12, 3, 8, 8)).astype(np.float32)
    labels = ref.argmax(1).astype(np.uint8)
    evaluator = Evaluator(images, ref, labels=labels, confidence=0.9)
    assert evaluator.ref_cms is not None and evaluator.ref_cms.shape == (12, 3, 3)
    assert evaluator.ref_miou == 1.0  # the reference against labels made from it
    with pytest.raises(ConfigError, match="confidence"):
        Evaluator(images, ref, confidence=1.5)
