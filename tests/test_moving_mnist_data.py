import gzip
import struct

import numpy as np
import pytest
import torch

from datamodules import moving_mnist as mm
from datamodules.moving_mnist import (
    MovingMNISTDataModule,
    mnist_5k_pools,
    mnist_idx_pools,
    moving_mnist_sequence,
    read_idx_images,
)
from dfn.errors import InputError

ROOM = 64 - 28


@pytest.fixture(scope="module")
def pools():
    return mnist_5k_pools()


def marked_digit(marker: int, block: tuple[slice, slice], value: int) -> np.ndarray:
    digit = np.zeros((28, 28), np.uint8)
    digit[block] = value
    digit[0, 0] = marker  # the unique marker pixel gives the digit's top-left corner
    return digit


def place(corner: tuple[int, int], digit: np.ndarray) -> np.ndarray:
    canvas = np.zeros((64, 64), np.uint8)
    canvas[corner[0] : corner[0] + 28, corner[1] : corner[1] + 28] = digit
    return canvas


def test_sequence_is_two_digits_merged_with_max():
    a = marked_digit(255, np.s_[4:20, 5:22], 50)
    b = marked_digit(254, np.s_[9:26, 2:15], 60)
    checked = 0
    for seed in range(20):
        frames = moving_mnist_sequence(np.stack([a, b]), np.random.default_rng(seed))
        assert frames.shape == (20, 1, 64, 64) and frames.dtype == np.float32
        assert frames.min() >= 0 and frames.max() <= 1
        pixels = np.rint(frames[:, 0] * 255).astype(np.uint8)
        for frame in pixels:
            corner_a = np.argwhere(frame == 255)
            corner_b = np.argwhere(frame == 254)
            if len(corner_b) == 0:  # hidden under a's marker: both at the same corner
                continue
            assert len(corner_a) == 1 and len(corner_b) == 1
            assert (corner_a >= 0).all() and (corner_a <= ROOM).all()
            expected = np.maximum(place(corner_a[0], a), place(corner_b[0], b))
            np.testing.assert_array_equal(frame, expected)
            checked += 1
    assert checked > 390


def test_bounce_keeps_the_digit_inside_the_canvas():
    square = np.full((1, 28, 28), 255, np.uint8)
    corners = []
    for seed in range(5):
        frames = moving_mnist_sequence(
            square, np.random.default_rng(seed), num_frames=300, num_digits=1
        )
        # Nothing of the digit is ever cut off: every frame holds all 28 x 28 of it.
        np.testing.assert_array_equal(frames.sum(axis=(1, 2, 3)), 28 * 28)
        corners += [np.argwhere(frame[0] == 1).min(axis=0) for frame in frames]
    corners = np.array(corners)
    assert corners.min() == 0 and corners.max() == ROOM  # it did reach every wall and bounce


def test_speed_is_a_tenth_of_the_free_canvas_per_frame(pools):
    ys, xs = np.mgrid[:64, :64]
    steps = []
    for seed in range(200):
        frames = moving_mnist_sequence(pools.train, np.random.default_rng(seed), num_digits=1)
        mass = frames[:, 0].sum(axis=(1, 2))
        cy = (frames[:, 0] * ys).sum(axis=(1, 2)) / mass
        cx = (frames[:, 0] * xs).sum(axis=(1, 2)) / mass
        steps.append(np.hypot(np.diff(cy), np.diff(cx)))
    steps = np.concatenate(steps)
    assert abs(np.median(steps) - 3.6) < 0.15
    assert 3.2 < steps.mean() < 3.7  # slightly below 3.6: a bounce shortens a step


def test_digit_pools_are_disjoint_stratified_and_fixed(pools):
    assert [len(p) for p in (pools.train, pools.val, pools.test)] == [4000, 500, 500]
    assert pools.train.dtype == np.uint8 and pools.train.shape[1:] == (28, 28)
    seen = [{image.tobytes() for image in p} for p in (pools.train, pools.val, pools.test)]
    assert [len(s) for s in seen] == [4000, 500, 500]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    np.testing.assert_array_equal(mnist_5k_pools().val, pools.val)


