"""Recorded drives: rosbag2 (MCAP or SQLite) and rosbag1 bags as frame sources, MCAP files as mask sinks.

A bag is read with the libraries ROS users already trust: ``mcap`` reads MCAP
files record by record (so a truncated or damaged file still gives every
message before the damage), ``rosbags`` reads rosbag2 SQLite stores and
rosbag1 files and (de)serialises the ROS 2 messages (CDR) with its typestore.
Both come with ``pip install 'edgeseg[bags]'``; ``import edgeseg`` imports
neither.

:class:`BagSource` is a :class:`~edgeseg.runtime.stream.FrameSource`: frames
of one ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` topic in
recorded order, each with its message's header (capture stamp, frame_id) and
log time as :class:`BagFrame` (the stream's ``StreamResult.meta``; the
result's ``timestamp`` is the header stamp). A message that cannot be read
(an encoding the runtime does not take, a broken JPEG) is that frame's error
and the stream goes on; a bag that ends in damage ends the stream with the
reason after every readable message.

:class:`MaskBagWriter` writes masks as ``mono8`` ``sensor_msgs/Image`` on
``<topic>/mask`` (and colour overlays as ``rgb8`` on ``<topic>/overlay``) with
the source message's header and log time, into a new MCAP file that viewers
(Foxglove, ``ros2 bag play``) show in sync with the camera. It never writes
into the bag it reads, and the file appears only when it is complete.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgeseg.errors import ConfigError, EdgesegError, MissingDependencyError, SourceError
from edgeseg.rosmsg import (
    COMPRESSED_TYPES,
    IMAGE_TYPES,
    mask_to_image_fields,
    message_to_array,
    rgb_to_image_fields,
)
from edgeseg.runtime.stream import FrameSource

BAG_SUFFIXES = frozenset({".mcap", ".bag", ".db3"})
IMAGE_MSG = "sensor_msgs/msg/Image"
_ROS2 = {"sensor_msgs/Image": IMAGE_MSG, "sensor_msgs/CompressedImage": "sensor_msgs/msg/CompressedImage"}


def _require(name: str) -> ModuleType:
    try:
        return __import__(name)
    except ImportError as err:
        raise MissingDependencyError(
            f"bags need the rosbags and mcap packages: pip install 'edgeseg[bags]' ({name} is missing)"
        ) from err


def _typestore() -> Any:
    _require("rosbags")
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def is_bag(path: str | os.PathLike[str]) -> bool:
    """A bag file (``.mcap``, ``.bag``, ``.db3``) or a rosbag2 folder (one with ``metadata.yaml``)."""
    p = Path(path)
    if p.is_dir():
        return (p / "metadata.yaml").is_file()
    return p.suffix.lower() in BAG_SUFFIXES


@dataclass(frozen=True)
class BagTopic:
    """One topic of a bag: its name, message type and (when the bag says) message count."""

    name: str
    msgtype: str
    count: int | None = None

    @property
    def is_image(self) -> bool:
        return self.msgtype in IMAGE_TYPES or self.msgtype in COMPRESSED_TYPES

    def describe(self) -> str:
        kind = self.msgtype.rsplit("/", 1)[-1]
        return f"{self.name} ({kind}" + (f", {self.count} messages)" if self.count is not None else ")")


@dataclass(frozen=True)
class BagFrame:
    """What a bag says about one frame: the message's topic, header and log time.

    Attributes:
        index: the message's position on its topic, from 0.
        topic: the topic it was recorded on.
        msgtype: ``sensor_msgs/msg/Image`` or ``sensor_msgs/msg/CompressedImage``.
        log_time_ns: when the recorder logged it (nanoseconds).
        stamp_sec, stamp_nanosec: its ``header.stamp`` (capture time).
        frame_id: its ``header.frame_id``.
    """

    index: int
    topic: str
    msgtype: str
    log_time_ns: int
    stamp_sec: int
    stamp_nanosec: int
    frame_id: str

    @property
    def stamp(self) -> float:
        """The capture time in seconds: the header stamp, or the log time when the stamp is unset."""
        if self.stamp_sec == 0 and self.stamp_nanosec == 0:
            return self.log_time_ns / 1e9
        return self.stamp_sec + self.stamp_nanosec / 1e9


@dataclass
class _Record:
    """One message of the chosen topic as read: decoded, or the reason it could not be."""

    topic: str
    msgtype: str
    log_time_ns: int
    message: Any = None
    error: str | None = None


# --------------------------------------------------------------------------- reading


class _Bag:
    """The storage behind a bag path: MCAP files read record by record, or rosbags' AnyReader."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise SourceError(f"bag {path} does not exist")
        self.path = path
        self.mcap_files: list[Path] = []
        if path.is_dir():
            if not (path / "metadata.yaml").is_file():
                raise SourceError(f"{path} is a folder without metadata.yaml: not a rosbag2 bag")
            self.mcap_files = sorted(path.glob("*.mcap"), key=_split_order)  # drive_2 before drive_10
        elif path.suffix.lower() == ".mcap":
            self.mcap_files = [path]
        elif path.suffix.lower() not in BAG_SUFFIXES:
            raise SourceError(f"{path}: not a bag ({', '.join(sorted(BAG_SUFFIXES))}, or a rosbag2 folder)")
        self.typestore = _typestore()

    # -- topics -------------------------------------------------------------------------------

    def topics(self) -> list[BagTopic]:
        """Every topic, with its message type and count where the bag's summary has it."""
        if self.mcap_files:
            found: dict[str, BagTopic] = {}
            for file in self.mcap_files:
                for topic in _mcap_topics(file):
                    old = found.get(topic.name)
                    count = topic.count
                    if old is not None:  # a split bag: the topic's counts add up, unknown stays unknown
                        count = None if old.count is None or count is None else old.count + count
                    found[topic.name] = BagTopic(topic.name, topic.msgtype, count)
            return sorted(found.values(), key=lambda t: t.name)
        counts: dict[str, int] = {}
        types: dict[str, str] = {}
        try:
            with self._any_reader() as reader:
                for conn in reader.connections:
                    counts[conn.topic] = counts.get(conn.topic, 0) + int(conn.msgcount)
                    types[conn.topic] = _ROS2.get(conn.msgtype, conn.msgtype)
        except EdgesegError:
            raise
        except Exception as err:  # noqa: BLE001 - rosbags raises its own errors for unreadable bags
            raise SourceError(f"bag {self.path} cannot be read: {type(err).__name__}: {err}") from err
        return [BagTopic(name, types[name], counts[name]) for name in sorted(types)]

    # -- messages -----------------------------------------------------------------------------

    def messages(self, topic: str) -> Iterator[_Record]:
        """The topic's messages in recorded order, decoded to typestore objects.

        Raises:
            SourceError: (from the iterator) the bag is damaged; every message before
                the damage has been yielded.
        """
        if self.mcap_files:
            for file in self.mcap_files:
                yield from self._mcap_messages(file, topic)
            return
        count = 0
        try:
            with self._any_reader() as reader:
                connections = [c for c in reader.connections if c.topic == topic]
                for conn, log_time, raw in reader.messages(connections=connections):
                    msgtype = _ROS2.get(conn.msgtype, conn.msgtype)
                    try:
                        message = reader.deserialize(raw, conn.msgtype)
                    except Exception as err:  # noqa: BLE001 - one undecodable message is that frame's error
                        yield _Record(topic, msgtype, int(log_time), error=f"cannot deserialize: {err}")
                    else:
                        yield _Record(topic, msgtype, int(log_time), message)
                    count += 1
        except EdgesegError:
            raise
        except Exception as err:  # noqa: BLE001 - rosbags/sqlite raise their own types on damage
            raise SourceError(
                f"bag {self.path} is damaged after {count} message(s) of {topic}: {type(err).__name__}: {err}"
            ) from err

    def _any_reader(self) -> Any:
        """rosbags' reader of a rosbag2 SQLite store or a rosbag1 file (opened by ``with``)."""
        from rosbags.highlevel import AnyReader

        return AnyReader([self.path], default_typestore=self.typestore)

    def _mcap_messages(self, file: Path, topic: str) -> Iterator[_Record]:
        _require("mcap")
        from mcap.records import Channel, Message, Schema
        from mcap.stream_reader import StreamReader

        schemas: dict[int, Any] = {}
        channels: dict[int, Any] = {}
        count = 0
        with open(file, "rb") as f:
            try:
                for record in StreamReader(f, skip_magic=False).records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel):
                        channels[record.id] = record
                    elif isinstance(record, Message):
                        channel = channels.get(record.channel_id)
                        if channel is None or channel.topic != topic:
                            continue
                        schema = schemas.get(channel.schema_id)
                        msgtype = _ROS2.get(schema.name, schema.name) if schema is not None else "?"
                        count += 1
                        yield self._decode(topic, msgtype, channel.message_encoding, record)
            except EdgesegError:
                raise
            except Exception as err:  # noqa: BLE001 - mcap raises its own errors on truncation or damage
                raise SourceError(
                    f"bag {file} ends in damage after {count} message(s) of {topic}: "
                    f"{type(err).__name__}: {err}"
                ) from err

    def _decode(self, topic: str, msgtype: str, encoding: str, record: Any) -> _Record:
        log_time = int(record.log_time)
        if encoding != "cdr":
            return _Record(topic, msgtype, log_time, error=f"message encoding {encoding!r} (not cdr)")
        if msgtype not in (*IMAGE_TYPES, *COMPRESSED_TYPES):
            return _Record(topic, msgtype, log_time, error=f"{msgtype} is not an image message")
        try:
            return _Record(topic, msgtype, log_time, self.typestore.deserialize_cdr(record.data, msgtype))
        except Exception as err:  # noqa: BLE001 - a corrupt message is that frame's error
            return _Record(topic, msgtype, log_time, error=f"cannot deserialize: {type(err).__name__}: {err}")


