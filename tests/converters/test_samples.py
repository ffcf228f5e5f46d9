"""Build-time samples and evaluation sets: thin users of edgeseg.runtime.frames."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from converters.precision import EvalSet, load_eval_set
from converters.samples import load_samples
from edgeseg.bundle import InputSpec
from edgeseg.errors import ConfigError
from edgeseg.runtime.frames import stratified_picks
from edgeseg.runtime.image import prepare
from edgeseg.runtime.sources import read_image


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "samples"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / f"s{i}.png")
    (root / "broken.png").write_bytes(b"not a png")  # listed first: b < s
    return root


def test_load_samples_picks_spread_frames_prepared_like_the_runtime(folder: Path) -> None:
    images, skipped = load_samples(folder, (16, 24), 1, limit=4, seed=5)
    picks = stratified_picks(11, 4, 5).tolist()  # over all 11 files, the broken one included
    expected = [f"s{i - 1}.png" for i in picks if i > 0]
    assert skipped == (1 if 0 in picks else 0) and images.shape == (len(expected), 16, 24, 1)
    spec = InputSpec(size=(16, 24), channels=1)
    for name, image in zip(expected, images, strict=True):
        assert np.array_equal(image, prepare(read_image(folder / name), spec)[0])
    _, skipped = load_samples(folder, (16, 24), limit=20)
    assert skipped == 1
    with pytest.raises(ConfigError, match=r"samples folder /nonexistent/frames does not exist"):
        load_samples("/nonexistent/frames", (16, 24))


def test_load_eval_set_pairs_labels_and_defaults_the_ignore_index(folder: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    for i in range(0, 10, 2):  # every other image has a label (palette PNG: VOC)
        label = Image.fromarray(np.full((30, 40), i, np.uint8), mode="L").convert("P")
        label.save(labels / f"s{i}.png")
    spec = InputSpec(size=(16, 24))
    eval_set = load_eval_set(folder, spec, limit=3, labels=labels, label_format="voc")
    assert isinstance(eval_set, EvalSet) and eval_set.source == str(folder)
    labelled = [f"s{i}.png" for i in range(0, 10, 2)]
    assert eval_set.names == [labelled[i] for i in stratified_picks(5, 3, 0)]
    assert eval_set.images.shape == (3, 16, 24, 3) and eval_set.ignore_index == 255
    assert eval_set.labels is not None and eval_set.labels.shape == (3, 16, 24)
    assert [int(lab[0, 0]) for lab in eval_set.labels] == [int(n[1]) for n in eval_set.names]
    with pytest.raises(dataclasses.FrozenInstanceError):
        eval_set.source = "x"  # type: ignore[misc]
    plain = load_eval_set(folder, spec, limit=100)
    assert plain.labels is None and plain.ignore_index is None and len(plain.names) == 10
