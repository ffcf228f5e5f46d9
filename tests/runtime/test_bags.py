"""Recorded drives: bags as stream sources (MCAP, rosbag2 SQLite) and MCAP files of masks as sinks.

Bags are made by the tests (with rosbags' rosbag2 writer and with edgeseg's own
MCAP writer) from generated frames, and in the data-marked test from a CamVid
sequence; none is committed.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("rosbags", reason="bags need rosbags (pip install 'edgeseg[bags]')")
pytest.importorskip("mcap", reason="bags need mcap (pip install 'edgeseg[bags]')")

from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

import edgeseg  # noqa: E402
from edgeseg.cli import cli  # noqa: E402
from edgeseg.errors import ConfigError, SourceError  # noqa: E402
from edgeseg.runtime.bags import (  # noqa: E402
    BagSource,
    MaskBagWriter,
    image_topics,
    write_image_bag,
)
from edgeseg.runtime.frames import frame_source  # noqa: E402

TS = get_typestore(Stores.ROS2_HUMBLE)
IMAGE = "sensor_msgs/msg/Image"
TOPIC = "/camera/image_raw"
START = 1_700_000_000 * 10**9
PERIOD = 100_000_000


def _frames(n: int, size: tuple[int, int] = (48, 64), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def _rosbag2(path: Path, frames: list[np.ndarray], storage: StoragePlugin, *, bad: int | None = None) -> Path:
    """A rosbag2 folder (rosbags' writer) with TOPIC (rgb8) and a non-image topic; message ``bad``
    has an encoding the runtime does not take."""
    image_t = TS.types[IMAGE]
    header_t = TS.types["std_msgs/msg/Header"]
    time_t = TS.types["builtin_interfaces/msg/Time"]
    string_t = TS.types["std_msgs/msg/String"]
    with Writer(path, version=9, storage_plugin=storage) as writer:
        conn = writer.add_connection(TOPIC, IMAGE, typestore=TS)
        chatter = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=TS)
        for i, frame in enumerate(frames):
            stamp = START + i * PERIOD
            h, w = frame.shape[:2]
            header = header_t(stamp=time_t(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="cam")
            encoding = "16UC1" if i == bad else "rgb8"
            msg = image_t(header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=w * 3,
                          data=frame.reshape(-1))
            writer.write(conn, stamp + 5_000_000, TS.serialize_cdr(msg, IMAGE))
            writer.write(chatter, stamp + 1, TS.serialize_cdr(string_t(data=f"hello {i}"), "std_msgs/msg/String"))
    return path


def _read_back(path: Path, topic: str) -> list[tuple[int, Any]]:
    """(log time, message) of a topic, read with rosbags (not edgeseg's reader)."""
    with AnyReader([path], default_typestore=TS) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [(t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages(connections=conns)]


def _drain(source: BagSource) -> list[tuple[Any, str | None, str, Any]]:
    out = []
    while True:
        try:
            frame, error, name = source.read()
        except StopIteration:
            return out
        out.append((frame, error, name, source.frame_info()))


def _sha(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3], ids=["mcap", "sqlite3"])
def test_a_rosbag2_topic_reads_in_order_with_header_stamps(tmp_path: Path, storage: StoragePlugin) -> None:
    frames = _frames(5)
    bag = _rosbag2(tmp_path / "drive", frames, storage, bad=3)
    assert [t.describe() for t in image_topics(bag)] == [f"{TOPIC} (Image, 5 messages)"]
    read = _drain(BagSource(bag))  # the only image topic: no --topic needed
    assert [name for _, _, name, _ in read] == ["000000", "000001", "000002", "000003", "000004"]
    for i, (frame, error, _, info) in enumerate(read):
        assert info.index == i and info.topic == TOPIC and info.frame_id == "cam"
        assert (info.stamp_sec, info.stamp_nanosec) == divmod(START + i * PERIOD, 10**9)
        assert info.log_time_ns == START + i * PERIOD + 5_000_000
        if i == 3:  # reported on its frame; the stream goes on
            assert frame is None and error is not None
            assert error.startswith("message 3 of /camera/image_raw: image encoding '16UC1' is not supported")
        else:
            assert error is None
            np.testing.assert_array_equal(frame, frames[i])


def test_a_rosbag1_topic_reads_like_a_rosbag2_one(tmp_path: Path) -> None:
    from rosbags.rosbag1 import Writer as Writer1

    ts1 = get_typestore(Stores.ROS1_NOETIC)
    frames = _frames(3)
    path = tmp_path / "drive.bag"
    types = ts1.types
    with Writer1(path) as writer:
        conn = writer.add_connection(TOPIC, IMAGE, typestore=ts1)
        for i, frame in enumerate(frames):
            stamp = START + i * PERIOD
            header = types["std_msgs/msg/Header"](
                seq=i, stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9),
                frame_id="cam1",
            )
            msg = types[IMAGE](header=header, height=48, width=64, encoding="bgr8", is_bigendian=0, step=192,
                               data=frame[:, :, ::-1].reshape(-1).copy())
            writer.write(conn, stamp, ts1.serialize_ros1(msg, IMAGE))
    read = _drain(BagSource(path))
    assert [info.frame_id for _, _, _, info in read] == ["cam1"] * 3
    for (frame, error, _, info), expected in zip(read, frames, strict=True):
        assert error is None and info.msgtype == IMAGE
        np.testing.assert_array_equal(frame, expected)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
@pytest.mark.parametrize("padding", [0, 5])
def test_every_encoding_and_row_padding(tmp_path: Path, encoding: str, padding: int) -> None:
    frames = _frames(2, (7, 9))
    bag = write_image_bag(tmp_path / "e.mcap", frames, encoding=encoding, row_padding=padding)
    read = _drain(BagSource(bag, TOPIC))
    for (frame, error, _, _), expected in zip(read, frames, strict=True):
        assert error is None
        if encoding == "mono8":
            gray = (expected.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round()
            np.testing.assert_array_equal(frame, gray.astype(np.uint8))
        else:
            np.testing.assert_array_equal(frame, expected)


def test_compressed_images(tmp_path: Path) -> None:
    frames = _frames(3)
    png = _drain(BagSource(write_image_bag(tmp_path / "png.mcap", frames, compressed="png")))
    for (frame, error, _, info), expected in zip(png, frames, strict=True):
        assert error is None and info.msgtype == "sensor_msgs/msg/CompressedImage"
        np.testing.assert_array_equal(frame, expected)  # lossless
    smooth = [np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))[:, :, None].repeat(3, axis=2)]
    jpeg = _drain(BagSource(write_image_bag(tmp_path / "jpg.mcap", smooth, compressed="jpeg")))
    assert np.abs(jpeg[0][0].astype(int) - smooth[0].astype(int)).mean() < 3


