"""Streaming runtime on this CPU: throughput, overhead, memory over a long run, drop policies.

    python benchmarks/streaming.py [--data ../shared/data] [--frames 60] [--soak-frames 5000] [--json out.json]

Source: a CamVid sequence (val/ sorted by name: consecutive frames of one drive).
Bundle: deeplabv3p-mobilenet_v2 at 512x512 (ONNX Runtime CPU backend); the soak
uses the same model at --soak-size so that 5,000 frames fit in minutes.

Measured side by side in one process, medians:
1. each stage alone (capture = PNG decode, preprocess, infer, postprocess):
   the slowest stage bounds the pipeline's rate; their sum is the sequential rate;
2. the pipeline's throughput with drop="none" over the sequence (median of
   --passes, alternated with a pass whose light stages run at nice 10);
3. runtime overhead per frame: everything the runtime does besides the
   backend's inference (preprocess + postprocess), as a share of inference;
4. resident memory and threads over --soak-frames frames after warm-up;
5. a slow consumer (1.5x the inference time per result) with a live source
   at 30 fps: drop="oldest" vs drop="none", end-to-end latency p50/p99.
Targets (issue 5): throughput >= 0.9x the slowest-stage bound and above the
sequential rate; overhead <= 5 %; memory growth < 2 %; bounded latency with
drop="oldest" while drop="none" processes every frame.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--soak-frames", type=int, default=5000)
    parser.add_argument("--soak-size", type=int, default=128)
    parser.add_argument("--passes", type=int, default=3, help="pipeline passes (median)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import edgeseg
    from edgeseg.runtime.image import NearestResizer, prepare
    from edgeseg.runtime.sources import list_images, read_image

    val = args.data / "camvid" / "val"
    files = list_images(val)[: args.frames]
    if len(files) < 10:
        print(f"CamVid val not found at {val} (need >= 10 frames)", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="edgeseg-stream-bench-"))
    bundle = edgeseg.build("deeplabv3p", tmp / "b512", num_classes=11, input_size=(512, 512), num_samples=1).path
    small = edgeseg.build("deeplabv3p", tmp / "bsmall", num_classes=11,
                          input_size=(args.soak_size, args.soak_size), num_samples=1).path
    result: dict[str, object] = {"benchmark": "streaming", "frames": len(files), "cpu_count": os.cpu_count()}

    with edgeseg.Segmenter(bundle) as seg:
        backend = seg._require_open()
        spec = seg.manifest.input
        resize = NearestResizer()
        # 1. every stage alone
        cap, pre, inf, post = [], [], [], []
        frames = []
        for f in files:
            t = time.perf_counter()
            frame = read_image(f)
            cap.append(time.perf_counter() - t)
            frames.append(frame)
        inputs = []
        for frame in frames:
            t = time.perf_counter()
            inputs.append(prepare(frame, spec))
            pre.append(time.perf_counter() - t)
        backend.infer({"image": inputs[0]}, ["mask"])  # warm-up
        masks = []
        for image in inputs:
            t = time.perf_counter()
            masks.append(backend.infer({"image": image}, ["mask"])["mask"])
            inf.append(time.perf_counter() - t)
        for mask, frame in zip(masks, frames, strict=True):
            t = time.perf_counter()
            resize(mask[0], frame.shape[:2])
            post.append(time.perf_counter() - t)
        # 2. the pipeline, every frame; also with the light stages at inference's priority
        list(seg.stream(files[:5]))  # warm-up
        runs: dict[int, list[float]] = {0: [], 10: []}
        for _ in range(args.passes):  # alternated, so the machine's noise falls on all alike
            for image in inputs:  # the bottleneck stage alone again, between pipeline passes
                t = time.perf_counter()
                backend.infer({"image": image}, ["mask"])
                inf.append(time.perf_counter() - t)
            for nice in runs:
                t = time.perf_counter()
                n = sum(1 for r in seg.stream(val, max_frames=len(files), nice=nice) if r.error is None)
                runs[nice].append(n / (time.perf_counter() - t))
        fps_by_nice = {nice: statistics.median(v) for nice, v in runs.items()}
        pipeline_fps = fps_by_nice[0]
        stages = {"capture": median_ms(cap), "preprocess": median_ms(pre), "infer": median_ms(inf),
                  "postprocess": median_ms(post)}
        bound_fps = 1e3 / max(stages.values())
        sequential_fps = 1e3 / sum(stages.values())
        # 3. overhead per frame: what the runtime adds around inference
        overhead_share = (stages["preprocess"] + stages["postprocess"]) / stages["infer"]
        result["stages_ms"] = stages
        result["throughput"] = {
            "pipeline_fps": pipeline_fps,
            "slowest_stage_bound_fps": bound_fps,
            "sequential_fps": sequential_fps,
            "ratio_to_bound": pipeline_fps / bound_fps,
            "target_ratio_to_bound": 0.9,
            "above_sequential": pipeline_fps > sequential_fps,
            "pipeline_fps_runs": runs[0],
            "pipeline_fps_light_stages_nice10": fps_by_nice[10],
        }
        result["overhead"] = {"share_of_inference": overhead_share, "target": 0.05}

        # 5. slow consumer, live 30 fps source
        def camera(n: int) -> Iterator[np.ndarray]:
            for i in range(n):
                time.sleep(1 / 30)
                yield frames[i % len(frames)]

        slow = 1.5 * stages["infer"] / 1e3
        policies = {}
        for drop in ("oldest", "none"):
            lat, got = [], 0
            with seg.stream(camera(len(frames)), drop=drop) as s:
                for r in s:
                    time.sleep(slow)
                    lat.append(r.latency_ms)
                    got += 1
            policies[drop] = {"processed": got, "dropped": s.dropped, "latency_p50_ms": float(np.percentile(lat, 50)),
                              "latency_p99_ms": float(np.percentile(lat, 99)), "latency_max_ms": float(max(lat))}
        result["slow_consumer"] = {"consumer_ms": slow * 1e3, "source_fps": 30, "frames": len(frames), **policies}

    # 4. soak: memory and threads over many frames
    with edgeseg.Segmenter(small) as seg:
        threads_before = threading.active_count()
        def forever() -> Iterator[np.ndarray]:
            for i in range(args.soak_frames):
                yield frames[i % len(frames)]
        rss = []
        t = time.perf_counter()
        for r in seg.stream(forever()):
            if r.frame_index in (200, args.soak_frames - 1):
                rss.append(rss_mb())
        soak_s = time.perf_counter() - t
        time.sleep(0.2)
        threads_after = threading.active_count()
    growth = (rss[-1] - rss[0]) / rss[0] if len(rss) == 2 else float("nan")
    result["soak"] = {"frames": args.soak_frames, "size": args.soak_size, "seconds": soak_s,
                      "rss_after_warmup_mb": rss[0], "rss_end_mb": rss[-1], "growth": growth, "target_growth": 0.02,
                      "threads_before": threads_before, "threads_after": threads_after}

    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    tp, ov, so, sc = result["throughput"], result["overhead"], result["soak"], result["slow_consumer"]
    print()
    print("| measure | value | target |")
    print("| --- | ---: | --- |")
    for name, ms in stages.items():
        print(f"| {name} alone (median) | {ms:.1f} ms | |")
    print(f"| pipeline throughput | {tp['pipeline_fps']:.2f} fps | >= 0.9 x {tp['slowest_stage_bound_fps']:.2f} "
          f"(ratio {tp['ratio_to_bound']:.2f}), > sequential {tp['sequential_fps']:.2f} |")
    print(f"| pipeline, light stages at nice 10 | {tp['pipeline_fps_light_stages_nice10']:.2f} fps | (comparison) |")
    print(f"| runtime overhead | {100 * ov['share_of_inference']:.2f} % of inference | <= 5 % |")
    print(f"| RSS growth over {so['frames']} frames | {100 * so['growth']:.2f} % ({so['rss_after_warmup_mb']:.0f} -> "
          f"{so['rss_end_mb']:.0f} MB) | < 2 % |")
    print(f"| threads before/after | {so['threads_before']}/{so['threads_after']} | equal |")
    for drop in ("oldest", "none"):
        p = sc[drop]
        print(f"| slow consumer, drop={drop} | p99 {p['latency_p99_ms']:.0f} ms, processed {p['processed']}/"
              f"{sc['frames']}, dropped {p['dropped']} | {'bounded' if drop == 'oldest' else 'every frame'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
