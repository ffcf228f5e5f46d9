#!/usr/bin/env python3
"""ROS 2 node: segments camera images with an edgeseg bundle and publishes the class mask.

    python3 examples/ros2_segmentation_node.py --ros-args -p bundle:=road.edgeseg \\
        -p input_topic:=/camera/image_raw -p output_topic:=/segmentation/mask

Parameters: ``bundle`` (path, required), ``input_topic`` (/camera/image_raw),
``output_topic`` (/segmentation/mask), ``drop`` (oldest | newest).

Subscribes ``input_topic``: sensor_msgs/Image, rgb8, bgr8, rgba8, bgra8 or mono8 (no cv_bridge).
Publishes ``output_topic``: sensor_msgs/Image, mono8 class ids at the image's size, with the
image's header (stamp, frame_id), so consumers can match a mask to its image.
Publishes ``/diagnostics`` once a second: latency p50/p99 (image received -> mask published),
fps, frames dropped, bad images.

The subscription callback never runs the model: it drops the message into a one-slot queue and
returns; a worker thread segments. With ``drop:=oldest`` a message arriving while the worker is
busy replaces the one waiting, so masks follow the newest image and latency stays bounded
however slow the model is (``newest`` keeps the waiting one instead). Either way drops are counted.

Everything ROS is imported inside ``SegmentationNode`` and ``main``; the rest (message <->
NumPy, the queue, the worker, the diagnostics figures) is plain Python, tested without ROS.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import edgeseg
from edgeseg.errors import ConfigError, EdgesegError
from edgeseg.rosmsg import image_msg_to_array, mask_to_image_fields

# The message <-> NumPy conversions are the package's (edgeseg.rosmsg): the bag source and sink
# use the same, and the tests run them on real CDR bytes (rosbags' typestore).
__all__ = [
    "LatestQueue",
    "NodeStats",
    "SegmentationNode",
    "SegmentationWorker",
    "diagnostic_status",
    "image_msg_to_array",
    "main",
    "mask_to_image_fields",
]


class LatestQueue:
    """A one-slot queue between a callback that must never block and a worker.

    ``put`` never waits. When the slot is full, ``drop="oldest"`` replaces the
    waiting item (the worker always gets the newest) and ``drop="newest"``
    discards the incoming one; either way ``dropped`` counts it.
    """

    POLICIES = ("oldest", "newest")

    def __init__(self, drop: str = "oldest") -> None:
        if drop not in self.POLICIES:
            raise ConfigError(f"drop must be one of {', '.join(self.POLICIES)}, got {drop!r}")
        self.drop = drop
        self.dropped = 0
        self.closed = False
        self._item: Any = None
        self._full = False
        self._cond = threading.Condition()

    def put(self, item: Any) -> bool:
        """Offers an item; False when an item (the waiting one or this one) was dropped."""
        with self._cond:
            was_full = self._full
            if was_full:
                self.dropped += 1
                if self.drop == "newest":
                    return False
            self._item, self._full = item, True
            self._cond.notify()
            return not was_full

    def get(self, timeout: float | None = None) -> Any:
        """The waiting item, or None after ``timeout`` seconds or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._full or self.closed, timeout)
            if self.closed or not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        """Wakes a waiting ``get``; every later ``get`` returns None."""
        with self._cond:
            self.closed = True
            self._item, self._full = None, False
            self._cond.notify_all()


class NodeStats:
    """Latencies since the last diagnostics tick. The worker writes, the timer reads: locked."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._since = clock()
        self._latencies: list[float] = []
        self.errors = 0

    def record(self, latency_ms: float) -> None:
        with self._lock:
            self._latencies.append(latency_ms)

    def record_error(self) -> None:
        with self._lock:
            self.errors += 1

    def take(self) -> tuple[list[float], float]:
        """The latencies (ms) since the last call, and the seconds that window lasted."""
        with self._lock:
            now = self._clock()
            latencies, self._latencies = self._latencies, []
            window, self._since = now - self._since, now
            return latencies, window


def diagnostic_status(
    latencies_ms: Sequence[float], window_s: float, dropped: int, errors: int, failure: str | None = None
) -> tuple[str, str, dict[str, str]]:
    """Level ("OK", "WARN" or "ERROR"), message and key/values for one diagnostics tick."""
    n = len(latencies_ms)
    fps = n / window_s if window_s > 0 else 0.0
    p50, p99 = np.percentile(np.asarray(latencies_ms, dtype=np.float64), [50, 99]) if n else (None, None)
    values = {
        "latency_p50_ms": "n/a" if p50 is None else f"{p50:.1f}",
        "latency_p99_ms": "n/a" if p99 is None else f"{p99:.1f}",
        "fps": f"{fps:.1f}",
        "frames": str(n),
        "dropped": str(dropped),
        "errors": str(errors),
    }
    if failure is not None:
        return "ERROR", f"segmentation stopped: {failure}", values
    if n == 0:  # no camera, a wrong topic, or only bad images: worth a warning in rqt_robot_monitor
        return "WARN", f"no image segmented in the last {window_s:.1f} s", values
    return "OK", f"{fps:.1f} fps, latency p50 {p50:.1f} ms", values


class SegmentationWorker:
    """Takes ``(msg, received perf_counter)`` from a LatestQueue, segments, hands ``(msg, mask)`` on.

    Args:
        segment: frame -> (H, W) uint8 mask, e.g. ``lambda f: segmenter(f).mask``.
        queue: where the subscription callback puts messages.
        publish: called with (msg, mask) for every segmented message.
        stats: gets each latency (received -> published) and each bad message.
        on_error: called with a one-line reason for a bad message (it is skipped).
    """

    def __init__(
        self,
        segment: Callable[[np.ndarray], np.ndarray],
        queue: LatestQueue,
        publish: Callable[[Any, np.ndarray], None],
        stats: NodeStats,
        on_error: Callable[[str], None],
    ) -> None:
        self._segment, self._queue, self._publish = segment, queue, publish
        self._stats, self._on_error = stats, on_error
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._run, name="edgeseg-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Closes the queue and waits for the message in progress, if any."""
        self._queue.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                msg, received = item
                try:
                    mask = self._segment(image_msg_to_array(msg))
                except EdgesegError as err:  # a bad image is reported and skipped
                    self._stats.record_error()
                    self._on_error(str(err))
                    continue
                self._publish(msg, mask)
                self._stats.record((time.perf_counter() - received) * 1e3)
        except Exception as err:  # noqa: BLE001 - a dead worker must show in /diagnostics, not vanish
            self.failure = f"{type(err).__name__}: {err}"
            self._on_error(f"worker stopped: {self.failure}")