def test_topic_choice_and_what_the_errors_list(tmp_path: Path) -> None:
    first = write_image_bag(tmp_path / "a.mcap", _frames(2), topic="/front/image")
    with pytest.raises(SourceError, match=r"has no topic '/rear/image'; its image topics: /front/image \(Image, 2 messages\)"):
        BagSource(first, "/rear/image")
    two = _rosbag2(tmp_path / "two", _frames(2), StoragePlugin.MCAP)
    with pytest.raises(SourceError, match=r"topic '/chatter' .* carries std_msgs/msg/String, not images; its image topics: /camera/image_raw"):
        BagSource(two, "/chatter")
    with pytest.raises(SourceError, match="does not exist"):
        BagSource(tmp_path / "missing.mcap")
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError, match="garbage.mcap is not a readable MCAP file"):
        BagSource(garbage)


def test_two_image_topics_need_a_choice(tmp_path: Path) -> None:
    from edgeseg.runtime.bags import McapImageWriter

    path = tmp_path / "two.mcap"
    with McapImageWriter(path) as writer:
        for topic in ("/left/image", "/right/image"):
            msg = TS.types[IMAGE](header=writer.header(1, 0, "c"), height=1, width=1, encoding="mono8",
                                  is_bigendian=0, step=1, data=np.zeros(1, np.uint8))
            writer.add(topic, IMAGE, msg, 10**9)
    with pytest.raises(SourceError, match=r"has 2 image topics \(/left/image \(Image, 1 messages\), /right/image"):
        BagSource(path)
    assert BagSource(path, "/right/image").topic == "/right/image"