def first_batch(loader) -> torch.Tensor:
    return next(iter(loader))


def test_training_stream_depends_on_seed_not_on_workers(tmp_path):
    kwargs = dict(batch_size=4, steps_per_epoch=2, val_size=4, cache_dir=tmp_path)
    loaders = {}
    for seed, workers in [(0, 0), (0, 2), (1, 0)]:
        dm = MovingMNISTDataModule(seed=seed, num_workers=workers, **kwargs)
        dm.setup("fit")
        loaders[seed, workers] = dm.train_dataloader()
    batch = first_batch(loaders[0, 0])
    assert batch.shape == (4, 20, 1, 64, 64) and batch.dtype == torch.float32
    assert 0 <= batch.min() and batch.max() <= 1
    assert len(loaders[0, 0]) == 2
    torch.testing.assert_close(first_batch(loaders[0, 2]), batch, rtol=0, atol=0)
    assert not torch.equal(first_batch(loaders[1, 0]), batch)
    rest, second_epoch = list(loaders[0, 0]), list(loaders[0, 0])  # the loader moves on
    assert len(rest) == 1 and len(second_epoch) == 2
    assert not torch.equal(second_epoch[0], batch)  # each epoch samples afresh

    val = dm.val_dataloader()
    torch.testing.assert_close(first_batch(val), first_batch(val), rtol=0, atol=0)


def test_caches_are_written_once_and_reused(tmp_path, monkeypatch):
    dm = MovingMNISTDataModule(val_size=6, test_size=5, cache_dir=tmp_path)
    dm.prepare_data()
    dm.setup()
    files = sorted(tmp_path.glob("*.h5"))
    assert len(files) == 2 and any("_val_mnist5k-" in f.name for f in files)
    assert any("_test_mnist5k-" in f.name and "_n5_" in f.name for f in files)
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert len(dm.val_set) == 6 and len(dm.test_set) == 5
    val, test = dm.val_set.frames.copy(), dm.test_set.frames.copy()
    assert val.dtype == np.uint8 and val.shape == (6, 20, 64, 64)
    longer = mm.render_sequences(dm.pools.test, mm.EVAL_SEEDS["test"], 8, 20)
    np.testing.assert_array_equal(test, longer[:5])  # a smaller set is a prefix of a larger one

    calls = []
    render = mm.render_sequences

    def counting_render(*args):
        calls.append(args)
        return render(*args)

    monkeypatch.setattr(mm, "render_sequences", counting_render)
    again = MovingMNISTDataModule(val_size=6, test_size=5, cache_dir=tmp_path)
    again.prepare_data()
    again.setup()
    assert calls == [] and [f.stat().st_mtime_ns for f in files] == mtimes
    np.testing.assert_array_equal(again.val_set.frames, val)
    np.testing.assert_array_equal(again.test_set.frames, test)

    val_file = next(f for f in files if "_val_" in f.name)
    val_file.write_bytes(b"not an HDF5 file")
    again.setup("validate")
    assert len(calls) == 1
    np.testing.assert_array_equal(again.val_set.frames, val)

    MovingMNISTDataModule(val_size=7, cache_dir=tmp_path).setup("validate")
    assert len(calls) == 2 and len(list(tmp_path.glob("*_val_*"))) == 2  # a new size, a new file


@pytest.mark.parametrize("time_major", [False, True])
def test_test_file_in_either_layout(tmp_path, time_major):
    sequences = np.random.default_rng(0).integers(0, 256, (3, 20, 64, 64), dtype=np.uint8)
    path = tmp_path / "test.npy"
    np.save(path, sequences.transpose(1, 0, 2, 3) if time_major else sequences)
    dm = MovingMNISTDataModule(test_path=str(path), test_size=2, cache_dir=tmp_path)
    dm.setup("test")
    assert len(dm.test_set) == 2
    np.testing.assert_allclose(dm.test_set[1][:, 0].numpy(), sequences[1] / 255, atol=1e-7)
    assert list(tmp_path.glob("*.h5")) == []  # nothing generated when a file is given