def _split_order(path: Path) -> list[Any]:
    """A natural sort key: the files of a split bag (``drive_0.mcap``, ... ``drive_10.mcap``) in order."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _mcap_topics(file: Path) -> list[BagTopic]:
    """An MCAP file's topics, from its summary; a file without one (truncated) is scanned."""
    _require("mcap")
    from mcap.exceptions import McapError
    from mcap.reader import make_reader
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader

    with open(file, "rb") as f:
        try:
            summary = make_reader(f).get_summary()
        except (McapError, OSError, ValueError, EOFError):
            summary = None
        if summary is not None and summary.channels:
            stats = summary.statistics
            counts = stats.channel_message_counts if stats is not None else {}
            return [
                BagTopic(
                    ch.topic,
                    _ROS2.get(summary.schemas[ch.schema_id].name, summary.schemas[ch.schema_id].name)
                    if ch.schema_id in summary.schemas
                    else "?",
                    counts.get(ch.id) if stats is not None else None,
                )
                for ch in summary.channels.values()
            ]
        f.seek(0)
        schemas: dict[int, str] = {}
        channels: dict[int, tuple[str, int]] = {}
        counted: dict[int, int] = {}
        try:
            for record in StreamReader(f, skip_magic=False).records:
                if isinstance(record, Schema):
                    schemas[record.id] = record.name
                elif isinstance(record, Channel):
                    channels[record.id] = (record.topic, record.schema_id)
                elif isinstance(record, Message):
                    counted[record.channel_id] = counted.get(record.channel_id, 0) + 1
        except Exception as err:  # noqa: BLE001 - a damaged tail: the topics seen before it count
            if not channels:
                raise SourceError(
                    f"bag {file} is not a readable MCAP file: {type(err).__name__}: {err}"
                ) from err
        return [
            BagTopic(topic, _ROS2.get(schemas.get(sid, "?"), schemas.get(sid, "?")), counted.get(cid, 0))
            for cid, (topic, sid) in channels.items()
        ]


