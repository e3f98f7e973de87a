import re

import h5py
import numpy as np
import pytest
import torch

from datamodules import highway
from datamodules.h5 import split_paths, write_h5_atomic
from datamodules.highway import HighwayDataModule, render_highway, window_starts
from dfn.errors import InputError


def numbered_frames(count: int, size: int = 64) -> np.ndarray:
    """uint8 frames whose pixel value is the frame number: a window shows where it starts."""
    return np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None], (count, size, size))


@pytest.fixture
def files(tmp_path):
    write_h5_atomic(tmp_path / "train.h5", {"highway_L": numbered_frames(100)})
    write_h5_atomic(tmp_path / "test.h5", {"highway_L": numbered_frames(30)})
    return tmp_path


def starts(batch: torch.Tensor) -> list[int]:
    return [round(v) for v in (batch[:, 0, 0, 0, 0] * 255).tolist()]


def test_batches_are_windows_of_consecutive_frames(files):
    data = HighwayDataModule(path=str(files), batch_size=4, steps_per_epoch=3, val_fraction=0.1)
    data.setup("fit")
    data.setup("test")
    batch = next(iter(data.train_dataloader()))
    assert batch.shape == (4, 6, 1, 64, 64) and batch.dtype == torch.float32
    assert 0 <= batch.min() and batch.max() <= 1
    # consecutive frames, all starting before the validation frames (the last 10: 90..99)
    steps = (batch[:, 1:, 0, 0, 0] - batch[:, :-1, 0, 0, 0]) * 255
    torch.testing.assert_close(steps, torch.ones_like(steps))
    assert all(0 <= s <= 90 - 6 for s in starts(batch))
    assert len(data.train_dataloader()) == 3
    val = torch.cat(list(data.val_dataloader()))
    assert starts(val) == list(range(90, 95))  # every window inside the held-out frames
    test = torch.cat(list(data.test_dataloader()))
    assert starts(test) == list(range(25))  # every start of the test file


def test_training_stream_is_a_function_of_the_seed(files):
    def first_batches(seed: int) -> torch.Tensor:
        data = HighwayDataModule(path=str(files), batch_size=8, steps_per_epoch=2, seed=seed)
        data.setup("fit")
        return torch.cat(list(data.train_dataloader()))

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    torch.testing.assert_close(a, b)
    assert starts(a) != starts(c)
    assert len(set(starts(a))) > 8  # random starts, not one window repeated


def test_prefix_paths_test_size_and_window_length(tmp_path):
    write_h5_atomic(tmp_path / "clip_train.h5", {"highway_L": numbered_frames(50)})
    write_h5_atomic(tmp_path / "clip_test.h5", {"highway_L": numbered_frames(20)})
    assert split_paths(tmp_path / "clip") == (tmp_path / "clip_train.h5", tmp_path / "clip_test.h5")
    data = HighwayDataModule(
        path=str(tmp_path / "clip"), num_input=2, num_predicted=1, test_size=4, batch_size=3
    )
    data.setup("test")
    test = torch.cat(list(data.test_dataloader()))
    assert test.shape == (4, 3, 1, 64, 64) and starts(test) == [0, 1, 2, 3]


def test_bad_files_each_give_one_error_naming_the_file(tmp_path):
    good = numbered_frames(40)
    cases = {
        "missing.h5": None,
        "no_dataset.h5": {"other": good},
        "rank2.h5": {"highway_L": good[:, :, 0]},
        "short.h5": {"highway_L": good[:5]},
        "small.h5": {"highway_L": good[:, :32, :32]},
    }
    messages = {
        "missing.h5": "not found",
        "no_dataset.h5": "no dataset 'highway_L'",
        "rank2.h5": "expected [frames, height, width]",
        "short.h5": "has 5 frames",
        "small.h5": "32x32 frames; expected 64x64",
    }
    for name, arrays in cases.items():
        if arrays is not None:
            write_h5_atomic(tmp_path / name, arrays)
    corrupt = tmp_path / "corrupt.h5"
    write_h5_atomic(corrupt, {"highway_L": good})
    corrupt.write_bytes(corrupt.read_bytes()[:3000])  # truncated
    messages["corrupt.h5"] = "corrupt or truncated"
    for name, message in messages.items():
        data = HighwayDataModule(train_path=str(tmp_path / name), test_path=str(tmp_path / name))
        with pytest.raises(InputError, match=re.escape(message)) as error:
            data.setup("fit")
        assert name in str(error.value)


def test_missing_split_and_bad_arguments(files):
    with pytest.raises(InputError, match="no test file"):
        HighwayDataModule(train_path=str(files / "train.h5")).setup("test")
    with pytest.raises(InputError, match="val_fraction"):
        HighwayDataModule(path=str(files), val_fraction=1.0)
    with pytest.raises(InputError, match="batch_size"):
        HighwayDataModule(path=str(files), batch_size=0)


def test_simulator_renders_moving_traffic():
    frames, cuts = render_highway(20, size=64, seed=0)
    assert frames.shape == (20, 64, 64) and frames.dtype == np.uint8
    assert 50 < frames.mean() < 200 and frames.std() > 10  # grey road, white marks, light cars
    differences = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2))
    assert (differences > 0.5).all()  # every frame moves
    assert cuts.tolist() == []  # one 120 s episode
    again, _ = render_highway(20, size=64, seed=0)
    np.testing.assert_array_equal(frames, again)


