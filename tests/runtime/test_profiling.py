"""Latency profiling: stage statistics, traces, ONNX Runtime layer timings, plots."""

from __future__ import annotations

import json
import math
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edgeseg.errors import ConfigError, InputError, MissingDependencyError
from edgeseg.runtime.profiling import (
    STAGES,
    FrameTiming,
    LayerTiming,
    Percentiles,
    Profiler,
    layer_timings_from_onnxruntime,
    layers_table,
    plot,
    top_layers,
    write_chrome_trace,
    write_json,
)


def _sequential(profiler: Profiler, durations_ms: dict[str, list[float]], *, t0: float = 100.0) -> None:
    """Records frames whose stages run back to back with the given durations."""
    n = len(next(iter(durations_ms.values())))
    t = t0
    for i in range(n):
        stages = {}
        for name, values in durations_ms.items():
            stages[name] = (t, t + values[i] / 1e3)
            t += values[i] / 1e3
        profiler.record_stages(i, stages)


# --------------------------------------------------------------------------- statistics


def test_percentiles_match_numpy() -> None:
    infer = np.arange(1, 101, dtype=np.float64)  # 1..100 ms
    rng = np.random.default_rng(0)
    pre = rng.uniform(0.5, 3.0, size=100)
    profiler = Profiler()
    _sequential(profiler, {"preprocess": list(pre), "infer": list(infer)})

    s = profiler.summary()
    assert s.frames == 100 and profiler.frames == 100 and s.dropped == 0
    p = s.stages["infer"]
    assert p.count == 100
    assert p.p50 == pytest.approx(50.5, abs=1e-6)
    assert p.p90 == pytest.approx(np.percentile(infer, 90), abs=1e-6)
    assert p.p99 == pytest.approx(np.percentile(infer, 99), abs=1e-6)
    assert p.max == pytest.approx(100.0, abs=1e-6)
    assert p.min == pytest.approx(1.0, abs=1e-6)
    assert p.mean == pytest.approx(50.5, abs=1e-6)
    assert p.jitter == pytest.approx(np.std(infer), abs=1e-6)
    q = s.stages["preprocess"]
    assert q.p50 == pytest.approx(np.median(pre), abs=1e-6)
    assert q.jitter == pytest.approx(np.std(pre), abs=1e-6)
    # back-to-back stages: end-to-end is their sum
    assert s.end_to_end.mean == pytest.approx(np.mean(pre + infer), abs=1e-6)
    assert s.end_to_end.p99 == pytest.approx(np.percentile(pre + infer, 99), abs=1e-6)
    assert list(s.stages) == ["preprocess", "infer"]


def test_window_keeps_only_last_frames_but_frames_counts_all() -> None:
    profiler = Profiler(window=10)
    _sequential(profiler, {"infer": [float(v) for v in range(1, 101)]})
    s = profiler.summary()
    assert profiler.frames == 100
    assert s.frames == 10
    assert s.stages["infer"].count == 10
    assert s.stages["infer"].min == pytest.approx(91.0)
    assert s.stages["infer"].max == pytest.approx(100.0)
    assert s.stages["infer"].mean == pytest.approx(95.5)


def test_drops_counted_not_in_stats() -> None:
    profiler = Profiler()
    _sequential(profiler, {"infer": [10.0, 20.0, 30.0]})
    profiler.record_drop(3)
    profiler.record_drop(4)
    profiler.record(FrameTiming(5, {"capture": (200.0, 200.5)}, end_to_end_ms=500.0, dropped=True))
    s = profiler.summary()
    assert s.dropped == 3 and profiler.dropped == 3
    assert s.frames == 3 and profiler.frames == 3
    assert set(s.stages) == {"infer"}  # neither "drop" nor the dropped frame's capture
    assert s.end_to_end.max == pytest.approx(30.0)
    assert s.stages["infer"].mean == pytest.approx(20.0)
    kept = profiler.timings()
    assert [t.frame_index for t in kept] == [0, 1, 2, 3, 4, 5]
    assert [t.dropped for t in kept] == [False] * 3 + [True] * 3


def test_fps_from_synthetic_timestamps() -> None:
    profiler = Profiler()
    for i in range(10):  # a frame every 100 ms, each 100 ms long: 10 frames in 1.0 s
        t = 50.0 + i * 0.1
        profiler.record_stages(i, {"capture": (t, t + 0.02), "infer": (t + 0.02, t + 0.1)})
    s = profiler.summary()
    assert s.fps == pytest.approx(10.0, rel=1e-6)
    assert s.end_to_end.p50 == pytest.approx(100.0, abs=1e-6)


