"""The models that used to ship float graphs labelled int8, through today's INT8 build.

    python benchmarks/int8_floor.py [--data ../shared/data] [--calib-size 48] [--size 224x320]
        [--placement cpu|tensorrt] [--json out.json]

Issue 14 found segmentation_models_pytorch's Unet-ResNet34 (67 of 73 layers
kept float) and torchvision's LR-ASPP (86 of 87) building "int8" bundles with
no quantized node at all. Each is built here with random weights (no
pretrained weights offline), ``precision="int8"``, calibrated on CamVid train
frames, with the default target and INT8 floor. Each must either quantize for
real (the share of its FLOPs in INT8 at or above the floor) or be refused with
the figures. segmentation_models_pytorch is optional (``pip install
segmentation-models-pytorch``); without it that row says so.
Prints a table to stderr and JSON to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--calib-size", type=int, default=48)
    parser.add_argument("--size", default="224x320", help="HxW, multiples of 32")
    parser.add_argument("--placement", choices=("cpu", "tensorrt"), default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    calib = args.data / "camvid" / "train"
    if not calib.is_dir():
        parser.error(f"{calib} is missing (see ../shared/data/README.md)")
    h, _, w = args.size.partition("x")
    size = (int(h), int(w))

    import torch
    import torchvision

    import edgeseg
    from edgeseg.errors import ParityError

    def smp_unet() -> Any:
        import segmentation_models_pytorch as smp

        return smp.Unet("resnet34", encoder_weights=None, classes=11)

    def lraspp() -> Any:
        return torchvision.models.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=11
        )

    rows = []
    for name, make in (("smp Unet-ResNet34", smp_unet), ("torchvision LR-ASPP", lraspp)):
        torch.manual_seed(0)
        try:
            model = make().eval()
        except ImportError as err:
            rows.append({"model": name, "outcome": "not run", "why": str(err)})
            continue
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                bundle = edgeseg.build(
                    model, Path(tmp) / "b.edgeseg", num_classes=11, input_size=size, precision="int8",
                    calib=calib, calib_size=args.calib_size, target="cpu", placement=args.placement,
                )
            except ParityError as err:
                rows.append({"model": name, "outcome": "refused", "message": str(err),
                             "seconds": time.perf_counter() - start})
                continue
        info = bundle.manifest.precisions["int8"]
        quant, parity = info.quantization, info.parity
        assert quant is not None and parity is not None and quant.int8_share is not None
        rows.append({
            "model": name, "outcome": "built", "int8_share": quant.int8_share.share,
            "kept_float": len(quant.kept_float), "quantized_nodes": quant.quantized_nodes,
            "agreement": parity.agreement, "agreement_low": parity.agreement_low,
            "seconds": time.perf_counter() - start,
        })
    lines = [f"{'model':<22} {'outcome':<8} detail"]
    for r in rows:
        if r["outcome"] == "built":
            detail = (f"INT8 on {r['int8_share']:.1%} of the FLOPs, {r['quantized_nodes']} nodes quantized, "
                      f"{r['kept_float']} kept float, agreement {r['agreement']:.4%}")
        else:
            detail = r.get("message") or r.get("why", "")
        lines.append(f"{r['model']:<22} {r['outcome']:<8} {detail[:300]}")
    print("\n".join(lines), file=sys.stderr)
    text = json.dumps({"size": list(size), "placement": args.placement, "rows": rows}, indent=2, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