def test_a_split_rosbag2_reads_its_files_in_order(tmp_path: Path) -> None:
    folder = tmp_path / "split"
    folder.mkdir()
    (folder / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    frames = _frames(12, (8, 8))
    for part in range(12):  # split_0 ... split_11: by name, 10 and 11 would come before 2
        write_image_bag(folder / f"split_{part}.mcap", [frames[part]], start_ns=START + part * PERIOD)
    read = _drain(BagSource(folder, TOPIC))
    assert [info.stamp_sec * 10**9 + info.stamp_nanosec for _, _, _, info in read] == [
        START + i * PERIOD for i in range(12)
    ]
    for (frame, _, _, _), expected in zip(read, frames, strict=True):
        np.testing.assert_array_equal(frame, expected)


def test_a_truncated_mcap_delivers_every_readable_message_then_says_why(tmp_path: Path) -> None:
    frames = _frames(8)
    whole = write_image_bag(tmp_path / "whole.mcap", frames, chunk_size=4096)  # about a frame a chunk
    cut = tmp_path / "cut.mcap"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    source = BagSource(cut)
    got: list[np.ndarray] = []
    with pytest.raises(SourceError, match=r"cut.mcap ends in damage after \d+ message\(s\) of /camera/image_raw"):
        while True:
            frame, error, _ = source.read()
            assert error is None
            got.append(frame)
    assert 1 <= len(got) < len(frames)
    for frame, expected in zip(got, frames, strict=False):
        np.testing.assert_array_equal(frame, expected)


def test_a_damaged_sqlite_bag_is_a_source_error(tmp_path: Path) -> None:
    bag = _rosbag2(tmp_path / "db", _frames(2), StoragePlugin.SQLITE3)
    (db,) = bag.glob("*.db3")
    db.write_bytes(b"not a database" * 100)
    with pytest.raises(SourceError, match="db"):
        _drain(BagSource(bag, TOPIC))


def test_frame_source_picks_bag_frames(tmp_path: Path) -> None:
    frames = _frames(6)
    bag = write_image_bag(tmp_path / "p.mcap", frames)
    source = frame_source(bag, what="images", topic=TOPIC)
    assert source.kind == "bag" and source.available == 6 and source.names[0] == "000000"
    picked = list(source.read([1, 4]))
    assert [r.name for r in picked] == ["000001", "000004"]
    np.testing.assert_array_equal(picked[1].frame, frames[4])
    with pytest.raises(ConfigError, match="is for a bag"):
        frame_source(tmp_path, what="images", topic=TOPIC)


# --------------------------------------------------------------------------- streaming and writing


def test_stream_results_carry_the_header(tiny_bundle: Path, tmp_path: Path) -> None:
    frames = _frames(4)
    bag = write_image_bag(tmp_path / "s.mcap", frames, frame_id="front_cam")
    with edgeseg.Segmenter(tiny_bundle) as seg, seg.stream(bag, topic=TOPIC) as stream:
        results = list(stream)
        expected = [seg(f).mask for f in frames]
    assert [r.frame_index for r in results] == [0, 1, 2, 3]
    for i, r in enumerate(results):
        assert r.timestamp == pytest.approx((START + i * PERIOD) / 1e9)
        assert r.meta.frame_id == "front_cam" and r.meta.index == i
        np.testing.assert_array_equal(r.mask, expected[i])
    assert not stream.failed and stream.end_reason == f"end of bag {bag} topic {TOPIC}"


def test_mask_writer_refuses_the_source_bag_and_other_names(tmp_path: Path) -> None:
    bag = _rosbag2(tmp_path / "drive", _frames(1), StoragePlugin.MCAP)
    with pytest.raises(ConfigError, match="would write into the source bag"):
        MaskBagWriter(bag / "masks.mcap", source=bag)
    single = write_image_bag(tmp_path / "one.mcap", _frames(1))
    with pytest.raises(ConfigError, match="would write into the source bag"):
        MaskBagWriter(single, source=single)
    with pytest.raises(ConfigError, match="give an .mcap file name"):
        MaskBagWriter(tmp_path / "masks.bag")


def test_an_aborted_mask_bag_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "masks.mcap"
    with pytest.raises(RuntimeError), MaskBagWriter(out):
        raise RuntimeError("the stream broke")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3], ids=["mcap", "sqlite3"])
def test_cli_run_writes_a_mask_bag_in_sync_with_the_camera(
    tiny_bundle: Path, tmp_path: Path, storage: StoragePlugin
) -> None:
    frames = _frames(5)
    bag = _rosbag2(tmp_path / "drive", frames, storage, bad=2)
    before = _sha(bag)
    out = tmp_path / "out" / "masks.mcap"
    result = CliRunner().invoke(
        cli, ["run", str(tiny_bundle), "--source", str(bag), "--topic", TOPIC, "--out-bag", str(out),
              "--out-bag-overlay"],
    )
    assert result.exit_code == 0, result.output
    assert "segmented 4 frame(s)" in result.output and "4 mask message(s) in" in result.output
    assert "skipped 000002: message 2 of /camera/image_raw: image encoding '16UC1'" in result.output
    assert _sha(bag) == before  # the input bag is never modified
    masks = _read_back(out, f"{TOPIC}/mask")
    overlays = _read_back(out, f"{TOPIC}/overlay")
    with edgeseg.Segmenter(tiny_bundle) as seg:
        expected = {i: seg(f).mask for i, f in enumerate(frames) if i != 2}
    assert len(masks) == len(overlays) == 4
    for (log_time, msg), i in zip(masks, sorted(expected), strict=True):
        assert msg.encoding == "mono8" and msg.step == msg.width
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == divmod(START + i * PERIOD, 10**9)
        assert msg.header.frame_id == "cam" and log_time == START + i * PERIOD + 5_000_000
        np.testing.assert_array_equal(msg.data.reshape(msg.height, msg.width), expected[i])
    assert overlays[0][1].encoding == "rgb8"