def test_end_argument_and_stage_order() -> None:
    profiler = Profiler()
    timing = profiler.record_stages(
        7,
        {"track": (1.030, 1.031), "infer": (1.010, 1.025), "capture": (1.000, 1.005)},
        end=1.040,
    )
    assert timing.end_to_end_ms == pytest.approx(40.0)
    assert timing.durations_ms()["infer"] == pytest.approx(15.0)
    s = profiler.summary()
    assert list(s.stages) == ["capture", "infer", "track"]  # STAGES order, then first-seen
    assert math.isnan(s.fps)  # fewer than 2 frames
    assert s.end_to_end.p50 == pytest.approx(40.0)


def test_empty_summary_is_nan_not_error() -> None:
    s = Profiler().summary()
    assert s.frames == 0 and s.dropped == 0 and s.stages == {}
    assert math.isnan(s.fps) and s.end_to_end.count == 0
    assert all(math.isnan(getattr(s.end_to_end, k)) for k in ("mean", "p50", "p90", "p99", "max", "min", "jitter"))
    assert "end-to-end" in s.table()


def test_reset() -> None:
    profiler = Profiler()
    _sequential(profiler, {"infer": [1.0, 2.0]})
    profiler.record_drop(2)
    profiler.reset()
    assert profiler.frames == 0 and profiler.dropped == 0 and profiler.timings() == []
    assert profiler.summary().frames == 0


def test_keep_trace_bounds_timings() -> None:
    profiler = Profiler(window=5, keep_trace=3)
    _sequential(profiler, {"infer": [1.0] * 8})
    assert [t.frame_index for t in profiler.timings()] == [5, 6, 7]
    assert Profiler(keep_trace=0).timings() == []


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"window": -3}, {"window": 2.5}, {"keep_trace": -1}])
def test_bad_arguments(kwargs: dict[str, object]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ConfigError, match=name):
        Profiler(**kwargs)  # type: ignore[arg-type]


def test_bad_stages_rejected() -> None:
    profiler = Profiler()
    with pytest.raises(ConfigError, match="at least one stage"):
        profiler.record_stages(0, {})
    with pytest.raises(ConfigError, match="'infer'"):
        profiler.record_stages(1, {"infer": (2.0, 1.0)})
    assert profiler.frames == 0


