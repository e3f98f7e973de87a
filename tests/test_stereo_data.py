import numpy as np
import pytest
import torch

from datamodules.h5 import write_h5_atomic
from datamodules.stereo import (
    StereoDataModule,
    disparity_stats,
    motorcycle_scene,
    right_view_disparity,
)
from dfn.errors import InputError
from dfn.ops.filtering import dynamic_local_filter, expected_displacement

REACH = 6  # of the paper's 1x13 filter, and the data's default max_disparity


def interpolation_filters(offsets: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] horizontal offsets in [-6, 6] -> [B, 13, H, W] linear-interpolation taps."""
    o = offsets[:, 0].clamp(-REACH, REACH)
    low = o.floor().clamp(max=REACH - 1)
    t = o - low
    taps = torch.zeros(o.shape[0], 2 * REACH + 1, *o.shape[1:])
    index = (low + REACH).long()[:, None]
    taps.scatter_(1, index, (1 - t)[:, None])
    taps.scatter_add_(1, index + 1, t[:, None])
    return taps


@pytest.fixture(scope="module")
def scene_data():
    data = StereoDataModule(batch_size=4, steps_per_epoch=2, seed=3)
    data.setup("fit")
    data.setup("test")
    return data


def test_ground_truth_fits_the_filter():
    stats = disparity_stats(5, 7)
    assert stats.within_reach == 1.0
    assert -6 < stats.minimum < -5 and 4.5 < stats.maximum < 5.5
    assert stats.known > 0.8
    # the wider setting measured before: some offsets beyond reach
    assert 0.9 < disparity_stats(5, 8).within_reach < 1.0
    assert disparity_stats(5, 8, max_disparity=7).within_reach == 1.0


def test_the_scene_keeps_within_max_disparity():
    with pytest.raises(InputError, match=r"offset 8 .* beyond max_disparity=6; change the offset"):
        StereoDataModule(offset=8).setup("fit")
    wider = StereoDataModule(offset=8, max_disparity=7)
    wider.setup("fit")
    assert wider.train_set.columns == (0, 140 - 64 - 7)  # the gap between the bands follows
    with pytest.raises(InputError, match="data.max_disparity=-1; expected an integer >= 0"):
        StereoDataModule(max_disparity=-1)


def test_splatting_moves_disparity_to_the_right_view():
    left = np.full((1, 20), np.inf, np.float32)
    left[0, 5:10] = 2.0  # background: right(x) matches left(x + 2)
    left[0, 10:13] = 5.0  # nearer surface hides part of it in the right view
    right = right_view_disparity(left)
    assert np.allclose(right[0, 3:5], 2.0) and np.allclose(right[0, 5:8], 5.0)
    assert np.isnan(right[0, :3]).all() and np.isnan(right[0, 8:]).all()


def test_ground_truth_sign_through_the_filter():
    """Filtering the left view with the ground-truth offsets rebuilds the right view."""
    scene = motorcycle_scene(5, 7)
    left, right, disparity = (
        torch.from_numpy(a)[:, None] for a in (scene.left, scene.right, scene.disparity)
    )
    filters = interpolation_filters(torch.nan_to_num(disparity))
    known = torch.isfinite(disparity)
    assert torch.allclose(expected_displacement(filters, (1, 13))[:, :1][known], disparity[known])
    _, _, _, w = left.shape
    x = torch.arange(w).view(1, 1, 1, w)
    inside = known & (x + disparity >= 0) & (x + disparity <= w - 1)
    assert inside.float().mean() > 0.8

    def error(offsets: torch.Tensor) -> float:
        predicted = dynamic_local_filter(left, interpolation_filters(offsets), (1, 13))
        return float(((predicted - right) ** 2)[inside].mean())

    truth = torch.nan_to_num(disparity)
    assert error(truth) < 0.15 * error(torch.zeros_like(truth))
    assert error(truth) < 0.1 * error(-truth)


def test_train_and_test_crops_are_disjoint(scene_data):
    c, reach = 64, scene_data.max_disparity
    assert reach == REACH
    test_columns = {x for _, _, x in scene_data.test_set.positions}
    assert test_columns == {141 - c}
    assert [y for _, y, _ in scene_data.test_set.positions] == [0, 12, 24, 36]
    train_stop = scene_data.train_set.columns[1]
    assert train_stop + reach <= min(test_columns)
    assert all(x + c <= train_stop for _, _, x in scene_data.val_set.positions)
    # random training crops come from the train band: their disparity is one of its windows
    band = scene_data.train_set.pairs.disparity[0, :, :train_stop]
    windows = np.lib.stride_tricks.sliding_window_view(np.nan_to_num(band, nan=99), (c, c))
    for i in range(5):
        crop = np.nan_to_num(scene_data.train_set[i]["disparity"][0].numpy(), nan=99)
        found = [(windows == view).all(axis=(2, 3)).any() for view in (crop, crop[::-1])]
        assert any(found), f"training crop {i} is not inside the train band"


def check_stereo_batches(data, min_known: float) -> None:
    """Each split serves 4 float 64x64 views in [0, 1] and a disparity map whose known pixels
    (at least ``min_known`` of them) lie within ``data.max_disparity``."""
    for loader in (data.train_dataloader(), data.val_dataloader(), data.test_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"left", "right", "disparity"}
        for name in ("left", "right", "disparity"):
            assert batch[name].dtype == torch.float32 and batch[name].shape == (4, 1, 64, 64)
        for name in ("left", "right"):
            assert 0 <= batch[name].min() and batch[name].max() <= 1
        known = batch["disparity"][torch.isfinite(batch["disparity"])]
        assert known.numel() > min_known * 4 * 64 * 64
        assert known.abs().max() <= data.max_disparity + 1e-5


def test_batches(scene_data):
    check_stereo_batches(scene_data, min_known=0)
    assert len(scene_data.train_dataloader()) == 2
    assert len(scene_data.val_set) == 6 and len(scene_data.test_set) == 4


def test_training_stream_is_a_function_of_seed_and_index(scene_data):
    again = StereoDataModule(batch_size=4, steps_per_epoch=2, seed=3)
    again.setup("fit")
    other = StereoDataModule(batch_size=4, steps_per_epoch=2, seed=4)
    other.setup("fit")
    a, b = next(iter(scene_data.train_dataloader())), next(iter(again.train_dataloader()))
    c = next(iter(other.train_dataloader()))
    assert all(torch.equal(a[k].nan_to_num(), b[k].nan_to_num()) for k in a)
    assert not torch.equal(a["left"], c["left"])
    stream = again.train_dataloader().stream
    stream.consumed = 8  # epoch 1 starts after the 2 x 4 samples of epoch 0
    assert next(iter(stream))[0] == 8


def _write_pair(path, left, right):
    write_h5_atomic(path, {"highway_L": left, "highway_R": right})


def test_user_hdf5_files(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (10, 80, 96), dtype=np.uint8)
    _write_pair(tmp_path / "train.h5", frames, frames[:, :, ::-1].copy())
    _write_pair(tmp_path / "test.h5", frames[:3], frames[:3])
    data = StereoDataModule(path=str(tmp_path), batch_size=2, steps_per_epoch=3, test_size=2)
    data.setup("fit")
    data.setup("test")
    assert len(data.train_set.frames) == 9 and len(data.val_set) == 1 and len(data.test_set) == 2
    batch = next(iter(data.train_dataloader()))
    assert batch["left"].shape == (2, 1, 64, 64) and torch.isnan(batch["disparity"]).all()
    assert 0 <= batch["left"].min() and batch["left"].max() <= 1
    test = next(iter(data.test_dataloader()))
    expected = torch.from_numpy(frames[:2, 8:72, 16:80] / 255.0).float()
    assert torch.allclose(test["left"][:, 0], expected)

    whole = rng.random((2, 64, 64)).astype(np.float32)  # already crop-sized: whole frames
    _write_pair(tmp_path / "small.h5", whole, whole)
    data = StereoDataModule(train_path=str(tmp_path / "small.h5"), batch_size=1)
    data.setup("fit")
    assert torch.equal(
        next(iter(data.train_dataloader()))["left"][0, 0], torch.from_numpy(whole[0])
    )


@pytest.mark.parametrize(
    "left_shape, right_shape",
    [((4, 64, 64), (3, 64, 64)), ((4, 64, 64), (4, 64, 72))],
)
def test_mismatched_views_raise_input_error(tmp_path, left_shape, right_shape):
    _write_pair(
        tmp_path / "train.h5", np.zeros(left_shape, np.uint8), np.zeros(right_shape, np.uint8)
    )
    data = StereoDataModule(path=str(tmp_path))
    with pytest.raises(InputError, match="same number of frames of the same size"):
        data.setup("fit")


def test_bad_inputs_raise_input_error(tmp_path):
    _write_pair(
        tmp_path / "train.h5", np.zeros((4, 32, 32), np.uint8), np.zeros((4, 32, 32), np.uint8)
    )
    with pytest.raises(InputError, match="smaller than crop_size"):
        StereoDataModule(path=str(tmp_path)).setup("fit")
    with pytest.raises(InputError, match="is a file"):
        StereoDataModule(path=str(tmp_path / "train.h5"))
    with pytest.raises(InputError, match="data file not found"):
        StereoDataModule(path=str(tmp_path)).setup("test")
    with pytest.raises(InputError, match="too small"):
        StereoDataModule(scale=6, offset=6).setup("fit")