class SegmentationNode:
    """The ROS 2 side: parameters, subscription, publishers, diagnostics timer."""

    def __init__(self, name: str = "edgeseg_segmentation") -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        self._msgs = (Image, DiagnosticArray, DiagnosticStatus, KeyValue)
        self.node = rclpy.create_node(name)
        try:
            param = self.node.declare_parameter
            bundle = param("bundle", "").value
            input_topic = param("input_topic", "/camera/image_raw").value
            output_topic = param("output_topic", "/segmentation/mask").value
            self.queue = LatestQueue(param("drop", "oldest").value)
            if not bundle:
                raise ConfigError("parameter 'bundle' is not set (--ros-args -p bundle:=road.edgeseg)")
            self.segmenter = edgeseg.Segmenter(bundle)
        except BaseException:
            self.node.destroy_node()
            raise
        self.stats = NodeStats()
        self.worker = SegmentationWorker(
            lambda frame: self.segmenter(frame).mask, self.queue, self._publish_mask, self.stats, self._warn
        )
        self._mask_pub = self.node.create_publisher(Image, output_topic, 1)
        self._diag_pub = self.node.create_publisher(DiagnosticArray, "/diagnostics", 1)
        # Sensor-data QoS (best effort, depth 1): camera drivers publish best effort, which a
        # reliable subscription would never match; depth 1 because only the newest image matters.
        self.node.create_subscription(Image, input_topic, self._on_image, qos_profile_sensor_data)
        self.node.create_timer(1.0, self._publish_diagnostics)
        self.worker.start()
        self.node.get_logger().info(f"{self.segmenter!r}: {input_topic} -> {output_topic}")

    def _on_image(self, msg: Any) -> None:
        self.queue.put((msg, time.perf_counter()))  # never blocks: the executor stays free

    def _publish_mask(self, msg: Any, mask: np.ndarray) -> None:
        image_cls = self._msgs[0]
        self._mask_pub.publish(image_cls(header=msg.header, **mask_to_image_fields(mask)))

    def _warn(self, text: str) -> None:
        self.node.get_logger().warning(text, throttle_duration_sec=5.0)

    def _publish_diagnostics(self) -> None:
        _, array_cls, status_cls, key_value_cls = self._msgs
        latencies, window = self.stats.take()
        level, message, values = diagnostic_status(
            latencies, window, self.queue.dropped, self.stats.errors, self.worker.failure
        )
        status = status_cls(
            level=getattr(status_cls, level),  # the constants, since `byte` is bytes in rclpy
            name=f"{self.node.get_name()}: segmentation",
            message=message,
            hardware_id=str(self.segmenter.bundle.path),
            values=[key_value_cls(key=k, value=v) for k, v in values.items()],
        )
        diagnostics = array_cls(status=[status])
        diagnostics.header.stamp = self.node.get_clock().now().to_msg()
        self._diag_pub.publish(diagnostics)

    def close(self) -> None:
        """Stops the worker before the publishers it uses go, then releases the model."""
        self.worker.stop()
        self.node.destroy_node()
        self.segmenter.close()


def main(args: list[str] | None = None) -> int:
    try:
        import rclpy
    except ImportError:
        print("error: this node needs ROS 2 (rclpy): source /opt/ros/<distro>/setup.bash", file=sys.stderr)
        return 1
    stops: tuple[type[BaseException], ...] = (KeyboardInterrupt,)
    try:  # Jazzy and later raise this from spin() when Ctrl-C shut the context down
        from rclpy.executors import ExternalShutdownException

        stops += (ExternalShutdownException,)
    except ImportError:
        pass
    rclpy.init(args=args)  # args=None: sys.argv, so --ros-args -p bundle:=... works
    seg_node = None
    code = 0
    try:
        seg_node = SegmentationNode()
        rclpy.spin(seg_node.node)
    except stops:
        pass  # Ctrl-C is the normal way to stop a node
    except EdgesegError as err:  # bad bundle or parameter: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        code = 1
    finally:
        if seg_node is not None:
            seg_node.close()
        if rclpy.ok():
            rclpy.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
