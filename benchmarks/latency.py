"""PyTorch eager vs the bundle in ONNX Runtime, on this CPU, side by side in one process.

    python benchmarks/latency.py [--model deeplabv3p] [--size 512x512] [--runs 30] [--json out.json]

Both sides run the whole frame pipeline: uint8 RGB frame in, uint8 class mask
out (PyTorch: tensor conversion, normalisation, forward, argmax; bundle:
``Segmenter(frame)``). The two are timed alternately, frame by frame, so the
machine's noise falls on both alike; medians and their ratio are reported.
Target (issue 2): the bundle at least 2x faster than PyTorch eager.
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

import numpy as np

TARGET_SPEEDUP = 2.0


def _parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deeplabv3p")
    parser.add_argument("--option", "-o", action="append", default=[], help="model option KEY=VALUE")
    parser.add_argument("--size", default="512x512", type=_parse_size)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.runs < 20:
        parser.error("--runs must be >= 20 for a meaningful median")

    import torch

    import edgeseg
    from converters.export import DeployWrapper, ExportSpec
    from edgeseg import models as zoo

    spec = zoo.get_spec(args.model)
    options = {k: zoo.parse_option(k, spec, v) for k, v in (o.split("=", 1) for o in args.option)}
    torch.manual_seed(0)
    model = zoo.create_model(args.model, num_classes=args.num_classes, **options).eval()

    with tempfile.TemporaryDirectory(prefix="edgeseg-bench-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        bundle = edgeseg.build(model, Path(tmp) / "bench", input_size=args.size,
                               num_classes=args.num_classes, num_samples=2)
        build_s = time.perf_counter() - t0

        wrapper = DeployWrapper(model, ExportSpec(input_size=args.size)).eval()

        def torch_pipeline(frame: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                mask, _, _ = wrapper(torch.from_numpy(frame)[None])
            return mask[0].numpy()

        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (*args.size, 3), dtype=np.uint8) for _ in range(4)]
        torch_ms: list[float] = []
        bundle_ms: list[float] = []
        agree: list[float] = []
        with edgeseg.Segmenter(bundle.path) as seg:
            for i in range(args.warmup + args.runs):
                frame = frames[i % len(frames)]
                t = time.perf_counter()
                ref = torch_pipeline(frame)
                t_torch = (time.perf_counter() - t) * 1e3
                t = time.perf_counter()
                got = seg(frame).mask
                t_bundle = (time.perf_counter() - t) * 1e3
                if i >= args.warmup:
                    torch_ms.append(t_torch)
                    bundle_ms.append(t_bundle)
                    agree.append(float((ref == got).mean()))
            backend = seg.backend_name

    torch_med, bundle_med = statistics.median(torch_ms), statistics.median(bundle_ms)
    result = {
        "benchmark": "latency",
        "model": args.model,
        "options": {**spec.options, **options},
        "input_size": list(args.size),
        "num_classes": args.num_classes,
        "runs": args.runs,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch_threads": torch.get_num_threads()},
        "versions": bundle.manifest.versions,
        "build_seconds": round(build_s, 1),
        "pytorch_eager_ms": {"median": torch_med, "p10": float(np.percentile(torch_ms, 10)),
                             "p90": float(np.percentile(torch_ms, 90))},
        "bundle_ms": {"backend": backend, "median": bundle_med, "p10": float(np.percentile(bundle_ms, 10)),
                      "p90": float(np.percentile(bundle_ms, 90))},
        "speedup": torch_med / bundle_med,
        "target_speedup": TARGET_SPEEDUP,
        "target_met": torch_med / bundle_med >= TARGET_SPEEDUP,
        "mask_agreement": float(np.mean(agree)),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    size = "x".join(map(str, args.size))
    print()
    print(f"| {args.model} {size}, {args.runs} runs | median ms | p10 | p90 |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| PyTorch eager | {torch_med:.1f} | {result['pytorch_eager_ms']['p10']:.1f} | {result['pytorch_eager_ms']['p90']:.1f} |")
    print(f"| bundle ({backend}) | {bundle_med:.1f} | {result['bundle_ms']['p10']:.1f} | {result['bundle_ms']['p90']:.1f} |")
    print(f"| speedup | {result['speedup']:.2f}x | target {TARGET_SPEEDUP:.1f}x | {'met' if result['target_met'] else 'MISSED'} |")
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
