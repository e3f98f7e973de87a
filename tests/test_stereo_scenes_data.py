"""Procedural stereo scenes: exact ground truth, reproducible seeds, disjoint splits, the cached
test set, and one clear line for each bad setting."""

import hashlib
import logging
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import datamodules.stereo_scenes as scenes
from datamodules.h5 import write_h5_atomic
from datamodules.steerable import SPLITS, load_images
from datamodules.stereo import right_view_disparity
from datamodules.stereo_scenes import (
    EVAL_SEEDS,
    StereoScenesDataModule,
    Textures,
    render_scene,
)
from datamodules.stream import sample_rng
from dfn.errors import InputError
from tests.conftest import ROOT
from tests.test_stereo_data import check_stereo_batches

# the data module's defaults, in the layout whose layers stand at independent depths
LAYERS = StereoScenesDataModule(layout="layers").settings


@pytest.fixture(scope="module")
def textures() -> Textures:
    return Textures.from_images(load_images(SPLITS["val"]), 128)


def warp_left(left: np.ndarray, disparity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The left view linearly interpolated at x + disparity, and where that is inside the crop."""
    h, w = left.shape
    source = np.arange(w)[None] + np.nan_to_num(disparity)
    inside = np.isfinite(disparity) & (source >= 0) & (source <= w - 1)
    x0 = np.clip(np.floor(source).astype(int), 0, w - 2)
    t = source - x0
    rows = np.arange(h)[:, None]
    return left[rows, x0] * (1 - t) + left[rows, x0 + 1] * t, inside


def test_right_view_is_the_left_view_moved_by_the_ground_truth(textures):
    errors, copy_errors, known = [], [], []
    for i in range(40):
        left, right, disparity, *_ = render_scene(textures, sample_rng(1, i), LAYERS)
        warped, inside = warp_left(left, disparity)
        errors.append(np.abs(warped - right)[inside])
        copy_errors.append(np.abs(left - right)[inside])
        known.append(np.isfinite(disparity).mean())
    errors = np.concatenate(errors)
    # exact up to linear interpolation (and at layer edges, where neighbours differ)
    assert np.median(errors) < 0.003 and np.mean(errors < 0.02) > 0.9
    assert errors.mean() < 0.15 * np.concatenate(copy_errors).mean()
    assert 0.85 < np.mean(known) < 0.995  # some pixels are occluded, most are not


def test_occlusions_agree_with_splatting_the_left_disparity(textures):
    """Occluded right-view pixels are those the left view's disparity does not reach."""
    for i in range(10):
        _, _, disparity, left_disparity, *_ = render_scene(textures, sample_rng(2, i), LAYERS)
        splatted = right_view_disparity(left_disparity)
        source = np.arange(64)[None] + np.nan_to_num(disparity)
        inside = (source >= 1) & (source <= 62)  # the splat sees only the left crop
        assert (np.isnan(splatted) == np.isnan(disparity))[inside].mean() > 0.97
        both = inside & np.isfinite(splatted) & np.isfinite(disparity)
        assert (np.abs(splatted - disparity)[both] < 0.5).mean() > 0.97


@pytest.mark.parametrize("slant", [0.0, 6.0])
def test_one_layer_is_a_plane(textures, slant):
    settings = replace(LAYERS, min_layers=1, max_layers=1, max_disparity=4.0, max_slant=slant)
    for i in range(5):
        left, right, disparity, *_ = render_scene(textures, sample_rng(3, i), settings)
        assert np.isfinite(disparity).all()  # one layer occludes nothing
        assert np.abs(disparity).max() <= 4.0 + 1e-5
        y, x = np.mgrid[:64, :64]
        design = np.stack([np.ones(64 * 64), x.ravel(), y.ravel()], 1)
        coef, *_ = np.linalg.lstsq(design, disparity.ravel().astype(np.float64), rcond=None)
        assert np.abs(design @ coef - disparity.ravel()).max() < 1e-4  # exactly linear
        if slant == 0:
            assert np.ptp(disparity) < 1e-5  # fronto-parallel: one constant disparity
        warped, inside = warp_left(left, disparity)
        assert np.abs(warped - right)[inside].mean() < 0.01
    assert slant == 0 or np.ptp(disparity) > 0.1


def test_scenes_are_a_function_of_seed_and_index(textures):
    a = render_scene(textures, sample_rng(7, 3), LAYERS)
    b = render_scene(textures, sample_rng(7, 3), LAYERS)
    c = render_scene(textures, sample_rng(8, 3), LAYERS)
    assert all(np.array_equal(u, v, equal_nan=True) for u, v in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    module = StereoScenesDataModule(
        batch_size=4, steps_per_epoch=2, seed=3, val_size=6, test_size=10, cache_dir=str(cache)
    )
    module.prepare_data()
    module.setup("fit")
    module.setup("test")
    return module


def test_batches(data):
    assert data.max_disparity == 5.0
    check_stereo_batches(data, min_known=0.8)
    assert len(data.val_set) == 6 and len(data.test_set) == 10
    again = StereoScenesDataModule(batch_size=4, steps_per_epoch=2, seed=3)
    again.setup("fit")
    first, second = next(iter(data.train_dataloader())), next(iter(again.train_dataloader()))
    assert all(torch.equal(first[k].nan_to_num(), second[k].nan_to_num()) for k in first)


def test_splits_use_disjoint_images_and_seeds(data, tmp_path):
    names = {split: set(SPLITS[split]) for split in ("train", "val", "test")}
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    assert not names["val"] & names["test"]

    def images(split: str) -> set[str]:
        t = data.textures(split)
        sizes = zip(t.offset, t.height, t.width, strict=True)
        levels = [t.pixels[o : o + h * w] for o, h, w in sizes]
        return {hashlib.sha1(level.tobytes()).hexdigest() for level in levels}

    hashes = {split: images(split) for split in ("train", "val", "test")}
    assert all(hashes.values())
    assert not hashes["train"] & hashes["val"] and not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]
    assert len(set(EVAL_SEEDS.values())) == 2 and data.hparams.seed not in EVAL_SEEDS.values()
    # a user's folder: the first fifth for test, the next tenth for validation, the rest train
    from skimage.io import imsave

    rng = np.random.default_rng(0)
    for i in range(10):
        imsave(tmp_path / f"{i:02d}.png", rng.integers(0, 256, (140, 150), dtype=np.uint8))
    images = scenes.load_texture_dir(tmp_path, 64)
    assert [len(images[s]) for s in ("test", "val", "train")] == [2, 1, 7]
    user = StereoScenesDataModule(texture_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert len(user.textures("train").height) == 7  # too small for the half-size level
    assert user.cache_path() != data.cache_path()


def test_test_set_is_cached_reused_and_regenerated(tmp_path, monkeypatch, caplog):
    def module() -> StereoScenesDataModule:
        return StereoScenesDataModule(test_size=3, val_size=2, cache_dir=str(tmp_path))

    first = module()
    first.setup("test")
    path = first.cache_path()
    assert path.is_file() and list(tmp_path.iterdir()) == [path]  # nothing half-written left
    cached = first.test_set.pairs

    def no_render(*args, **kwargs):
        raise AssertionError("the cached test set was regenerated")

    with monkeypatch.context() as m:
        m.setattr(scenes, "render_set", no_render)
        again = module()
        again.setup("test")
    assert np.array_equal(again.test_set.pairs.right, cached.right)

    path.write_bytes(b"not an HDF5 file")
    with caplog.at_level(logging.WARNING):
        module().setup("test")
    assert "regenerating the cache" in caplog.text and "unreadable" in caplog.text
    write_h5_atomic(path, {"left": np.zeros((2, 64, 64), np.float32)})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        regenerated = module()
        regenerated.setup("test")
    assert "regenerating the cache" in caplog.text
    assert np.array_equal(regenerated.test_set.pairs.disparity, cached.disparity, equal_nan=True)
    # another setting names another file
    assert StereoScenesDataModule(max_disparity=4.0, cache_dir=str(tmp_path)).cache_path() != path


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"min_layers": 0}, r"data.min_layers=0; expected an integer >= 1"),
        ({"min_layers": 3, "max_layers": 2}, r"data.max_layers=2 is below data.min_layers=3"),
        ({"max_disparity": 17}, r"data.max_disparity=17; expected a number in \[0.5, 16\]"),
        ({"max_disparity": 0}, r"data.max_disparity=0; expected a number in \[0.5, 16\]"),
        ({"max_disparity": "six"}, r"data.max_disparity='six'; expected a number"),
        ({"max_slant": 11.0}, r"data.max_slant=11.0; expected a number in \[0, 10\]"),
        ({"crop_size": 8}, r"data.crop_size=8; expected an integer >= 16"),
        ({"layout": "sky"}, r"data.layout='sky'; expected one of layers, ground"),
        ({"test_size": 0}, r"data.test_size=0; expected an integer >= 1"),
        ({"seed": EVAL_SEEDS["test"]}, r"is the seed of the fixed validation or test scenes"),
        ({"texture_dir": "/no/such/folder"}, r"texture_dir=/no/such/folder is not a folder"),
    ],
)
def test_bad_settings_raise_one_clear_error(settings, message):
    with pytest.raises(InputError, match=message):
        StereoScenesDataModule(**settings)