def test_thread_safety() -> None:
    profiler = Profiler(window=500)
    errors: list[BaseException] = []
    stop = threading.Event()
    summaries = [0]

    def producer(worker: int) -> None:
        try:
            for i in range(2000):
                t = worker * 1000.0 + i * 0.01
                profiler.record_stages(
                    worker * 2000 + i,
                    {"capture": (t, t + 0.001), "preprocess": (t + 0.001, t + 0.002), "infer": (t + 0.002, t + 0.008)},
                )
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    def reader() -> None:
        try:
            while not stop.is_set():
                s = profiler.summary()
                assert s.frames <= 500
                summaries[0] += 1
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    watcher = threading.Thread(target=reader)
    watcher.start()
    workers = [threading.Thread(target=producer, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    watcher.join()

    assert errors == []
    assert profiler.frames == 8000
    assert summaries[0] > 0
    s = profiler.summary()
    assert s.frames == 500
    assert s.stages["infer"].p50 == pytest.approx(6.0, abs=1e-3)
    assert len(profiler.timings()) == 8000


# --------------------------------------------------------------------------- output


def test_table_names_every_stage() -> None:
    profiler = Profiler()
    _sequential(profiler, {"capture": [1.0, 2.0], "preprocess": [1.0, 1.0], "infer": [5.0, 7.0], "postprocess": [1.0, 1.0], "track": [0.5, 0.5]})
    profiler.record_drop(2)
    text = profiler.summary().table()
    for name in (*STAGES, "track", "end-to-end"):
        assert name in text
    for column in ("p50", "p90", "p99", "max", "mean", "jitter"):
        assert column in text.splitlines()[0]
    assert "frames 2" in text and "dropped 1" in text
    assert str(profiler.summary()) == text
    infer_row = next(line for line in text.splitlines() if line.startswith("infer"))
    assert "6.00" in infer_row  # p50 of 5 and 7 ms
    widths = {len(line) for line in text.splitlines()[:-1]}
    assert len(widths) == 1  # aligned


def test_write_json_is_strict_and_round_trips(tmp_path: Path) -> None:
    profiler = Profiler()
    _sequential(profiler, {"infer": [4.0]})  # one frame: fps is NaN
    layers = [LayerTiming("conv", "Conv", 2, 3.0, 1.5, 1.0)]
    out = tmp_path / "sub" / "profile.json"
    write_json(profiler.summary(), out, layers=layers)
    data = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert data["frames"] == 1 and data["fps"] is None
    assert data["stages"]["infer"]["p50"] == pytest.approx(4.0)
    assert data["end_to_end"]["count"] == 1
    assert data["layers"][0] == {"name": "conv", "op": "Conv", "calls": 2, "total_ms": 3.0, "mean_ms": 1.5, "share": 1.0}
    assert Percentiles.of([1.0, 3.0]).to_json()["mean"] == 2.0


def test_chrome_trace(tmp_path: Path) -> None:
    profiler = Profiler()
    for i in range(5):
        t = 10.0 + i * 0.05
        profiler.record_stages(
            i, {"capture": (t, t + 0.002), "infer": (t + 0.003, t + 0.013), "postprocess": (t + 0.013, t + 0.015)}
        )
    profiler.record_drop(5)
    out = tmp_path / "trace.json"
    write_chrome_trace(profiler.timings(), out)
    data = json.loads(out.read_text())
    assert data["displayTimeUnit"] == "ms"
    events = data["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == 5 * 3
    names = {(e["tid"], e["args"]["name"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    tid_of = {name: tid for tid, name in names}
    assert set(tid_of) == {"capture", "infer", "postprocess", "drops"}
    assert len(set(tid_of.values())) == 4
    assert min(e["ts"] for e in complete) == 0
    assert all(e["pid"] == 1 for e in events)
    for e in complete:
        assert e["tid"] == tid_of[e["name"]]
    infer = sorted((e for e in complete if e["name"] == "infer"), key=lambda e: e["args"]["frame"])
    assert [e["args"]["frame"] for e in infer] == [0, 1, 2, 3, 4]
    assert all(e["dur"] == pytest.approx(10_000, abs=0.01) for e in infer)  # 10 ms in µs
    assert infer[1]["ts"] == pytest.approx(53_000, abs=0.01)  # 50 ms + 3 ms after the first capture
    drops = [e for e in events if e["ph"] == "i"]
    assert len(drops) == 1 and drops[0]["tid"] == tid_of["drops"] and drops[0]["args"] == {"frame": 5}


# --------------------------------------------------------------------------- ONNX Runtime layers


def _conv_relu_model(path: Path) -> None:
    """Conv + Relu that survive ORT's optimisations under their own names.

    The weight is a graph input (not a constant, so no NCHWc layout rewrite)
    and the Conv output is also a graph output (so Conv+Relu is not fused).
    """
    onnx = pytest.importorskip("onnx", reason="building the test graph needs onnx (the build extra)")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="my_conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"], name="my_relu"),
        ],
        "conv_relu",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 3, 3, 3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 32]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 8, 32, 32]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_layer_timings_from_real_onnxruntime_profile(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

    model = tmp_path / "conv_relu.onnx"
    _conv_relu_model(model)
    runs = 5
    backend = OnnxRuntimeBackend(model, profile_dir=tmp_path, threads=1)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 3, 32, 32), dtype=np.float32), "w": rng.standard_normal((8, 3, 3, 3), dtype=np.float32)}
    for _ in range(runs):
        backend.infer(feeds, ["y"])
    profile = backend.end_profiling()
    backend.close()
    assert profile is not None and Path(profile).is_file()

    layers = layer_timings_from_onnxruntime(profile)
    by_name = {layer.name: layer for layer in layers}
    assert {"my_conv", "my_relu"} <= set(by_name)
    assert by_name["my_conv"].op == "Conv" and by_name["my_relu"].op == "Relu"
    assert by_name["my_conv"].calls == runs and by_name["my_relu"].calls == runs
    assert sum(layer.share for layer in layers) == pytest.approx(1.0, abs=1e-9)
    totals = [layer.total_ms for layer in layers]
    assert totals == sorted(totals, reverse=True) and totals[0] > 0
    for layer in layers:
        assert layer.mean_ms == pytest.approx(layer.total_ms / layer.calls)

    # the node durations are ORT's own: cross-check against the raw events (µs -> ms)
    raw = json.loads(Path(profile).read_text())
    conv_us = sum(e["dur"] for e in raw if e.get("cat") == "Node" and e["name"] == "my_conv_kernel_time")
    assert by_name["my_conv"].total_ms == pytest.approx(conv_us / 1e3)

    text = layers_table(layers)
    assert "my_conv" in text and "my_relu" in text and "Conv" in text and "share" in text.splitlines()[0]
    assert top_layers(layers, 1) == [layers[0]]


