"""Soak: N frames (default 3,000) through a small bundle's stream; RSS and threads over the run.

One frame in a hundred is bad (float32), so the per-frame error path soaks too.
Prints JSON and a table: resident memory at the start, every 1,000 frames and
after close; Python and OS thread counts before, during and after the stream;
and the edgeseg threads left behind (none expected).

    python benchmarks/soak.py [--frames 3000] [--json soak.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _status() -> tuple[float, int]:
    """(resident MiB, OS threads) of this process, from /proc."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            values[key] = int(value.split()[0])
    return values["VmRSS"] / 1024, values["Threads"]


def _model() -> Any:
    """A small conv net (the tests' tiny model): the soak measures the runtime, not a network."""
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.head(torch.relu(self.conv(x)))
            return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    torch.manual_seed(0)
    return Small().eval()


def soak(bundle: Path, frames: int) -> dict[str, Any]:
    import edgeseg

    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(8)]
    bad = np.zeros((240, 320, 3), np.float32)

    def source() -> Iterator[np.ndarray]:
        for i in range(frames):
            yield bad if i % 100 == 99 else pool[i % len(pool)]

    seg = edgeseg.Segmenter(bundle, backend="onnxruntime", threads=1)
    seg(pool[0])  # warm-up
    gc.collect()
    rss0, os0 = _status()
    py0 = threading.active_count()
    marks: dict[str, float] = {}
    during = (0, 0)
    errors = 0
    started = time.perf_counter()
    with seg.stream(source()) as stream:
        for result in stream:
            errors += result.error is not None
            n = result.frame_index + 1
            if n % 1000 == 0:
                marks[str(n)] = round(_status()[0], 1)
            if n == frames // 2:
                during = (threading.active_count(), _status()[1])
    elapsed = time.perf_counter() - started
    seg.close()
    gc.collect()
    time.sleep(0.2)
    rss_end, os_end = _status()
    return {
        "frames": frames,
        "errors": errors,
        "seconds": round(elapsed, 2),
        "fps": round(frames / elapsed, 1),
        "end_reason": stream.end_reason,
        "failed": stream.failed,
        "rss_mib": {"start": round(rss0, 1), **marks, "after_close": round(rss_end, 1)},
        "python_threads": {"before": py0, "during": during[0], "after": threading.active_count()},
        "os_threads": {"before": os0, "during": during[1], "after": os_end},
        "edgeseg_threads_after": [t.name for t in threading.enumerate() if t.name.startswith("edgeseg-")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--json", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args()
    import edgeseg

    with tempfile.TemporaryDirectory(prefix="edgeseg-soak-") as tmp:
        bundle = edgeseg.build(
            _model(), Path(tmp) / "soak", input_size=(64, 96), classes=["a", "b", "c", "d"],
            num_samples=2, target="cpu",
        )
        report = soak(bundle.path, args.frames)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(f"\n{'RSS at':<14}{'MiB':>8}")
    for point, mib in report["rss_mib"].items():
        print(f"{point:<14}{mib:>8}")
    print(f"\n{'threads':<16}{'before':>8}{'during':>8}{'after':>8}")
    for kind in ("python_threads", "os_threads"):
        row = report[kind]
        print(f"{kind:<16}{row['before']:>8}{row['during']:>8}{row['after']:>8}")
    print(f"\n{report['frames']} frames ({report['errors']} bad on purpose) in {report['seconds']} s, "
          f"{report['fps']} fps; ended: {report['end_reason']}; edgeseg threads left: "
          f"{len(report['edgeseg_threads_after'])}")


if __name__ == "__main__":
    main()