def image_topics(path: str | os.PathLike[str]) -> list[BagTopic]:
    """The bag's sensor_msgs/Image and CompressedImage topics."""
    return [t for t in _Bag(Path(path)).topics() if t.is_image]


def _choose_topic(bag: _Bag, topic: str | None) -> BagTopic:
    topics = bag.topics()
    images = [t for t in topics if t.is_image]
    listed = ", ".join(t.describe() for t in images) or "none"
    if topic is None:
        if len(images) == 1:
            return images[0]
        raise SourceError(
            f"bag {bag.path} has {len(images)} image topics ({listed}): choose one with --topic"
            if images
            else f"bag {bag.path} has no sensor_msgs/Image or CompressedImage topic "
            f"(its topics: {', '.join(t.describe() for t in topics) or 'none'})"
        )
    found = next((t for t in topics if t.name == topic), None)
    if found is None:
        raise SourceError(f"bag {bag.path} has no topic {topic!r}; its image topics: {listed}")
    if not found.is_image:
        raise SourceError(
            f"topic {topic!r} of {bag.path} carries {found.msgtype}, not images; its image topics: {listed}"
        )
    return found


# --------------------------------------------------------------------------- the source


def _header_of(message: Any) -> tuple[int, int, str]:
    header = getattr(message, "header", None)
    stamp = getattr(header, "stamp", None)
    return (
        int(getattr(stamp, "sec", 0) or 0),
        int(getattr(stamp, "nanosec", 0) or 0),
        str(getattr(header, "frame_id", "") or ""),
    )


