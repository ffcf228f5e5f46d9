"""Every zoo model x variant through `edgeseg check`, for the record (issue 12).

Builds each case of the zoo's export tests (tests/models/test_zoo_export.py) as
FP32, FP32 dynamic, FP16, INT8 in both Q/DQ placements, and with a separate and
a fused CRF, then holds every bundle to TensorRT 10.3, 10.13 and 11
(converters.acceptance) and prints one line per bundle and a JSON summary.
Minutes per case on a laptop CPU; bundles are kept under --out so a rerun
only checks.

    python tools/acceptance_matrix.py --out /tmp/acceptance [--only deeplabv3]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "fp32dyn": {"dynamic": True},
    "fp16": {"precision": "fp16"},
    "int8trt": {"precision": "int8", "placement": "tensorrt"},
    "int8cpu": {"precision": "int8", "placement": "cpu"},
    "crfsep": {"crf": "separate"},
    "crffused": {"crf": "fused"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the bundles")
    parser.add_argument("--only", default="", help="build only cases whose id contains this")
    args = parser.parse_args()

    import edgeseg
    from converters.acceptance import VERSIONS, check_bundle
    from converters.samples import synthetic_images
    from edgeseg import models as zoo
    from tests.models.test_zoo_export import CASES, _id, _model

    args.out.mkdir(parents=True, exist_ok=True)
    calib = args.out / "calib"
    if not calib.exists():
        from PIL import Image

        calib.mkdir()
        for i, image in enumerate(synthetic_images(32, (96, 128), seed=3)):
            Image.fromarray(image).save(calib / f"{i:02d}.png")
    rows = []
    for name, options, size in CASES:
        case = _id((name, options, size))
        if args.only not in case:
            continue
        for variant, extra in VARIANTS.items():
            extra = dict(extra)
            if variant.startswith("int8"):
                extra |= {"calib": calib, "calib_size": 16, "mixed_precision": False}
            if variant == "fp32dyn":
                multiple = zoo.get_spec(name).multiple_of
                size = tuple(-(-s // multiple) * multiple for s in size)  # type: ignore[assignment]
                extra["multiple_of"] = multiple
            path = args.out / f"{case}__{variant}.edgeseg"
            if not (path / "manifest.json").exists():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    edgeseg.build(_model(name, options), path, input_size=size, num_classes=5,
                                  num_samples=2, min_agreement=0.0, overwrite=True, **extra)
            reports = {v: check_bundle(path, v) for v in VERSIONS}
            verdict = {v: ("accepted" if r.ok else f"refused {sum(len(g.refused) for g in r.graphs)}")
                       for v, r in reports.items()}
            graphs = [g.graph for g in reports["10.3"].graphs]
            print(f"{case:55s} {variant:14s} {' '.join(f'{v}:{t}' for v, t in verdict.items())}  {graphs}",
                  flush=True)
            rows.append({"case": case, "variant": variant, "graphs": graphs, **verdict})
    accepted = sum(all(r[v] == "accepted" for v in VERSIONS) for r in rows)
    print(json.dumps({"bundles": len(rows), "accepted_by_all": accepted,
                      "refused": [f"{r['case']} {r['variant']}" for r in rows
                                  if not all(r[v] == "accepted" for v in VERSIONS)]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