def test_sequences_are_as_long_as_the_model_reads(tmp_path):
    dm = MovingMNISTDataModule(
        num_input=3, num_predicted=2, batch_size=2, val_size=2, cache_dir=tmp_path
    )
    dm.setup("fit")
    assert first_batch(dm.train_dataloader()).shape == (2, 5, 1, 64, 64)
    assert dm.val_set.frames.shape == (2, 5, 64, 64)
    # a fixed test file of another length is refused when the data module is built
    path = tmp_path / "test.npy"
    np.save(path, np.zeros((20, 3, 64, 64), np.uint8))
    with pytest.raises(InputError, match=r"no axis of 5 frames \(num_input \+ num_predicted\)"):
        MovingMNISTDataModule(num_input=3, num_predicted=2, test_path=str(path), test_size=3)
    with pytest.raises(InputError, match="data.image_size=32; Moving MNIST frames are 64x64"):
        MovingMNISTDataModule(image_size=32)


def test_float_test_file_must_be_in_unit_range(tmp_path):
    path = tmp_path / "float.npy"
    np.save(path, np.full((2, 20, 64, 64), 0.5, np.float32))
    assert mm.load_test_file(path, 20, 2).dtype == np.float32
    np.save(path, np.full((2, 20, 64, 64), 255.0, np.float32))
    with pytest.raises(InputError, match=r"outside \[0, 1\]"):
        mm.load_test_file(path, 20, 2)


@pytest.mark.parametrize(
    ("shape", "problem"),
    [
        ((3, 20, 32, 32), "expected a .npy array"),
        ((20, 64, 64), "expected a .npy array"),
        ((3, 7, 64, 64), "no axis of 20 frames (num_input + num_predicted)"),
        ((20, 20, 64, 64), "ambiguous"),
        ((2, 20, 64, 64), "test_size=3"),
        (None, "not found"),
    ],
)
def test_test_file_of_a_wrong_shape_is_refused(tmp_path, shape, problem):
    path = tmp_path / "bad.npy"
    if shape is not None:
        np.save(path, np.zeros(shape, np.uint8))
    with pytest.raises(InputError) as error:
        mm.load_test_file(path, 20, 3)
    message = str(error.value)
    assert problem in message and str(path) in message
    if shape is not None:
        assert str(shape) in message
    if problem != "test_size=3":
        assert "mnist_test_seq.npy" in message and "bouncing_mnist_test.npy" in message


def write_idx(path, images: np.ndarray) -> None:
    payload = b"\x00\x00\x08\x03" + struct.pack(">3I", *images.shape) + images.tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def test_full_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    raw = tmp_path / "MNIST" / "raw"  # torchvision's layout, one file gzipped
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte.gz", train)
    write_idx(raw / "t10k-images-idx3-ubyte", test)
    np.testing.assert_array_equal(read_idx_images(raw / "train-images-idx3-ubyte.gz"), train)

    pools = mnist_idx_pools(tmp_path)
    np.testing.assert_array_equal(pools.test, test)
    assert len(pools.train) == 10 and len(pools.val) == 2
    together = np.concatenate([pools.train, pools.val])
    assert sorted(i.tobytes() for i in together) == sorted(i.tobytes() for i in train)

    dm = MovingMNISTDataModule(mnist_root=str(tmp_path), batch_size=2, cache_dir=tmp_path)
    dm.setup("fit")
    assert first_batch(dm.train_dataloader()).shape == (2, 20, 1, 64, 64)
    assert "_val_mnist-" in next(tmp_path.glob("*.h5")).name


def test_a_folder_without_idx_files_is_refused(tmp_path):
    with pytest.raises(InputError) as error:
        MovingMNISTDataModule(mnist_root=str(tmp_path), cache_dir=tmp_path).setup("fit")
    message = str(error.value)
    assert str(tmp_path) in message
    assert "train-images-idx3-ubyte" in message and "t10k-images-idx3-ubyte" in message


def test_a_file_that_is_not_idx_is_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01" + bytes(20))
    with pytest.raises(InputError, match="not an IDX image file"):
        read_idx_images(path)
