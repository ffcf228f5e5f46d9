"""Frames per second from a recorded drive (MCAP bag) vs the same frames as a folder of PNGs.

The frames are CamVid's validation sequence 0016E5 (480x360; ../shared/data, or
EDGESEG_DATA), or generated frames of that size when the data is absent. They
are written once as a folder of PNGs, an MCAP bag of raw ``rgb8`` Images, and
an MCAP bag of PNG ``CompressedImage`` messages. Then, alternating the three in
each round (so the machine's load falls on all alike), it measures

* reading: every frame through the stream's source (``open_source(...).read()``);
* streaming: every frame through ``Segmenter.stream`` of a small bundle (the
  tests' tiny network at 360x480, so the source's cost is not hidden by a model).

Prints JSON and a table: medians over the rounds, and each source's ratio to the
folder of PNGs.

    python benchmarks/bags.py [--frames 60] [--rounds 5] [--json bags.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("EDGESEG_DATA", ROOT.parent / "shared" / "data"))


def _frames(n: int) -> tuple[list[np.ndarray], str]:
    from edgeseg.runtime.sources import read_image

    files = sorted((DATA / "camvid" / "val").glob("0016E5_*.png"))
    if files:
        picked = [files[i % len(files)] for i in range(n)]
        return [read_image(f) for f in picked], f"CamVid val 0016E5 ({len(files)} frames, cycled to {n})"
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (360, 480, 3), dtype=np.uint8) for _ in range(n)], "generated 480x360"


def _bundle(out: Path) -> Path:
    import edgeseg
    from benchmarks.soak import _model

    return edgeseg.build(_model(), out, input_size=(360, 480), num_classes=4, num_samples=1, target="cpu").path


def _read_all(source: Any) -> int:
    from edgeseg.runtime.stream import open_source

    src = open_source(source)
    count = 0
    try:
        while True:
            try:
                frame, error, _ = src.read()
            except StopIteration:
                return count
            assert error is None and frame is not None, error
            count += 1
    finally:
        src.close()


def _stream_all(seg: Any, source: Any) -> int:
    with seg.stream(source, drop="none") as stream:
        count = sum(1 for r in stream if r.error is None)
    assert not stream.failed, stream.end_reason
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import edgeseg
    from edgeseg.runtime.bags import write_image_bag

    frames, described = _frames(args.frames)
    with tempfile.TemporaryDirectory(prefix="edgeseg-bags-") as tmp:
        root = Path(tmp)
        folder = root / "pngs"
        folder.mkdir()
        from PIL import Image

        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{i:06d}.png")
        sources = {
            "folder of PNGs": folder,
            "MCAP, rgb8 Image": write_image_bag(root / "raw.mcap", frames),
            "MCAP, PNG CompressedImage": write_image_bag(root / "png.mcap", frames, compressed="png"),
        }
        sizes = {name: sum(f.stat().st_size for f in (p.iterdir() if p.is_dir() else [p])) for name, p in sources.items()}
        bundle = _bundle(root / "tiny")
        read: dict[str, list[float]] = {name: [] for name in sources}
        streamed: dict[str, list[float]] = {name: [] for name in sources}
        with edgeseg.Segmenter(bundle, backend="onnxruntime") as seg:
            _stream_all(seg, sources["folder of PNGs"])  # warm-up
            for _ in range(args.rounds):
                for name, path in sources.items():
                    t0 = time.perf_counter()
                    n = _read_all(path)
                    read[name].append(n / (time.perf_counter() - t0))
                    t0 = time.perf_counter()
                    n = _stream_all(seg, path)
                    streamed[name].append(n / (time.perf_counter() - t0))
    base_read = statistics.median(read["folder of PNGs"])
    base_stream = statistics.median(streamed["folder of PNGs"])
    rows = []
    for name in sources:
        r, s = statistics.median(read[name]), statistics.median(streamed[name])
        rows.append({
            "source": name,
            "megabytes": round(sizes[name] / 1e6, 1),
            "read_fps_median": round(r, 1),
            "read_ratio_to_pngs": round(r / base_read, 2),
            "stream_fps_median": round(s, 1),
            "stream_ratio_to_pngs": round(s / base_stream, 2),
        })
    result = {"frames": args.frames, "rounds": args.rounds, "data": described, "rows": rows,
              "cpu_count": os.cpu_count()}
    print(json.dumps(result, indent=2))
    print(f"\n{args.frames} frames, {described}; medians of {args.rounds} rounds")
    print(f"{'source':28s} {'MB':>6s} {'read fps':>9s} {'x PNGs':>7s} {'stream fps':>11s} {'x PNGs':>7s}")
    for row in rows:
        print(f"{row['source']:28s} {row['megabytes']:6.1f} {row['read_fps_median']:9.1f} "
              f"{row['read_ratio_to_pngs']:7.2f} {row['stream_fps_median']:11.1f} {row['stream_ratio_to_pngs']:7.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
