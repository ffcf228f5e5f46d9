"""edgeseg's CRF graph (ONNX Runtime, CPU) against pydensecrf2 on CamVid val, side by side.

    python benchmarks/crf.py [--data ../shared/data] [--limit N] [--json out.json]

1. Quality with synthetic unaries made from the real labels: labels
   down-sampled 8x (nearest), 20 % of the coarse labels replaced at random,
   up-sampled back; unary probability 0.7 on that label, the rest spread
   evenly (void pixels uniform). mIoU (void ignored) of the unaries alone, of
   pydensecrf2, and of edgeseg's CRF, both with the same kernel settings
   (edgeseg's defaults, DeepLab v2's published ones) and 5 iterations.
2. Latency at 480x360, 5 iterations: the two timed alternately on each
   frame; medians and their ratio.
3. Quality on a trained model's real logits: the DeepLabV3+ checkpoint that
   benchmarks/train_camvid.py writes (--weights), run in PyTorch at 352x480
   and its logits resized to 360x480; mIoU before and after each CRF (both
   with the same settings as in 1). Reported as not measured without it.
Targets (issue 6): edgeseg's mIoU gain >= pydensecrf2's; >= 10x faster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 11  # CamVid; label 11 is void


def synthetic_unary(label: np.ndarray, rng: np.random.Generator, *, factor: int = 8, noise: float = 0.2,
                    prob: float = 0.7) -> np.ndarray:
    """(C, H, W) float32 logits (log-probabilities) from a label map, coarsened and corrupted."""
    h, w = label.shape
    coarse = label[::factor, ::factor].copy()
    flip = rng.random(coarse.shape) < noise
    coarse[flip] = rng.integers(0, NUM_CLASSES, int(flip.sum()))
    up = np.repeat(np.repeat(coarse, factor, 0), factor, 1)[:h, :w]
    probs = np.full((NUM_CLASSES, h, w), (1 - prob) / (NUM_CLASSES - 1), np.float32)
    for c in range(NUM_CLASSES):
        probs[c][up == c] = prob
    probs[:, up >= NUM_CLASSES] = 1.0 / NUM_CLASSES
    return np.log(probs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--limit", type=int, default=None, help="use the first N val frames")
    parser.add_argument("--weights", type=Path, default=REPO / ".bench" / "deeplabv3p_camvid.pth",
                        help="checkpoint of benchmarks/train_camvid.py, for the real-logits comparison")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        print("needs pydensecrf2: pip install cython && pip install --no-build-isolation pydensecrf2", file=sys.stderr)
        return 2
    from PIL import Image

    from converters.crf import CRFParams, crf_graph
    from edgeseg.metrics import confusion_matrix, iou_per_class, mean_iou
    from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgeseg.runtime.sources import list_images, read_image

    val, annot = args.data / "camvid" / "val", args.data / "camvid" / "valannot"
    files = list_images(val)[: args.limit]
    if not files:
        print(f"CamVid val not found at {val}", file=sys.stderr)
        return 2
    params = CRFParams()
    h, w = read_image(files[0]).shape[:2]
    tmp = Path(tempfile.mkdtemp(prefix="edgeseg-bench-crf-"))
    graph = tmp / "crf.onnx"
    graph.write_bytes(crf_graph(params, NUM_CLASSES, height=h, width=w).SerializeToString())

    def pydensecrf(image: np.ndarray, logits: np.ndarray) -> np.ndarray:
        dense = dcrf.DenseCRF2D(w, h, NUM_CLASSES)
        dense.setUnaryEnergy(np.ascontiguousarray(-logits.reshape(NUM_CLASSES, -1)))
        dense.addPairwiseGaussian(sxy=params.theta_gamma, compat=params.w_gaussian)
        dense.addPairwiseBilateral(sxy=params.theta_alpha, srgb=params.theta_beta, rgbim=image,
                                   compat=params.w_bilateral)
        return np.array(dense.inference(params.iterations)).reshape(NUM_CLASSES, h, w).argmax(0)
    rng = np.random.default_rng(0)
    cms = {k: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64) for k in ("unary", "pydensecrf2", "edgeseg")}
    times: dict[str, list[float]] = {"pydensecrf2": [], "edgeseg": []}
    with OnnxRuntimeBackend(graph) as crf:
        for i, file in enumerate(files):
            image = np.array(read_image(file))
            label = np.asarray(Image.open(annot / file.name))
            logits = synthetic_unary(label, rng)
            cms["unary"] += confusion_matrix(logits.argmax(0), label, NUM_CLASSES, ignore_index=11)
            if i == 0:  # warm-up of the ORT session
                crf.infer({"image": image[None], "logits": logits[None]}, ["mask"])
            t = time.perf_counter()
            theirs = pydensecrf(image, logits)
            times["pydensecrf2"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ours = crf.infer({"image": image[None], "logits": logits[None]}, ["mask"])["mask"][0]
            times["edgeseg"].append(time.perf_counter() - t)
            cms["pydensecrf2"] += confusion_matrix(theirs, label, NUM_CLASSES, ignore_index=11)
            cms["edgeseg"] += confusion_matrix(ours, label, NUM_CLASSES, ignore_index=11)
        real = _real_logits(args.weights, files, annot, crf, pydensecrf, (h, w)) if args.weights.is_file() else None
    miou = {k: 100 * mean_iou(cm) for k, cm in cms.items()}
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    result = {
        "benchmark": "crf",
        "images": len(files),
        "size": [h, w],
        "params": params.to_json(),
        "synthetic_unaries": {
            "miou": miou,
            "gain_points": {k: miou[k] - miou["unary"] for k in ("pydensecrf2", "edgeseg")},
            "iou_per_class": {k: [None if np.isnan(v) else 100 * float(v) for v in iou_per_class(cm)]
                              for k, cm in cms.items()},
        },
        "latency_ms": {k: {"median": med[k], "p90": float(np.percentile(v, 90)) * 1e3} for k, v in times.items()},
        "speedup": med["pydensecrf2"] / med["edgeseg"],
        "targets": {"gain_at_least_pydensecrf2": miou["edgeseg"] >= miou["pydensecrf2"], "speedup_10x": med["pydensecrf2"] / med["edgeseg"] >= 10},
        "real_logits": real or f"not measured: no checkpoint at {args.weights} (run benchmarks/train_camvid.py)",
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print()
    print(f"| CamVid val, {len(files)} frames, {w}x{h} | mIoU | gain (points) | latency median |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| synthetic unaries | {miou['unary']:.2f} | | |")
    print(f"| pydensecrf2 | {miou['pydensecrf2']:.2f} | {miou['pydensecrf2'] - miou['unary']:+.2f} | {med['pydensecrf2']:.1f} ms |")
    print(f"| edgeseg CRF (ORT) | {miou['edgeseg']:.2f} | {miou['edgeseg'] - miou['unary']:+.2f} | {med['edgeseg']:.1f} ms |")
    print(f"| speedup | | | {result['speedup']:.1f}x (target 10x) |")
    if real:
        m = real["miou"]
        print()
        print(f"| trained DeepLabV3+ logits ({real['checkpoint']}) | mIoU | gain (points) |")
        print("| --- | ---: | ---: |")
        print(f"| model alone | {m['model']:.2f} | |")
        for k in ("pydensecrf2", "edgeseg"):
            print(f"| + {k} | {m[k]:.2f} | {m[k] - m['model']:+.2f} |")
    return 0


def _real_logits(weights: Path, files: list[Path], annot: Path, crf: Any, pydensecrf: Any,
                 size: tuple[int, int]) -> dict[str, Any]:
    """mIoU of a trained model's masks before and after each CRF."""
    import torch
    from PIL import Image

    from converters.export import DeployWrapper, ExportSpec
    from edgeseg import models as zoo
    from edgeseg.metrics import confusion_matrix, mean_iou
    from edgeseg.runtime.image import resize_image
    from edgeseg.runtime.sources import read_image

    model = zoo.create_model("deeplabv3p", num_classes=NUM_CLASSES)
    zoo.load_weights(model, weights)
    model_size = (size[0] // 16 * 16, size[1] // 16 * 16)  # 352x480: the model needs multiples of 16
    wrapper = DeployWrapper(model.eval(), ExportSpec(input_size=model_size)).eval()
    cms = {k: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64) for k in ("model", "pydensecrf2", "edgeseg")}
    for file in files:
        image = np.array(read_image(file))
        label = np.asarray(Image.open(annot / file.name))
        with torch.no_grad():
            logits = wrapper(torch.from_numpy(resize_image(image, model_size))[None])[2]
            logits = torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        logits_np = np.ascontiguousarray(logits[0].numpy())
        cms["model"] += confusion_matrix(logits_np.argmax(0), label, NUM_CLASSES, ignore_index=11)
        log_probs = logits_np - np.log(np.exp(logits_np - logits_np.max(0)).sum(0)) - logits_np.max(0)
        cms["pydensecrf2"] += confusion_matrix(pydensecrf(image, log_probs), label, NUM_CLASSES, ignore_index=11)
        ours = crf.infer({"image": image[None], "logits": logits_np[None]}, ["mask"])["mask"][0]
        cms["edgeseg"] += confusion_matrix(ours, label, NUM_CLASSES, ignore_index=11)
    return {"checkpoint": str(weights), "images": len(files), "miou": {k: 100 * mean_iou(cm) for k, cm in cms.items()}}


if __name__ == "__main__":
    sys.exit(main())