class BagSource(FrameSource):
    """Frames of one image topic of a bag, in recorded order (a stream source).

    Args:
        path: an ``.mcap`` file, a rosbag2 folder (MCAP or SQLite storage), a
            rosbag1 ``.bag`` or a rosbag2 ``.db3``.
        topic: the image topic (None: the bag's only image topic).

    Raises:
        SourceError: no such bag; the topic does not exist or carries no images
            (the message lists the bag's image topics).
        MissingDependencyError: rosbags or mcap is not installed.
    """

    live = False

    def __init__(self, path: str | os.PathLike[str], topic: str | None = None) -> None:
        self.path = Path(path)
        self._bag = _Bag(self.path)
        chosen = _choose_topic(self._bag, topic)
        self.topic = chosen.name
        self.count = chosen.count
        self.description = f"bag {self.path} topic {self.topic}"
        self._messages = self._bag.messages(self.topic)
        self._index = 0
        self._info: BagFrame | None = None

    def read(self) -> tuple[np.ndarray | None, str | None, str]:
        """The next frame (or None and why it cannot be read) and its name.

        Raises:
            StopIteration: the topic has no more messages.
            SourceError: the bag is damaged here (every message before was read).
        """
        record = next(self._messages)
        index = self._index
        self._index += 1
        sec, nanosec, frame_id = _header_of(record.message) if record.message is not None else (0, 0, "")
        self._info = BagFrame(index, record.topic, record.msgtype, record.log_time_ns, sec, nanosec, frame_id)
        name = f"{index:06d}"
        if record.error is not None:
            return None, f"message {index} of {self.topic}: {record.error}", name
        try:
            frame = message_to_array(record.message, record.msgtype)
        except EdgesegError as err:
            return None, f"message {index} of {self.topic}: {err}", name
        return np.ascontiguousarray(frame), None, name

    def frame_info(self) -> BagFrame | None:
        """What the bag says of the frame ``read`` returned last (its header and log time)."""
        return self._info

    def close(self) -> None:
        """Stops reading (closes the file). Idempotent."""
        close = getattr(self._messages, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------- writing


class McapImageWriter:
    """Image messages into a new MCAP file (ROS 2 profile, CDR), written atomically.

    The file is written beside ``path`` under a temporary name and renamed into
    place by :meth:`close`, so a reader never sees half a file; leaving a ``with``
    block on an exception (or :meth:`abort`) removes it.

    Args:
        path: the MCAP file to write (``.mcap``).
        source: the bag the messages come from; ``path`` must not be it or inside it.
        flag: the option ``path`` came from, for messages.

    Raises:
        ConfigError: ``path`` is not ``.mcap``, is an existing folder, or is the
            source bag (or inside its folder).
        MissingDependencyError: mcap or rosbags is not installed.
    """

    def __init__(self, path: str | os.PathLike[str], *, source: str | os.PathLike[str] | None = None,
                 flag: str = "--out-bag", chunk_size: int = 1024 * 1024) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".mcap":
            raise ConfigError(f"{flag} {self.path}: give an .mcap file name")
        if self.path.is_dir():
            raise ConfigError(f"{flag} {self.path} is an existing folder; give an .mcap file name")
        if source is not None:
            src = Path(source).resolve()
            out = self.path.resolve()
            if out == src or src in out.parents:
                raise ConfigError(f"{flag} {self.path} would write into the source bag {source}; give another path")
        _require("mcap")
        from mcap.writer import Writer

        self.typestore = _typestore()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._writer = Writer(self._file, chunk_size=chunk_size)  # a damaged file loses one chunk
        self._writer.start(profile="ros2", library="edgeseg")
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self._sequence = 0
        self._closed = False

    def header(self, sec: int, nanosec: int, frame_id: str) -> Any:
        """A std_msgs/msg/Header of the typestore."""
        types = self.typestore.types
        return types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id
        )

    def add(self, topic: str, msgtype: str, message: Any, log_time_ns: int) -> None:
        """Serialises one message (CDR) onto ``topic`` at ``log_time_ns``."""
        if self._closed:
            raise ConfigError(f"{self.path} is closed")
        if msgtype not in self._schemas:
            text, _ = self.typestore.generate_msgdef(msgtype, ros_version=2)
            self._schemas[msgtype] = self._writer.register_schema(
                name=msgtype, encoding="ros2msg", data=text.encode()
            )
        if topic not in self._channels:
            self._channels[topic] = self._writer.register_channel(
                topic=topic, message_encoding="cdr", schema_id=self._schemas[msgtype]
            )
        self._writer.add_message(
            channel_id=self._channels[topic],
            log_time=log_time_ns,
            publish_time=log_time_ns,
            data=bytes(self.typestore.serialize_cdr(message, msgtype)),
            sequence=self._sequence,
        )
        self._sequence += 1

    def close(self) -> Path:
        """Finishes the file (index, summary) and moves it into place; returns its path."""
        if not self._closed:
            self._closed = True
            self._writer.finish()
            self._file.close()
            os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drops the unfinished file. Idempotent."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                self._file.close()
            with contextlib.suppress(OSError):
                self._tmp.unlink()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class MaskBagWriter(McapImageWriter):
    """Masks (and overlays) of a bag's frames into a new MCAP file, in sync with the camera.

    Each mask is a ``mono8`` ``sensor_msgs/msg/Image`` on ``<topic>/mask`` with the
    source message's header and log time; with ``overlay=True`` the colour overlay
    goes on ``<topic>/overlay`` as ``rgb8``. Written atomically (:class:`McapImageWriter`).

    Args:
        path: the MCAP file to write (``.mcap``).
        source: the bag the frames come from; ``path`` must not be it or inside it.
        overlay: also write the overlays.
    """

    def __init__(self, path: str | os.PathLike[str], *, source: str | os.PathLike[str] | None = None,
                 overlay: bool = False) -> None:
        super().__init__(path, source=source)
        self.overlay = overlay
        self.written = 0

    def write(self, info: BagFrame, mask: np.ndarray, overlay: np.ndarray | None = None) -> None:
        """Writes one frame's mask (and overlay) with its source message's header and log time."""
        image_t = self.typestore.types[IMAGE_MSG]
        header = self.header(info.stamp_sec, info.stamp_nanosec, info.frame_id)
        mask_msg = image_t(header=header, **mask_to_image_fields(mask, data="numpy"))
        self.add(f"{info.topic}/mask", IMAGE_MSG, mask_msg, info.log_time_ns)
        if self.overlay:
            if overlay is None:
                raise ConfigError("this writer writes overlays: give the frame's overlay too")
            overlay_msg = image_t(header=header, **rgb_to_image_fields(overlay))
            self.add(f"{info.topic}/overlay", IMAGE_MSG, overlay_msg, info.log_time_ns)
        self.written += 1


