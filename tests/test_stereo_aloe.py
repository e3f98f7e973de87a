"""The optional Middlebury aloe test set (data.aloe_dir); the real files are not needed."""

import numpy as np
import pytest
from skimage.io import imsave

from datamodules.stereo import ALOE_OFFSET, ALOE_SCALE, StereoDataModule, aloe_scene
from dfn.errors import InputError


def test_aloe_folder_becomes_the_test_set(tmp_path):
    """A stand-in of the right format: the right view is the left one moved by 108 px."""
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (800, 1100, 3), dtype=np.uint8)
    shift = 108  # full-size px: 108 / 12 - 9 = 0 after shrinking and pre-shifting
    imsave(tmp_path / "aloeL.jpg", scene[:, shift:][:, :900], check_contrast=False)
    imsave(tmp_path / "aloeR.jpg", scene[:, :900], check_contrast=False)
    truth = np.full((800, 900), shift, np.uint8)
    truth[:, :20] = 0  # unknown
    imsave(tmp_path / "aloeGT.png", truth, check_contrast=False)
    pairs = aloe_scene(tmp_path)
    assert pairs.left.shape == (1, 800 // ALOE_SCALE, 900 // ALOE_SCALE - ALOE_OFFSET)
    known = pairs.disparity[np.isfinite(pairs.disparity)]
    assert known.size > 0.9 * pairs.disparity.size and np.allclose(known, shift / 12 - 9)
    data = StereoDataModule(aloe_dir=str(tmp_path), batch_size=2)
    data.setup("test")
    assert len(data.test_set) == 4  # 66 x 66 px: rows {0, 2} x columns {0, 2}
    assert {(y, x) for _, y, x in data.test_set.positions} == {(0, 0), (2, 2), (0, 2), (2, 0)}


def test_missing_aloe_files_are_one_clear_error(tmp_path):
    with pytest.raises(InputError, match=r"data.aloe_dir=.* does not hold aloeL.jpg, aloeR.jpg"):
        StereoDataModule(aloe_dir=str(tmp_path))