def test_cli_run_on_a_truncated_bag_keeps_what_it_read_and_exits_1(tiny_bundle: Path, tmp_path: Path) -> None:
    whole = write_image_bag(tmp_path / "whole.mcap", _frames(8), chunk_size=4096)
    cut = tmp_path / "cut.mcap"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    out = tmp_path / "masks.mcap"
    result = CliRunner().invoke(cli, ["run", str(tiny_bundle), "--source", str(cut), "--out-bag", str(out)])
    assert result.exit_code == 1
    assert "ended early: bag" in result.output and "ends in damage after" in result.output
    written = _read_back(out, f"{TOPIC}/mask")
    assert 1 <= len(written) < 8  # every readable frame's mask, in a finished file


def test_cli_bag_flags_are_checked_before_work(tiny_bundle: Path, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(_frames(1)[0]).save(image)
    for args, message in (
        (["--topic", TOPIC], "--topic is for bag sources"),
        (["--out-bag", str(tmp_path / "m.mcap")], "--out-bag is for bag sources"),
    ):
        result = CliRunner().invoke(cli, ["run", str(tiny_bundle), "--source", str(image), *args])
        assert result.exit_code == 1 and message in result.output
    bag = write_image_bag(tmp_path / "b.mcap", _frames(1))
    result = CliRunner().invoke(cli, ["run", str(tiny_bundle), "--source", str(bag), "--out-bag-overlay"])
    assert result.exit_code == 1 and "--out-bag-overlay needs --out-bag" in result.output
    result = CliRunner().invoke(cli, ["run", str(tiny_bundle), "--source", str(bag), "--topic", "/nope"])
    assert result.exit_code == 1 and "has no topic '/nope'; its image topics: /camera/image_raw" in result.output


def test_cli_profile_reads_a_bag(tiny_bundle: Path, tmp_path: Path) -> None:
    bag = write_image_bag(tmp_path / "p.mcap", _frames(12))
    result = CliRunner().invoke(
        cli, ["profile", str(tiny_bundle), "--source", str(bag), "--topic", TOPIC, "--frames", "8", "--warmup", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "8 frames after 2 warm-up" in result.output


@pytest.mark.data
def test_a_camvid_drive_round_trips_through_edgeseg_run(
    tiny_bundle: Path, tmp_path: Path, shared_data: Path
) -> None:
    """Done-when of issue 16: a CamVid sequence as an MCAP bag -> `edgeseg run` -> a bag whose
    masks match Segmenter frame by frame, with the source's header stamps."""
    from edgeseg.runtime.sources import read_image

    files = sorted((shared_data / "camvid" / "val").glob("0016E5_*.png"))[:12]
    assert files, "no CamVid 0016E5 sequence in val"
    frames = [read_image(f) for f in files]
    bag = write_image_bag(tmp_path / "camvid.mcap", frames, encoding="bgr8", frame_id="camvid")
    out = tmp_path / "camvid_masks.mcap"
    result = CliRunner().invoke(cli, ["run", str(tiny_bundle), "--source", str(bag), "--out-bag", str(out)])
    assert result.exit_code == 0, result.output
    masks = _read_back(out, f"{TOPIC}/mask")
    assert len(masks) == len(frames)
    with edgeseg.Segmenter(tiny_bundle) as seg:
        for i, ((log_time, msg), frame) in enumerate(zip(masks, frames, strict=True)):
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == divmod(START + i * PERIOD, 10**9)
            assert log_time == START + i * PERIOD and msg.header.frame_id == "camvid"
            np.testing.assert_array_equal(msg.data.reshape(msg.height, msg.width), seg(frame).mask)


def test_the_bags_extra_is_named_when_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    from edgeseg.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "rosbags", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgeseg\[bags\]'"):
        BagSource(shutil.copy(write_image_bag(tmp_path / "x.mcap", _frames(1)), tmp_path / "y.mcap"))
