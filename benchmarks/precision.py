"""FP32 vs INT8 (cpu placement) vs INT8 (tensorrt placement) vs FP16 on CamVid val, on this CPU.

    python benchmarks/precision.py [--data ../shared/data] [--weights .bench/deeplabv3p_camvid.pth]
        [--train-minutes 12] [--calib-size 100] [--method entropy] [--runs 30]
        [--strict-agreement 0.995] [--json out.json]

1. A trained deeplabv3p-mobilenet_v2: the checkpoint of ``benchmarks/train_camvid.py``
   (trained from scratch on camvid/train within a time budget); trained here
   first when the file is missing.
2. Its FP32 bundle (``edgeseg.build``), then one calibration run
   (``calibration.quantize.collect_statistics``) over ``--calib-size`` frames
   of camvid/train picked by ``calibration.sets.load_calibration_set``, whose
   statistics give both Q/DQ placements; and the FP16 graph.
3. Every graph on all 101 camvid/val frames at the model's size (labels resized
   nearest, void ignored): mIoU, per-class IoU, pixel agreement with FP32.
4. CPU latency of each graph in ONNX Runtime (the runtime's backend, uint8
   frame in, mask out), timed alternately frame by frame in one process so the
   machine's noise falls on all alike; medians and ratios to FP32.
5. Mixed precision: each placement is also put through
   ``calibration.mixed.search_float_layers`` with the issue's target (agreement
   >= 99 %, mIoU drop <= 0.3 points), and the tensorrt placement once more with
   the stricter ``--strict-agreement``, to show which layers it keeps in float.

Targets (issue 3): INT8 (cpu placement) at least 1.6x faster than FP32; INT8
mIoU within 0.3 points of FP32 and agreement >= 99 % for both placements.
Prints a table to stderr and one JSON document to stdout.

    python benchmarks/precision.py --all [--size 256] [--calib-size 16] [--runs 20] [--models deeplabv3 unet]
        [--tensorrt] [--json out.json]

``--all`` (issue 14): every model of the zoo's registry, read at run time, with each
backbone its ``backbone`` option offers, FP32 vs INT8 (cpu placement; ``--tensorrt``
adds the tensorrt placement, which ONNX Runtime runs 2-4x slower than FP32). Each is
built with random weights (``torch.manual_seed(0)``) at ``--size`` x ``--size``
(default 256: the 14 models of the zoo took 20 minutes on 2 shared cores; the models'
default 512 has 4x the pixels), calibrated (minmax) on ``--calib-size`` camvid/train frames,
and timed alternately frame by frame in one process on camvid/val frames, as above.
Per model: FP32 and INT8 median ms, their ratio, INT8's share of the FLOPs, the
compute nodes left in float and the INT8 masks' agreement with FP32's (on random
weights, only a sanity check). Target: INT8 >= 1.6x FP32 for every model, never slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGET_SPEEDUP = 1.6
TARGET_MIOU_DROP = 0.3  # points
TARGET_AGREEMENT = 0.99
IGNORE_INDEX = 11  # CamVid void
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--weights", type=Path, default=REPO / ".bench" / "deeplabv3p_camvid.pth")
    parser.add_argument("--train-minutes", type=float, default=12.0, help="budget when training is needed")
    parser.add_argument("--calib-size", type=int, default=None, help="default 100 (--all: 16)")
    parser.add_argument("--method", choices=("minmax", "percentile", "entropy"), default=None,
                        help="default entropy (--all: minmax)")
    parser.add_argument("--runs", type=int, default=None, help="timed frames per graph, default 30 (--all: 20)")
    parser.add_argument("--strict-agreement", type=float, default=0.995,
                        help="extra mixed-precision run of the tensorrt placement at this agreement")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--all", action="store_true", help="every zoo model, FP32 vs INT8 (see above)")
    parser.add_argument("--size", type=int, default=256, help="--all: input height and width")
    parser.add_argument("--models", nargs="+", default=None,
                        help="--all: only these (a registry name, or name:backbone)")
    parser.add_argument("--tensorrt", action="store_true", help="--all: time the tensorrt placement too")
    args = parser.parse_args(argv)
    args.calib_size = args.calib_size or (16 if args.all else 100)
    args.method = args.method or ("minmax" if args.all else "entropy")
    args.runs = args.runs or (20 if args.all else 30)
    if args.runs < 20:
        parser.error("--runs must be >= 20 for a meaningful median")
    camvid = args.data / "camvid"
    for sub in ("train", "val", "valannot"):
        if not (camvid / sub).is_dir():
            parser.error(f"{camvid / sub} is missing (see ../shared/data/README.md)")
    if args.all:
        return run_all(args, camvid)

    import onnx
    import torch

    import edgeseg
    from calibration.fp16 import to_fp16
    from calibration.mixed import Evaluator, Target, search_float_layers
    from calibration.qdq_rules import check_tensorrt_qdq
    from calibration.quantize import collect_statistics, quantize, quantized_nodes
    from calibration.sets import load_calibration_set
    from converters.precision import load_eval_set
    torch.set_num_threads(os.cpu_count() or 1)
    if not args.weights.is_file():
        say(f"{args.weights} is missing: training for {args.train_minutes} minutes first")
        from benchmarks import train_camvid

        train_camvid.main(["--data", str(args.data), "--minutes", str(args.train_minutes),
                           "--out", str(args.weights)])
    checkpoint = torch.load(args.weights, map_location="cpu", weights_only=True)
    size = tuple(int(v) for v in checkpoint.get("input_size", (240, 320)))
    num_classes = int(checkpoint.get("num_classes", len(CAMVID_CLASSES)))
    classes = list(CAMVID_CLASSES) if num_classes == len(CAMVID_CLASSES) else None

    with tempfile.TemporaryDirectory(prefix="edgeseg-precision-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        say(f"building the fp32 bundle of deeplabv3p at {size[0]}x{size[1]}")
        bundle = edgeseg.build(
            "deeplabv3p", Path(tmp) / "camvid", classes=classes, num_classes=None if classes else num_classes,
            input_size=(size[0], size[1]), weights=args.weights, outputs=("mask", "logits"),
            samples=camvid / "val",
        )
        spec = bundle.manifest.input
        fp32 = onnx.load(str(bundle.graph("fp32")))

        say(f"calibration set: {args.calib_size} frames of {camvid / 'train'}")
        calib = load_calibration_set(camvid / "train", spec, size=args.calib_size, seed=0)
        start = time.perf_counter()
        stats = collect_statistics(fp32, calib.images, method=args.method)
        calib_seconds = time.perf_counter() - start
        say(f"{args.method} calibration over {len(calib)} frames took {calib_seconds:.1f} s")

        say("reading camvid/val with labels")
        val = load_eval_set(camvid / "val", spec, limit=10_000, labels=camvid / "valannot",
                            ignore_index=IGNORE_INDEX)
        evaluator = Evaluator.from_graph(fp32, val.images, labels=val.labels, ignore_index=IGNORE_INDEX)
        target = Target(TARGET_AGREEMENT, TARGET_MIOU_DROP)

        graphs: dict[str, Any] = {"fp32": fp32}
        notes: dict[str, Any] = {}
        graphs["fp16"], info16 = to_fp16(fp32)
        notes["fp16"] = {"kept_fp32_by_op": info16["kept_by_op"]}
        for placement in ("cpu", "tensorrt"):
            name = f"int8-{placement}"
            graphs[name] = quantize(fp32, stats, placement=placement)
            notes[name] = {"quantized_nodes": len(quantized_nodes(graphs[name]))}
            if placement == "tensorrt":
                report = check_tensorrt_qdq(graphs[name])
                notes[name]["tensorrt_rules_ok"] = report.ok
                notes[name]["violations"] = [str(v) for v in report.violations[:10]]
            say(f"mixed precision ({placement}) for agreement >= {TARGET_AGREEMENT:.0%}, "
                f"mIoU drop <= {TARGET_MIOU_DROP}")
            mixed = search_float_layers(fp32, stats, evaluator, target, placement=placement, say=say)
            notes[name]["mixed_precision"] = {"met": mixed.met, "kept_float": [s.node for s in mixed.kept_float]}
            if mixed.kept_float:
                graphs[f"{name}-mixed"] = mixed.model
        if args.strict_agreement:
            strict = Target(args.strict_agreement, TARGET_MIOU_DROP)
            say(f"mixed precision (tensorrt) for the stricter agreement >= {args.strict_agreement:.2%}")
            mixed = search_float_layers(fp32, stats, evaluator, strict, placement="tensorrt", say=say)
            name = f"int8-tensorrt-mixed@{args.strict_agreement:g}"
            graphs[name] = mixed.model
            notes[name] = {
                "mixed_precision": {
                    "met": mixed.met,
                    "kept_float": [
                        {"node": s.node, "op_type": s.op_type, "logit_error_alone": s.logit_error}
                        for s in mixed.kept_float
                    ],
                    "steps": mixed.steps,
                },
                "tensorrt_rules_ok": check_tensorrt_qdq(mixed.model).ok,
            }

        say(f"accuracy of {len(graphs)} graphs on {len(val.images)} val frames")
        results: dict[str, dict[str, Any]] = {}
        for name, graph in graphs.items():
            fig = evaluator.evaluate(graph)
            assert fig.miou is not None and fig.iou is not None
            results[name] = {
                "miou": fig.miou,
                "miou_drop_points": fig.miou_drop,
                "agreement": fig.agreement,
                "logit_error": fig.logit_error,
                "iou": dict(zip(bundle.manifest.classes, fig.iou, strict=True)),
                **notes.get(name, {}),
            }

        say(f"latency: {args.runs} frames per graph, alternating")
        times, _ = time_alternating(graphs, val.images, args.runs, Path(tmp))
        base = statistics.median(times["fp32"])
        for name in graphs:
            median = statistics.median(times[name])
            results[name]["latency_ms_median"] = median
            results[name]["speedup_vs_fp32"] = base / median

    cpu = results["int8-cpu"]
    verdict = {
        "int8_cpu_speedup": cpu["speedup_vs_fp32"],
        "int8_cpu_speedup_met": cpu["speedup_vs_fp32"] >= TARGET_SPEEDUP,
        **{
            f"{p}_accuracy_met": results[p]["miou_drop_points"] <= TARGET_MIOU_DROP
            and results[p]["agreement"] >= TARGET_AGREEMENT
            for p in ("int8-cpu", "int8-tensorrt")
        },
    }
    out = {
        "model": "deeplabv3p (mobilenet_v2)",
        "weights": {"file": str(args.weights), "val_miou_at_training": checkpoint.get("val_miou"),
                    "minutes": checkpoint.get("minutes")},
        "input_size": list(size),
        "calibration": {**calib.summary(), "method": args.method, "seconds": calib_seconds},
        "val_frames": len(val.images),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "targets": {"int8_cpu_speedup": TARGET_SPEEDUP, "max_miou_drop_points": TARGET_MIOU_DROP,
                    "min_agreement": TARGET_AGREEMENT},
        "results": results,
        "verdict": verdict,
    }
    print_table(results, bundle.manifest.classes)
    text = json.dumps(out, indent=2, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


def zoo_variants(specs: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, registry name, options) of every model of the registry, once with its default
    options and once more with each other value of its ``backbone`` option."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for spec in specs:
        out.append((spec.name, spec.name, {}))
        default = spec.options.get("backbone")
        if default is not None:
            out[-1] = (f"{spec.name}:{default}", spec.name, {})
            for backbone in spec.choices.get("backbone", ()):
                if backbone != default:
                    out.append((f"{spec.name}:{backbone}", spec.name, {"backbone": backbone}))
    return out


def run_all(args: argparse.Namespace, camvid: Path) -> int:
    """``--all``: every zoo model FP32 vs INT8, one table and one JSON document."""
    import torch

    from edgeseg.errors import EdgesegError
    from edgeseg.models.registry import list_models

    torch.set_num_threads(os.cpu_count() or 1)
    variants = zoo_variants(list_models())
    if args.models:
        wanted = set(args.models)
        variants = [v for v in variants if v[0] in wanted or v[1] in wanted]
    say(f"{len(variants)} models at {args.size}x{args.size}: {', '.join(v[0] for v in variants)}")
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for label, name, options in variants:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="edgeseg-precision-all-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                row = _bench_model(args, camvid, name, options, Path(tmp))
            except (EdgesegError, RuntimeError, ValueError, MemoryError) as err:  # report it, go on
                row = {"error": f"{type(err).__name__}: {err}"}
        row = {"model": label, "name": name, "options": options, **row, "seconds": time.perf_counter() - t0}
        rows.append(row)
        if "error" in row:
            say(f"{label}: failed: {row['error']}")
        else:
            say(f"{label}: fp32 {row['fp32_ms']:.1f} ms, int8 {row['int8_ms']:.1f} ms, "
                f"x{row['speedup']:.2f} ({row['seconds']:.0f} s)")
    measured = [r for r in rows if "error" not in r]
    out = {
        "settings": {"input_size": [args.size, args.size], "calib_size": args.calib_size, "method": args.method,
                     "runs": args.runs, "weights": "random (torch.manual_seed(0))", "placement": "cpu",
                     "threads": os.cpu_count()},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "target": {"int8_speedup": TARGET_SPEEDUP, "never_slower": True},
        "models": rows,
        "verdict": {
            "meet_target": [r["model"] for r in measured if r["speedup"] >= TARGET_SPEEDUP],
            "miss_target": [r["model"] for r in measured if r["speedup"] < TARGET_SPEEDUP],
            "slower_than_fp32": [r["model"] for r in measured if r["speedup"] < 1.0],
            "failed": [r["model"] for r in rows if "error" in r],
        },
        "seconds": time.perf_counter() - started,
    }
    print_all_table(rows)
    text = json.dumps(out, indent=2, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


def _bench_model(
    args: argparse.Namespace, camvid: Path, name: str, options: dict[str, Any], tmp: Path
) -> dict[str, Any]:
    import numpy as np
    import onnx
    import torch

    import edgeseg
    from calibration.flops import int8_share
    from calibration.quantize import collect_statistics, quantize
    from calibration.sets import load_calibration_set
    from converters.precision import load_eval_set

    torch.manual_seed(0)
    bundle = edgeseg.build(
        name, tmp / "model", num_classes=len(CAMVID_CLASSES), input_size=(args.size, args.size),
        options=options, outputs=("mask", "logits"), num_samples=1,
    )
    spec = bundle.manifest.input
    fp32 = onnx.load(str(bundle.graph("fp32")))
    calib = load_calibration_set(camvid / "train", spec, size=args.calib_size, seed=0)
    stats = collect_statistics(fp32, calib.images, method=args.method)
    graphs: dict[str, Any] = {"fp32": fp32, "int8-cpu": quantize(fp32, stats, placement="cpu")}
    if args.tensorrt:
        graphs["int8-tensorrt"] = quantize(fp32, stats, placement="tensorrt")
    share = int8_share(graphs["int8-cpu"], spec.size)
    frames = load_eval_set(camvid / "val", spec, limit=8).images
    times, masks = time_alternating(graphs, frames, args.runs, tmp)
    medians = {k: statistics.median(v) for k, v in times.items()}
    agreement = float(np.mean([np.mean(a == b) for a, b in zip(masks["fp32"], masks["int8-cpu"], strict=True)]))
    row: dict[str, Any] = {
        "fp32_ms": medians["fp32"],
        "int8_ms": medians["int8-cpu"],
        "speedup": medians["fp32"] / medians["int8-cpu"],
        "int8_flop_share": share.share,
        "gflops": share.flops / 1e9,
        "kept_float": [{"node": n.name, "op_type": n.op_type, "flops_share": n.flops / max(share.flops, 1)}
                       for n in share.float_nodes()],
        "agreement_with_fp32": agreement,
    }
    if args.tensorrt:
        row["int8_tensorrt_ms"] = medians["int8-tensorrt"]
        row["tensorrt_speedup"] = medians["fp32"] / medians["int8-tensorrt"]
    return row


def print_all_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'model':<30} {'fp32 ms':>8} {'int8 ms':>8} {'x fp32':>7} {'int8 FLOPs':>10} "
            f"{'agree':>7}  kept float")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<30} failed: {r['error'][:80]}")
            continue
        kept = r["kept_float"]
        names = ", ".join(f"{k['node']} ({k['op_type']})" for k in kept[:3]) + (" ..." if len(kept) > 3 else "")
        flag = "" if r["speedup"] >= TARGET_SPEEDUP else ("  < 1.0x!" if r["speedup"] < 1.0 else "  < 1.6x")
        lines.append(
            f"{r['model']:<30} {r['fp32_ms']:8.1f} {r['int8_ms']:8.1f} {r['speedup']:7.2f} "
            f"{100 * r['int8_flop_share']:9.1f}% {100 * r['agreement_with_fp32']:6.2f}%  "
            f"{len(kept)}{': ' + names if kept else ''}{flag}"
        )
    say("\n" + "\n".join(lines))


def time_alternating(
    graphs: dict[str, Any], images: Any, runs: int, folder: Path, warmup: int = 3
) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Latency of each graph in ONNX Runtime (the runtime's backend, uint8 frame in, mask out),
    timed alternately frame by frame in one process so the machine's noise falls on all alike.

    Returns each graph's ``runs`` times in ms (after ``warmup`` frames) and its masks of the
    first ``len(images)`` frames.
    """
    import onnx

    from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

    backends = {}
    for name, graph in graphs.items():
        path = folder / f"{name.replace('@', '_').replace('/', '_')}.onnx"
        onnx.save(graph, str(path))
        backends[name] = OnnxRuntimeBackend(path)
    times: dict[str, list[float]] = {name: [] for name in graphs}
    masks: dict[str, list[Any]] = {name: [] for name in graphs}
    frames = [images[i % len(images)][None] for i in range(runs + warmup)]
    try:
        for i, frame in enumerate(frames):
            for name, backend in backends.items():
                t0 = time.perf_counter()
                out = backend.infer({"image": frame}, ["mask"])
                if i >= warmup:
                    times[name].append(1000.0 * (time.perf_counter() - t0))
                if i < len(images):
                    masks[name].append(out["mask"])
    finally:
        for backend in backends.values():
            backend.close()
    return times, masks


def print_table(results: dict[str, dict[str, Any]], classes: Any) -> None:
    head = f"{'graph':<28} {'mIoU':>6} {'drop':>6} {'agree':>8} {'ms':>7} {'x fp32':>7}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(
            f"{name:<28} {100 * r['miou']:6.2f} {r['miou_drop_points']:6.2f} {100 * r['agreement']:7.3f}% "
            f"{r['latency_ms_median']:7.2f} {r['speedup_vs_fp32']:7.2f}"
        )
    lines.append("")
    lines.append(f"{'per-class IoU':<14}" + "".join(f"{name[:12]:>13}" for name in results))
    for c in classes:
        lines.append(f"{c[:14]:<14}" + "".join(f"{100 * r['iou'][c]:13.2f}" for r in results.values()))
    for name, r in results.items():
        kept = r.get("mixed_precision", {}).get("kept_float")
        if kept:
            names = [k["node"] if isinstance(k, dict) else k for k in kept]
            lines.append(f"{name}: kept in float: {', '.join(names)}")
    say("\n" + "\n".join(lines))


def say(message: str) -> None:
    print(f"[precision] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
