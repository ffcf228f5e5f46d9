#!/usr/bin/env python3
"""Live segmentation: a camera (or /dev/videoN, GStreamer pipeline, video, image folder) -> overlay.

    python examples/camera_loop.py road.edgeseg --source 0 --display
    python examples/camera_loop.py road.edgeseg --source clip.mp4 --output overlay.mp4 --frames 300
"""

from __future__ import annotations

import argparse
import sys

import edgeseg
from edgeseg.runtime.overlay import overlay


def parse_source(text: str) -> int | str:
    """"0" -> camera index 0; anything else (/dev/video0, a pipeline, a path) stays a string."""
    return int(text) if text.isdigit() else text


def import_cv2():
    # Lazy: only --display/--output need OpenCV; a headless robot logging masks must not.
    try:
        import cv2
    except ImportError as err:
        raise edgeseg.errors.MissingDependencyError(
            "--display and --output need OpenCV: pip install 'edgeseg[video]' "
            "(--display also needs a GUI build: pip install opencv-python)"
        ) from err
    return cv2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="NAME.edgeseg bundle directory")
    p.add_argument("--source", type=parse_source, default="0", help="camera index, /dev/videoN, pipeline, video, folder")
    p.add_argument("--display", action="store_true", help="show the overlay in a window (q quits)")
    p.add_argument("--output", help="write the overlay to this video file (e.g. overlay.mp4)")
    p.add_argument("--frames", type=int, default=0, help="stop after N frames (0: until the source ends)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate written to --output")
    p.add_argument("--drop", choices=("oldest", "none"), default="oldest", help="none: every frame of a file")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    cv2 = import_cv2() if args.display or args.output else None  # fail before loading the model
    writer = None
    with edgeseg.Segmenter(args.bundle) as seg:
        # drop="oldest": when inference is slower than the camera, show the newest frame, not a backlog.
        with seg.stream(args.source, drop=args.drop, keep_frames=cv2 is not None) as stream:
            try:
                for n, r in enumerate(stream, 1):
                    if r.error:  # a bad frame is reported and skipped; the loop goes on
                        print(f"frame {r.frame_index}: {r.error}", file=sys.stderr)
                    elif cv2 is not None:
                        bgr = cv2.cvtColor(overlay(r.frame, r.mask, seg.palette, 0.5), cv2.COLOR_RGB2BGR)
                        if args.output and writer is None:  # the frame size is known only now
                            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                            writer = cv2.VideoWriter(args.output, fourcc, args.fps, bgr.shape[1::-1])
                            if not writer.isOpened():  # OpenCV would otherwise drop every frame silently
                                raise edgeseg.errors.ConfigError(f"OpenCV cannot write {args.output}")
                        if writer is not None:
                            writer.write(bgr)
                        if args.display:
                            cv2.imshow("edgeseg", bgr)
                            if cv2.waitKey(1) & 0xFF == ord("q"):
                                break
                    if n == args.frames:
                        break
            except KeyboardInterrupt:  # Ctrl-C ends the run; the profile below still prints
                pass
            finally:
                if writer is not None:
                    writer.release()  # finishes the file, so it plays
                if args.display:
                    cv2.destroyAllWindows()
        print(seg.profile())  # p50/p90/p99 per stage
    if getattr(stream, "failed", False):  # the camera died mid-run: say why, exit non-zero
        print(f"error: {stream.end_reason}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except edgeseg.errors.EdgesegError as err:  # one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