def test_layer_timings_aggregate_and_sort(tmp_path: Path) -> None:
    events = [
        {"cat": "Session", "name": "model_run", "dur": 999, "ph": "X", "args": {}},
        {"cat": "Node", "name": "a_kernel_time", "dur": 1000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "a_fence_before", "dur": 5, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "b_kernel_time", "dur": 500, "args": {"op_name": "Relu"}},
        {"cat": "Node", "name": "a_kernel_time", "dur": 2000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "c_kernel_time", "dur": 500, "args": {"op_name": "Add"}},
    ]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    layers = layer_timings_from_onnxruntime(path)
    assert [(t.name, t.op, t.calls) for t in layers] == [("a", "Conv", 2), ("b", "Relu", 1), ("c", "Add", 1)]
    assert layers[0].total_ms == pytest.approx(3.0) and layers[0].mean_ms == pytest.approx(1.5)
    assert [t.share for t in layers] == pytest.approx([0.75, 0.125, 0.125])
    assert [t.name for t in top_layers(layers, 2)] == ["a", "b"]
    text = layers_table(layers, 2)
    assert "1 more layer" in text and "12.5%" in text


def test_layer_timing_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="nope.json"):
        layer_timings_from_onnxruntime(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        layer_timings_from_onnxruntime(bad)
    with pytest.raises(ConfigError, match="n must be"):
        top_layers([], 0)


# --------------------------------------------------------------------------- plot


def test_plot_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plot() needs matplotlib (pip install matplotlib)")
    from PIL import Image

    profiler = Profiler()
    rng = np.random.default_rng(1)
    _sequential(profiler, {"capture": list(rng.uniform(1, 2, 60)), "infer": list(rng.uniform(5, 9, 60))})
    profiler.record_drop(60)
    out = tmp_path / "latency.png"
    plot(profiler.timings(), out, title="tiny")
    assert out.stat().st_size > 0
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size[0] > image.size[1] > 100


def _queued(profiler: Profiler, n: int, wait_ms: float) -> None:
    """Frames whose stages take 1 + 2 ms and that wait ``wait_ms`` in a queue between them."""
    for i in range(n):
        t = 10.0 * i
        capture = (t, t + 1e-3)
        infer = (t + (1 + wait_ms) * 1e-3, t + (3 + wait_ms) * 1e-3)
        profiler.record_stages(i, {"capture": capture, "infer": infer})


def test_plot_draws_queueing_as_its_own_band(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The end-to-end line sits on the stack: the time between stages is a labelled band."""
    pytest.importorskip("matplotlib", reason="plot() needs matplotlib (pip install matplotlib)")
    from matplotlib.figure import Figure

    from edgeseg.runtime.profiling import QUEUEING, timeline_bands

    profiler = Profiler()
    _queued(profiler, 5, wait_ms=600.0)
    timings = profiler.timings()
    names, bands = timeline_bands(timings)
    assert names == ["capture", "infer", QUEUEING] == ["capture", "infer", "queueing (end-to-end minus stages)"]
    assert bands.shape == (3, 5)
    np.testing.assert_allclose(bands[2], 600.0, rtol=1e-6)
    np.testing.assert_allclose(bands.sum(axis=0), [t.end_to_end_ms for t in timings], rtol=1e-9)

    drawn: list[Figure] = []
    real_savefig = Figure.savefig

    def savefig(self: Figure, *args: object, **kwargs: object) -> None:
        drawn.append(self)
        real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    for n in (5, 1):  # a stack plot, and the one-frame bar stack
        plot(timings[:n], tmp_path / f"q{n}.png")
        legend = drawn[-1].axes[1].get_legend()
        labels = [text.get_text() for text in legend.get_texts()]
        assert "end-to-end (capture to result)" in labels
        assert [label for label in labels if not label.startswith("end-to-end")] == ["capture", "infer", QUEUEING]


def test_plot_without_frames_is_config_error(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="plot() needs matplotlib (pip install matplotlib)")
    with pytest.raises(ConfigError, match="processed"):
        plot([], tmp_path / "x.png")


def test_plot_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    profiler = Profiler()
    _sequential(profiler, {"infer": [1.0, 2.0]})
    out = tmp_path / "latency.png"
    with pytest.raises(MissingDependencyError, match="pip install matplotlib"):
        plot(profiler.timings(), out)
    assert not out.exists()


def test_module_imports_no_matplotlib() -> None:
    import subprocess

    code = "import sys, edgeseg.runtime.profiling\nprint('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
