"""Fuzzing (Hypothesis, bounded in time): bad manifests and bad frames end in an edgeseg error.

Whatever a manifest holds and whatever array a caller hands the runtime, the
outcome is a result or a typed :mod:`edgeseg.errors` exception: never a
crash, a hang or a raw Python exception.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import edgeseg
from edgeseg.bundle import Bundle
from edgeseg.errors import BundleError, EdgesegError
from edgeseg.manifest import Manifest

# JSON values of every kind a hand-edited or hostile manifest might hold
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

pytestmark = pytest.mark.slow  # hundreds of examples each: the full suite runs them

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a JSON value (dict keys and list indexes)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@pytest.fixture(scope="module")
def manifest_json(tiny_bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tiny_bundle / "manifest.json").read_text())
    return data


@FUZZ
@given(data=st.data())
def test_any_edit_of_a_manifest_loads_or_is_a_bundle_error(
    manifest_json: dict[str, Any], data: st.DataObject
) -> None:
    edited = copy.deepcopy(manifest_json)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        paths = [p for p in _paths(edited) if p]
        path = data.draw(st.sampled_from(paths), label="path")
        parent: Any = edited
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans(), label="delete") and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON, label="value")
    try:
        manifest = Manifest.from_json(edited)
    except BundleError:
        return
    # what loads is sane: it writes back to JSON and reads back the same
    assert Manifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest


@FUZZ
@given(value=JSON)
def test_any_json_as_a_whole_manifest_is_a_bundle_error(value: Any) -> None:
    with pytest.raises(BundleError):
        Manifest.from_json(value)


FRAMES = st.one_of(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12),
    ),
    st.builds(lambda a: np.asmatrix(a), hnp.arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8)))),
    st.builds(
        lambda a: a[::2, ::-1], hnp.arrays(np.uint8, st.tuples(st.integers(2, 9), st.integers(2, 9), st.just(3)))
    ),
    JSON,
)


@pytest.fixture(scope="module")
def segmenter(tiny_bundle: Path) -> Any:
    seg = edgeseg.Segmenter(tiny_bundle, backend="onnxruntime", threads=1)
    yield seg
    seg.close()


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix, on purpose
@FUZZ
@given(frame=FRAMES)
def test_any_frame_is_a_mask_or_an_edgeseg_error(segmenter: Any, frame: Any) -> None:
    try:
        result = segmenter(frame)
    except EdgesegError:
        return
    shape = np.asarray(frame).shape
    assert result.mask.shape == shape[:2] and result.mask.dtype == np.uint8
    assert int(result.mask.max()) < len(segmenter.classes)


def test_the_fuzzed_bundle_still_loads(tiny_bundle: Path) -> None:
    assert Bundle.load(tiny_bundle).manifest.num_classes == 4
