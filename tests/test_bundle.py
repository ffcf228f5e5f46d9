"""Bundle round trip, verification and atomic writes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from edgeseg.bundle import (
    Bundle,
    InputSpec,
    Manifest,
    bundle_path,
    class_names,
    default_palette,
    write_bundle,
)
from edgeseg.errors import BundleError, BundleExistsError, ConfigError


def _manifest(**overrides) -> Manifest:  # type: ignore[no-untyped-def]
    fields = dict(
        model={"name": "toy", "source": "module", "options": {}},
        classes=("a", "b"),
        palette=((0, 0, 0), (255, 0, 0)),
        input=InputSpec(size=(32, 48)),
        precision="fp32",
        opset=19,
        outputs=("mask",),
        graphs={"fp32": "model.onnx"},
        versions={"edgeseg": "0.1.0"},
        parity={"agreement": 1.0},
    )
    fields.update(overrides)
    return Manifest.create(**fields)


@pytest.fixture
def written(tmp_path: Path) -> Bundle:
    return write_bundle(tmp_path / "toy.edgeseg", _manifest(), {"model.onnx": b"graph-bytes" * 100})


def test_round_trip_keeps_every_field(written: Bundle) -> None:
    loaded = Bundle.load(written.path)
    m = loaded.manifest
    assert m.classes == ("a", "b")
    assert m.palette == ((0, 0, 0), (255, 0, 0))
    assert m.input == InputSpec(size=(32, 48))
    assert m.files["model.onnx"].bytes == 1100
    assert len(m.files["model.onnx"].sha256) == 64
    assert loaded.graph() == written.path / "model.onnx"
    data = json.loads((written.path / "manifest.json").read_text())
    for key in ("schema_version", "model", "classes", "palette", "input", "precision", "opset",
                "files", "versions", "parity"):
        assert key in data
    assert Manifest.from_json(data) == m


def test_tampered_file_is_detected(written: Bundle) -> None:
    graph = written.path / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[5] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx does not match its checksum"):
        Bundle.load(written.path)
    # verification can be skipped on purpose, and the manifest still reads
    assert Bundle.load(written.path, verify=False).manifest.classes == ("a", "b")


def test_truncated_file_is_detected(written: Bundle) -> None:
    graph = written.path / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"model\.onnx has 100 bytes, the manifest says 1100"):
        Bundle.load(written.path)


def test_missing_file_is_detected(written: Bundle) -> None:
    (written.path / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"file model\.onnx is missing"):
        Bundle.load(written.path)


def test_missing_manifest_and_directory(tmp_path: Path, written: Bundle) -> None:
    (written.path / "manifest.json").unlink()
    with pytest.raises(BundleError, match="has no manifest.json"):
        Bundle.load(written.path)
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.load(tmp_path / "nope.edgeseg")
    file = tmp_path / "file.edgeseg"
    file.write_text("x")
    with pytest.raises(BundleError, match="is not a directory"):
        Bundle.load(file)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("classes"), "missing keys classes"),
        (lambda d: d.update(schema_version=99), "schema_version 99 is newer"),
        (lambda d: d.update(schema_version="1"), r"schema_version must be an integer, got '1'"),
        (lambda d: d.update(schema_version=True), r"schema_version must be an integer, got True"),
        (lambda d: d.update(schema_version=0), r"schema_version must be one of 1, 2, got 0"),
        (lambda d: d.update(precision="int4"), r"precision must be one of fp32, fp16, int8, got 'int4'"),
        (lambda d: d.update(palette=[[0, 0, 0]]), "palette has 1 colours for 2 classes"),
        (lambda d: d.update(palette=[[0, 0, 0], [300, 0, 0]]), r"palette\[1\]\[0\] must be <= 255, got 300"),
        (lambda d: d.update(outputs=["probs"]), "must include 'mask'"),
        (lambda d: d["input"].pop("size"), r"manifest.json: input: missing key 'size'"),
        (lambda d: d["input"].update(size=[0, 48]), r"input.size\[0\] must be >= 1, got 0"),
        (lambda d: d["input"].update(size=[-32, 48]), r"input.size\[0\] must be >= 1, got -32"),
        (lambda d: d["input"].update(size=[60000, 60000]), r"input.size\[0\] must be <= 16384, got 60000"),
        (lambda d: d["input"].update(size=[32]), r"input.size must be a list of 2, got \[32\]"),
        (lambda d: d["input"].update(channels=5), r"input.channels must be one of 1, 3, got 5"),
        (lambda d: d["input"].update(channels=-3), r"input.channels must be one of 1, 3, got -3"),
        (lambda d: d["input"].update(multiple_of=0), r"input.multiple_of must be >= 1, got 0"),
        (lambda d: d["input"].update(std=[0.2, 0.0, 0.2]), r"input.std\[1\] must be > 0, got 0.0"),
        (lambda d: d["input"].update(mean=[0.5]), r"input.mean has 1 values for 3 channel\(s\)"),
        (lambda d: d["input"].update(color="GRAY"), r"input.color 'GRAY' does not match: expected 'RGB'"),
        (lambda d: d["input"].update(dynamic="yes"), r"input.dynamic must be true or false, got 'yes'"),
        (lambda d: d["files"]["model.onnx"].update(bytes="abc"), r"files.model.onnx.bytes must be an integer, got 'abc'"),
        (lambda d: d["files"]["model.onnx"].update(bytes=-1), r"files.model.onnx.bytes must be >= 0, got -1"),
        (lambda d: d["files"]["model.onnx"].update(sha256="xyz"), r"files.model.onnx.sha256 'xyz' is not of the form"),
        (lambda d: d.update(parity={"agreement": 1.5}), r"parity.agreement must be <= 1, got 1.5"),
        (lambda d: d.update(parity={"agreement": 1.0, "colour": 3}), r"parity: unknown key\(s\) colour"),
        (lambda d: d.update(surprise=1), r"manifest.json: unknown key\(s\) surprise"),
        (lambda d: d.update(crf={"mode": "later"}), r"crf.mode must be one of separate, fused, got 'later'"),
        (lambda d: d.update(crf={"mode": "fused", "params": {"window": 4}}), r"crf.params: crf window must be an odd integer >= 3, got 4"),
        (lambda d: d.update(op_types={"gone.onnx": ["Conv"]}), r"op_types describes 'gone.onnx'"),
        (lambda d: d.update(model={"name": "toy", "source": "hub"}), r"model.source must be one of zoo, module, got 'hub'"),
        (lambda d: d.update(graphs={"fp32": "other.onnx"}), "'other.onnx' .* not listed"),
        (lambda d: d["files"].update({"../evil": {"sha256": "0" * 64, "bytes": 1}}), "not a plain name"),
    ],
)
def test_malformed_manifest_is_named(written: Bundle, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    path = written.path / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        Bundle.load(written.path)


def test_invalid_json(written: Bundle) -> None:
    (written.path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="is not valid JSON"):
        Bundle.load(written.path)


def test_existing_bundle_is_not_replaced_without_overwrite(written: Bundle) -> None:
    with pytest.raises(BundleExistsError, match="already exists; pass overwrite=True"):
        write_bundle(written.path, _manifest(), {"model.onnx": b"new"})
    assert (written.path / "model.onnx").read_bytes() == b"graph-bytes" * 100
    replaced = write_bundle(written.path, _manifest(), {"model.onnx": b"new"}, overwrite=True)
    assert (replaced.path / "model.onnx").read_bytes() == b"new"
    assert [p.name for p in written.path.parent.iterdir()] == [written.path.name]


def test_failed_write_leaves_no_partial_bundle_and_keeps_the_old(written: Bundle) -> None:
    # a graph named in the manifest but not given: fails after the temp dir exists
    bad = _manifest(graphs={"fp32": "model.onnx", "int8": "model.int8.onnx"})
    with pytest.raises(BundleError, match=r"graph files \['model.int8.onnx'\] were not given"):
        write_bundle(written.path, bad, {"model.onnx": b"x"}, overwrite=True)
    # a file name that may not be written: fails half-way through writing
    with pytest.raises(BundleError, match="not allowed"):
        write_bundle(written.path, _manifest(), {"model.onnx": b"x", "a/b": b"y"}, overwrite=True)
    assert Bundle.load(written.path).manifest.files["model.onnx"].bytes == 1100
    assert sorted(p.name for p in written.path.parent.iterdir()) == [written.path.name]


def test_bundle_path_appends_suffix(tmp_path: Path) -> None:
    assert bundle_path(tmp_path / "road") == tmp_path / "road.edgeseg"
    assert bundle_path(tmp_path / "road.edgeseg") == tmp_path / "road.edgeseg"


def test_class_names_and_palette() -> None:
    assert class_names(None, 3) == ["class_0", "class_1", "class_2"]
    assert class_names(["x", "y"], None) == ["x", "y"]
    with pytest.raises(ConfigError, match="num_classes=3 but 2 class names"):
        class_names(["x", "y"], 3)
    with pytest.raises(ConfigError, match="duplicate"):
        class_names(["x", "x"], None)
    with pytest.raises(ConfigError, match="give classes"):
        class_names(None, None)
    with pytest.raises(ConfigError, match="positive integer"):
        class_names(None, 0)
    palette = default_palette(21)
    assert palette[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]  # the VOC colour map
    assert len(set(palette)) == 21


def test_copy_of_bundle_verifies(written: Bundle, tmp_path: Path) -> None:
    copy = tmp_path / "copy.edgeseg"
    shutil.copytree(written.path, copy)
    assert Bundle.load(copy).manifest == written.manifest


def test_schema_1_bundles_load_and_are_rewritten_as_schema_2(written: Bundle) -> None:
    path = written.path / "manifest.json"
    data = json.loads(path.read_text())
    assert data["schema_version"] == 2 and "op_types" in data
    data["schema_version"] = 1  # as edgeseg 0.1.0 wrote them: no op_types
    del data["op_types"]
    path.write_text(json.dumps(data))
    old = Bundle.load(written.path)
    assert old.manifest.schema_version == 1 and old.manifest.op_types == {}
    files = {name: written.path / name for name in old.manifest.files}
    rewritten = write_bundle(written.path, old.manifest, files, overwrite=True)
    assert rewritten.manifest.schema_version == 2


def test_manifest_records_are_typed(written: Bundle) -> None:
    m = written.manifest
    assert m.parity is not None and m.parity.agreement == 1.0 and m.parity.samples is None
    assert m.model.name == "toy" and m.model.source == "module" and m.model.trained is None
    record = m.files["model.onnx"]
    with pytest.raises(AttributeError):
        record.bytes = 0  # type: ignore[misc]  # frozen
    assert m.replace(precision="fp32") == m
    with pytest.raises(BundleError, match=r"manifest: precision must be one of fp32, fp16, int8"):
        m.replace(precision="fp64")


# -- writes: atomic, serialised, umask modes; loads: regular files only, nothing unlisted ------


def test_modes_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        first = write_bundle(tmp_path / "m", _manifest(), {"model.onnx": b"g"})
        assert stat.S_IMODE(first.path.stat().st_mode) == 0o755  # not mkdtemp's 0700
        again = write_bundle(first.path, _manifest(), {"model.onnx": b"h"}, overwrite=True)
        assert stat.S_IMODE(again.path.stat().st_mode) == 0o755
        assert stat.S_IMODE((again.path / "model.onnx").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_the_rewrite_is_one_atomic_exchange(tmp_path: Path) -> None:
    from edgeseg.bundle import _exchange

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not _exchange(a, b):
        pytest.skip("this file system has no renameat2(RENAME_EXCHANGE); the two-rename path runs")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


@pytest.mark.parametrize("interrupt", [OSError("disk gone"), KeyboardInterrupt()])
def test_without_exchange_a_failed_second_rename_puts_the_old_bundle_back(
    written: Bundle, monkeypatch: pytest.MonkeyPatch, interrupt: BaseException
) -> None:
    import edgeseg.bundle as bundle_module

    monkeypatch.setattr(bundle_module, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls: list[tuple[str, str]] = []

    def rename(src: Any, dst: Any) -> None:
        calls.append((str(src), str(dst)))
        if len(calls) == 2:  # the new bundle into place: a signal or an error right there
            raise interrupt
        real_rename(src, dst)

    monkeypatch.setattr(bundle_module.os, "rename", rename)
    with pytest.raises((BundleError, KeyboardInterrupt)):
        write_bundle(written.path, _manifest(), {"model.onnx": b"new"}, overwrite=True)
    monkeypatch.setattr(bundle_module.os, "rename", real_rename)
    assert (written.path / "model.onnx").read_bytes() == b"graph-bytes" * 100
    assert sorted(p.name for p in written.path.parent.iterdir()) == [written.path.name]


def test_a_stranded_previous_bundle_is_restored_by_the_next_load(written: Bundle) -> None:
    # what a SIGKILL between the two renames of the fallback path leaves: no bundle, the old aside
    stranded = written.path.parent / f".{written.path.name}.old-x1"
    os.rename(written.path, stranded)
    loaded = Bundle.load(written.path)
    assert loaded.manifest.files["model.onnx"].bytes == 1100 and not stranded.exists()


def test_a_rewrite_from_a_stale_load_is_refused_not_lost(written: Bundle) -> None:
    first = Bundle.load(written.path)
    second = Bundle.load(written.path)
    write_bundle(first.path, _manifest(), {"model.onnx": b"one"}, overwrite=True, base=first)
    with pytest.raises(BundleError, match="was rewritten by another process since it was loaded"):
        write_bundle(second.path, _manifest(), {"model.onnx": b"two"}, overwrite=True, base=second)
    assert (written.path / "model.onnx").read_bytes() == b"one"  # the first rewrite stands


def test_readers_never_see_a_half_swapped_bundle(written: Bundle) -> None:
    errors: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                Bundle.load(written.path)
            except BundleError as err:
                errors.append(str(err))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(40):
            write_bundle(written.path, _manifest(), {"model.onnx": bytes([i]) * 500}, overwrite=True)
    finally:
        done.set()
        for t in readers:
            t.join()
    assert errors == []


def test_unlisted_and_irregular_files_are_refused(written: Bundle, tmp_path: Path) -> None:
    (written.path / "model.onnx.data").write_bytes(b"weights a graph could read unchecked")
    with pytest.raises(BundleError, match=r"holds 1 file\(s\) its manifest does not list \(model.onnx.data\)"):
        Bundle.load(written.path)
    (written.path / "model.onnx.data").unlink()
    graph = written.path / "model.onnx"
    real = tmp_path / "elsewhere.onnx"
    real.write_bytes(graph.read_bytes())
    graph.unlink()
    graph.symlink_to(real)
    with pytest.raises(BundleError, match="model.onnx is not a regular file \\(a symbolic link\\)"):
        Bundle.load(written.path)


@pytest.mark.timeout(20)
def test_a_manifest_that_is_a_pipe_or_a_device_fails_fast(written: Bundle) -> None:
    manifest = written.path / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)  # reading it would block forever
    with pytest.raises(BundleError, match="manifest.json is not a regular file"):
        Bundle.load(written.path)
    manifest.unlink()
    manifest.symlink_to("/dev/zero")  # reading it would exhaust memory
    with pytest.raises(BundleError, match="manifest.json is not a regular file"):
        Bundle.load(written.path)