def test_bad_texture_folders(tmp_path):
    with pytest.raises(InputError, match=r"holds 0 images .*expected at least 3"):
        StereoScenesDataModule(texture_dir=str(tmp_path))
    (tmp_path / "a.png").write_bytes(b"garbage")
    (tmp_path / "b.png").write_bytes(b"garbage")
    (tmp_path / "c.jpg").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"cannot read the texture image .*a.png"):
        StereoScenesDataModule(texture_dir=str(tmp_path))
    from skimage.io import imsave

    for name in ("a.png", "b.png", "c.jpg"):
        imsave(tmp_path / name, np.full((100, 70), 128, np.uint8), check_contrast=False)
    with pytest.raises(InputError, match=r"a.png is 100x70; expected at least 76x76"):
        StereoScenesDataModule(texture_dir=str(tmp_path))


def test_bad_setting_is_one_line_from_train_py(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "experiment=stereo_scenes",
            "data.min_layers=0",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data.min_layers=0; expected an integer >= 1"
    )


def test_ground_layout_stands_the_leaves_on_a_floor(textures):
    settings = replace(LAYERS, layout="ground", max_disparity=4.0)
    rows = np.arange(64)[:, None]
    floor = -4.0 + 8.0 * rows / 63
    for i in range(10):
        scene = render_scene(textures, sample_rng(4, i), settings)
        known = np.isfinite(scene.disparity)
        on_floor = np.isclose(scene.disparity, floor, atol=1e-5) & known
        assert on_floor.any()
        # every leaf (not the floor) is fronto-parallel and no farther than the floor behind it
        leaf = known & ~on_floor
        assert (scene.disparity[leaf] >= np.broadcast_to(floor, (64, 64))[leaf] - 1e-5).all()
        for rank in np.unique(scene.layer[leaf]):
            values = scene.disparity[leaf & (scene.layer == rank)]
            assert np.ptp(values) < 1e-5
        warped, inside = warp_left(scene.left, scene.disparity)
        assert np.median(np.abs(warped - scene.right)[inside]) < 0.003