def test_simulator_reports_each_new_episode_as_a_cut():
    _, cuts = render_highway(12, size=16, seed=0, episode_s=0.5)  # 5 frames at 10 fps
    assert cuts.dtype == np.int64 and cuts.tolist() == [5, 10]


def test_window_starts_skip_the_windows_across_a_cut():
    # frames 0-3 | 4-9: a window of 3 may start at 0, 1 (ends at 3) and 4 (at the cut) to 7
    assert window_starts(10, 3, np.array([4])).tolist() == [0, 1, 4, 5, 6, 7]
    assert window_starts(10, 3, np.array([], np.int64)).tolist() == list(range(8))
    assert window_starts(5, 3, np.array([1, 3])).tolist() == []


def scene_frames(cuts: list[int], count: int, size: int = 64) -> np.ndarray:
    """uint8 frames whose pixel value is 10 x their scene's number (scenes split at ``cuts``)."""
    scene = np.searchsorted(cuts, np.arange(count), side="right")
    return np.broadcast_to((10 * scene).astype(np.uint8)[:, None, None], (count, size, size))


def test_no_window_spans_a_scene_cut(tmp_path):
    train_cuts, test_cuts = [7, 20, 23, 41, 44], [4, 11]
    train = {"highway_L": scene_frames(train_cuts, 50), "cuts": np.array(train_cuts)}
    write_h5_atomic(tmp_path / "train.h5", train)
    test = {"highway_L": scene_frames(test_cuts, 20), "cuts": np.array(test_cuts)}
    write_h5_atomic(tmp_path / "test.h5", test)
    data = HighwayDataModule(path=str(tmp_path), batch_size=50, steps_per_epoch=1, val_fraction=0.2)
    data.setup("fit")
    data.setup("test")
    train_batch = next(iter(data.train_dataloader()))
    val, test_windows = (
        torch.cat(list(loader())) for loader in (data.val_dataloader, data.test_dataloader)
    )
    for windows in (train_batch, val, test_windows):
        scene = torch.round(windows[:, :, 0, 0, 0] * 255)
        assert (scene == scene[:, :1]).all()  # one scene per window
    # training windows lie in frames 0-39, in scenes 0-6, 7-19 and 23-39 (20-22 are too short)
    assert set(torch.round(train_batch[:, 0, 0, 0, 0] * 255).tolist()) == {0.0, 10.0, 30.0}
    # validation: frames 40-49 hold the cuts 41 and 44; one window, 44-49
    assert val.shape[0] == 1 and round(val[0, 0, 0, 0, 0].item() * 255) == 50
    # test: scenes 0-3, 4-10, 11-19 hold 0, 2 and 4 windows of 6 frames
    assert test_windows.shape[0] == 6


def test_bad_cuts_are_one_error_naming_the_file(tmp_path):
    frames = numbered_frames(30)
    cases = {
        "float.h5": (np.array([3.5]), "1-D integer dataset"),
        "range.h5": (np.array([0, 5]), "holds [0, 5]; expected strictly increasing"),
        "late.h5": (np.array([5, 30]), "in [1, 30)"),
        "order.h5": (np.array([9, 5]), "holds [9, 5]"),
        "all_cut.h5": (np.arange(1, 30, 3), "no 6 consecutive frames without a scene cut"),
    }
    for name, (cuts, message) in cases.items():
        write_h5_atomic(tmp_path / name, {"highway_L": frames, "cuts": cuts})
        data = HighwayDataModule(test_path=str(tmp_path / name), train_path=str(tmp_path / name))
        with pytest.raises(InputError, match=re.escape(message)) as error:
            data.setup("test")
        assert name in str(error.value)


def test_blank_or_frozen_render_is_an_error(monkeypatch):
    from highway_env.envs.common.graphics import EnvViewer
    from highway_env.envs.highway_env import HighwayEnvFast

    with monkeypatch.context() as patch:
        patch.setattr(EnvViewer, "display", lambda self: None)  # draws nothing: black frames
        with pytest.raises(RuntimeError, match="blank frame"):
            render_highway(3)
    monkeypatch.setattr(HighwayEnvFast, "step", lambda self, action: (None, 0, False, False, {}))
    with pytest.raises(RuntimeError, match="frozen"):
        render_highway(3)


def test_rendered_video_is_cached_and_reused(tmp_path, monkeypatch):
    calls = []

    def fake_render(num_frames: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(num_frames)
        return numbered_frames(num_frames, size).copy(), np.array([10, 40, 48])

    monkeypatch.setattr(highway, "render_highway", fake_render)
    data = HighwayDataModule(num_frames=50, cache_dir=str(tmp_path), batch_size=2)
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    HighwayDataModule(num_frames=50, cache_dir=str(tmp_path)).setup("test")
    assert calls == [50]  # rendered once
    train, test = sorted(tmp_path.glob("highway_*_train.h5")), sorted(tmp_path.glob("*_test.h5"))
    assert len(train) == len(test) == 1 and "n50_64px_seed0" in train[0].name
    with h5py.File(train[0]) as f:
        assert f["highway_L"].shape == (40, 64, 64) and f["highway_L"].dtype == np.uint8
        assert f["cuts"][()].tolist() == [10]
    with h5py.File(test[0]) as f:
        assert f["cuts"][()].tolist() == [8]  # the cut at 40 is the split itself
    assert starts(torch.cat(list(data.test_dataloader())))[0] == 40  # the last 20 % in time
    test[0].write_bytes(b"not hdf5")  # a broken cache is rendered again
    HighwayDataModule(num_frames=50, cache_dir=str(tmp_path)).setup("test")
    assert calls == [50, 50]
