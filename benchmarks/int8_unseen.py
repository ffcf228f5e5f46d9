"""Does an INT8 accuracy target decided on some frames hold on frames the decision never saw?

    python benchmarks/int8_unseen.py [--data ../shared/data]
        [--weights .bench/deeplabv3p_camvid.pth .bench/deeplabv3_mbv3_camvid.pth]
        [--calib-size 100] [--frames 16 32] [--placements cpu tensorrt] [--json out.json]

For each checkpoint of ``benchmarks/train_camvid.py`` (trained on camvid/train):

1. Its FP32 bundle at the training size; one calibration (entropy) over
   ``--calib-size`` frames of camvid/train.
2. The decision: the mixed-precision search (``calibration.mixed.search_float_layers``,
   what ``edgeseg build --precision int8`` runs) with the issue's target,
   agreement >= 99 % and mIoU drop <= 0.3 points, judged on N labelled frames of
   camvid/train that calibration did not use. Once on the figures themselves
   (``--confidence 0``, how builds were judged before) and once on the 95 %
   bootstrap bounds (the default now).
3. The outcome: the chosen graph on all 101 camvid/val frames, which took no part
   in training, calibration or the decision: pixel agreement with FP32 and the
   mIoU drop.

The target "holds on unseen frames" when the val figures meet it. Prints a table
to stderr and one JSON document to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MIN_AGREEMENT = 0.99
MAX_MIOU_DROP = 0.3  # points
CONFIDENCE = 0.95
IGNORE_INDEX = 11  # CamVid void


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--weights", type=Path, nargs="+",
                        default=[REPO / ".bench" / "deeplabv3p_camvid.pth",
                                 REPO / ".bench" / "deeplabv3_mbv3_camvid.pth"])
    parser.add_argument("--calib-size", type=int, default=100)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32],
                        help="labelled train frames the decision is judged on")
    parser.add_argument("--placements", nargs="+", choices=("cpu", "tensorrt"), default=["cpu", "tensorrt"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    camvid = args.data / "camvid"
    for sub in ("train", "trainannot", "val", "valannot"):
        if not (camvid / sub).is_dir():
            parser.error(f"{camvid / sub} is missing (see ../shared/data/README.md)")
    missing = [str(w) for w in args.weights if not w.is_file()]
    if missing:
        parser.error(f"missing checkpoint(s) {', '.join(missing)}: train them with benchmarks/train_camvid.py")

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgeseg-unseen-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for weights in args.weights:
            rows.extend(run_model(weights, camvid, Path(tmp), args))
    print_table(rows)
    out = {
        "target": {"min_agreement": MIN_AGREEMENT, "max_miou_drop_points": MAX_MIOU_DROP,
                   "confidence": CONFIDENCE},
        "calib_size": args.calib_size,
        "rows": rows,
    }
    text = json.dumps(out, indent=2, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


def run_model(weights: Path, camvid: Path, tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    import onnx
    import torch

    import edgeseg
    from calibration.flops import int8_share
    from calibration.mixed import Evaluator, Target, search_float_layers
    from calibration.quantize import collect_statistics, quantized_nodes
    from calibration.sets import load_calibration_set
    from converters.precision import load_eval_set

    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    arch = str(checkpoint.get("arch", "deeplabv3p"))
    options = dict(checkpoint.get("options") or {})
    size = tuple(int(v) for v in checkpoint.get("input_size", (240, 320)))
    name = arch + "".join(f" {k}={v}" for k, v in options.items())
    say(f"{name}: fp32 bundle at {size[0]}x{size[1]} from {weights}")
    bundle = edgeseg.build(
        arch, tmp / weights.stem, num_classes=int(checkpoint["num_classes"]), input_size=size,
        weights=weights, options=options or None, outputs=("mask", "logits"), samples=camvid / "val",
        target="cpu",
    )
    spec = bundle.manifest.input
    fp32 = onnx.load(str(bundle.graph("fp32")))

    calib = load_calibration_set(camvid / "train", spec, size=args.calib_size, seed=0)
    used = {Path(p).name for p in calib.picked}
    start = time.perf_counter()
    stats = collect_statistics(fp32, calib.images, method="entropy")
    say(f"{name}: entropy calibration over {len(calib.images)} train frames in {time.perf_counter() - start:.0f} s")

    rest = tmp / f"{weights.stem}-decision"  # the train frames calibration did not use, with labels
    (rest / "images").mkdir(parents=True)
    (rest / "labels").mkdir()
    for frame in sorted((camvid / "train").glob("*.png")):
        if frame.name not in used and (camvid / "trainannot" / frame.name).is_file():
            (rest / "images" / frame.name).symlink_to(frame)
            (rest / "labels" / frame.name).symlink_to(camvid / "trainannot" / frame.name)

    val = load_eval_set(camvid / "val", spec, limit=10_000, labels=camvid / "valannot", ignore_index=IGNORE_INDEX)
    on_val = Evaluator.from_graph(fp32, val.images, labels=val.labels, ignore_index=IGNORE_INDEX)
    rows = []
    for n in args.frames:
        decide = load_eval_set(rest / "images", spec, limit=n, labels=rest / "labels", ignore_index=IGNORE_INDEX)
        assert not {Path(p).name for p in decide.names} & used, "decision frames overlap calibration"
        for confidence in (None, CONFIDENCE):
            evaluator = Evaluator.from_graph(
                fp32, decide.images, labels=decide.labels, ignore_index=IGNORE_INDEX, confidence=confidence
            )
            target = Target(MIN_AGREEMENT, MAX_MIOU_DROP, confidence)
            for placement in args.placements:
                start = time.perf_counter()
                mixed = search_float_layers(fp32, stats, evaluator, target, placement=placement)
                seconds = time.perf_counter() - start
                seen = mixed.figures
                unseen = on_val.evaluate(mixed.model)
                assert unseen.miou_drop is not None
                row = {
                    "model": name,
                    "placement": placement,
                    "decision_frames": len(decide.images),
                    "confidence": confidence,
                    "met_on_decision_frames": mixed.met,
                    "kept_float": len(mixed.kept_float),
                    "quantized_nodes": len(quantized_nodes(mixed.model)),
                    "int8_share": int8_share(mixed.model, size).share,
                    "decision": {"agreement": seen.agreement, "agreement_low": seen.agreement_low,
                                 "miou_drop": seen.miou_drop, "miou_drop_high": seen.miou_drop_high},
                    "val": {"agreement": unseen.agreement, "miou_drop": unseen.miou_drop,
                            "frames": len(val.images)},
                    "holds_on_val": unseen.agreement >= MIN_AGREEMENT and unseen.miou_drop <= MAX_MIOU_DROP,
                    "search_seconds": seconds,
                }
                say(f"{name} {placement} N={n} confidence={confidence}: kept {row['kept_float']} in float; "
                    f"val agreement {unseen.agreement:.4%}, drop {unseen.miou_drop:.2f}")
                rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'model':<40} {'place':<8} {'N':>3} {'margin':>6} {'float':>5} {'dec agree':>9} "
            f"{'dec low':>8} {'int8':>6} {'val agree':>9} {'val drop':>8} {'holds':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        d, v = r["decision"], r["val"]
        low = f"{100 * d['agreement_low']:7.3f}%" if d["agreement_low"] is not None else f"{'-':>8}"
        lines.append(
            f"{r['model'][:40]:<40} {r['placement']:<8} {r['decision_frames']:>3} "
            f"{'95%' if r['confidence'] else 'none':>6} {r['kept_float']:>5} {100 * d['agreement']:8.3f}% {low} "
            f"{100 * r['int8_share']:5.1f}% "
            f"{100 * v['agreement']:8.3f}% {v['miou_drop']:8.2f} {'yes' if r['holds_on_val'] else 'NO':>5}"
        )
    say("\n" + "\n".join(lines))


def say(message: str) -> None:
    print(f"[int8-unseen] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