def write_image_bag(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    *,
    topic: str = "/camera/image_raw",
    encoding: str = "rgb8",
    compressed: str | None = None,
    start_ns: int = 1_700_000_000 * 10**9,
    period_ns: int = 100_000_000,
    frame_id: str = "camera",
    row_padding: int = 0,
    chunk_size: int = 1024 * 1024,
) -> Path:
    """Frames (RGB or gray uint8) as an MCAP bag of one image topic, e.g. a folder of images
    turned into a recorded drive to test a bundle on.

    Args:
        path: the ``.mcap`` file to write.
        frames: (H, W, 3) RGB or (H, W) gray uint8 frames, in order.
        topic: the topic.
        encoding: for ``sensor_msgs/msg/Image``: ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` or ``mono8``.
        compressed: ``"png"`` or ``"jpeg"`` writes ``sensor_msgs/msg/CompressedImage`` instead.
        start_ns, period_ns: header stamp (and log time) of the first frame, and the step.
        frame_id: every header's frame_id.
        row_padding: bytes of padding after each row (``step`` > width * channels).
        chunk_size: bytes of messages per MCAP chunk (a damaged file loses the chunk it hits).

    Returns:
        ``path``.
    """
    from PIL import Image

    with McapImageWriter(path, flag="path", chunk_size=chunk_size) as writer:
        types = writer.typestore.types
        for i, frame in enumerate(frames):
            stamp = start_ns + i * period_ns
            header = writer.header(stamp // 10**9, stamp % 10**9, frame_id)
            rgb = np.asarray(frame, dtype=np.uint8)
            if compressed is not None:
                buffer = io.BytesIO()
                Image.fromarray(rgb).save(buffer, format="PNG" if compressed == "png" else "JPEG", quality=95)
                msg = types["sensor_msgs/msg/CompressedImage"](
                    header=header, format=compressed, data=np.frombuffer(buffer.getvalue(), np.uint8)
                )
                writer.add(topic, "sensor_msgs/msg/CompressedImage", msg, stamp)
                continue
            pixels = _encode(rgb, encoding)
            height, width, channels = pixels.shape
            rows = np.zeros((height, width * channels + row_padding), np.uint8)
            rows[:, : width * channels] = pixels.reshape(height, -1)
            msg = types[IMAGE_MSG](
                header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                step=width * channels + row_padding, data=rows.reshape(-1),
            )
            writer.add(topic, IMAGE_MSG, msg, stamp)
    return Path(path)


def _encode(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """An RGB (or gray) frame as the (H, W, C) pixels of ``encoding``."""
    gray = rgb if rgb.ndim == 2 else None
    color = np.repeat(rgb[:, :, None], 3, axis=2) if rgb.ndim == 2 else rgb[:, :, :3]
    alpha = np.full(color.shape[:2] + (1,), 255, np.uint8)
    if encoding == "rgb8":
        return color
    if encoding == "bgr8":
        return color[:, :, ::-1]
    if encoding == "rgba8":
        return np.concatenate([color, alpha], axis=2)
    if encoding == "bgra8":
        return np.concatenate([color[:, :, ::-1], alpha], axis=2)
    if encoding == "mono8":
        if gray is None:
            gray = (color.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
        return gray[:, :, None]
    raise ConfigError(f"encoding {encoding!r}: write_image_bag takes rgb8, bgr8, rgba8, bgra8 or mono8")


__all__ = [
    "BAG_SUFFIXES",
    "BagFrame",
    "BagSource",
    "BagTopic",
    "MaskBagWriter",
    "McapImageWriter",
    "image_topics",
    "is_bag",
    "write_image_bag",
]
