"""Stereo prediction data (paper section 4.3): predict the right view from the left view.

Offline default: the Middlebury "motorcycle" pair that scikit-image ships
(``skimage.data.stereo_motorcycle``), grayscale, with ground-truth disparity.

Geometry and sign convention. The paper's model predicts the right view with a 1x13 horizontal
dynamic local filter, ``right(y, x) = sum_k w_k(y, x) * left(y, x + k - 6)``, so the filter's
expected offset ``sum_k w_k * (k - 6)`` at a right-view pixel is the signed horizontal
displacement to the matching left-view pixel. Middlebury gives disparity ``d > 0`` for the LEFT view
(``left(x)`` matches ``right(x - d)``, 7 to 60 px here). It is splatted onto the right view's
grid (nearest surface wins, NaN where occluded or unknown), so ``right(x)`` matches
``left(x + d)``. The scene is then shrunk ``scale`` times by block averaging (images and
disparity on the same blocks), and the left view is shifted by a constant ``offset`` pixels,
``left'(x) = left(x + offset)``, as a converged rig would see it; the ground truth, in the
filter's convention, is ``d / scale - offset``. With the default scale 5 and offset 7 the scene
is 100x141 and every known offset lies in [-5.5, 5.0], inside ``max_disparity`` = 6, the reach
of a 1x13 filter (``disparity_stats`` measures it; at scale 6 with offset 6 it is [-4.7, 4.0],
but the scene, 83x117, is then too small for two disjoint 64-px splits).

``max_disparity`` is the largest horizontal offset between matching pixels the data may contain,
in pixels: the built-in scene refuses a scale and offset whose disparities exceed it, and keeps
that many columns between its train and test bands. The data module knows no model; the run
layer checks that the model's filter reaches ``max_disparity`` (dfn/run/experiment.py).

Split. One scene gives few independent 64x64 crops, and only 100 rows: two disjoint 64-row
bands do not fit, so the split is by COLUMNS. Test: the rightmost ``crop_size`` columns
(77-140 by default) over all rows, a fixed set of 4 crops at rows 0, 12, 24, 36 (they overlap
each other; together they cover the band). Train: columns 0-70, separated from the test band
by a gap of ``max_disparity`` (6) columns, so no scene point with a match appears in crops of
both splits. Training crops are drawn at random positions in the train band (37 x 8 positions) with
vertical flips and contrast/brightness jitter shared by both views (all keep horizontal
disparity). Validation: a fixed set of 6 unaugmented crops from the TRAIN band (rows 0, 18, 36 x
columns 0, 7): it tracks the fit, not generalisation. Limits: the train and test bands show
different parts of one scene (rear wheel and bench / front wheel and shelves), the test set has
only 64x100 distinct pixels, and at crop borders the matching pixel may lie outside the crop.

User data (the authors' format): ``path=DIR`` holding ``train.h5`` and ``test.h5``, or
``path=PREFIX`` for ``PREFIX_train.h5`` and ``PREFIX_test.h5`` (or ``train_path`` /
``test_path``), each with equally shaped ``highway_L`` and ``highway_R``
frames. Training draws random ``crop_size`` crops (whole frames when they are that size) without
augmentation; the last tenth of the training frames (at least one) is held out for validation;
validation and test use centre crops. There is no ground truth: "disparity" is all NaN.

Batches are dicts of [B, 1, crop, crop] float32 tensors: "left", "right" in [0, 1] and
"disparity" (NaN where unknown). A training sample is a pure function of (seed, index).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.h5 import read_frames, split_paths
from datamodules.stream import StreamDataModule, check_integers, sample_rng
from dfn.errors import InputError

ALOE_FILES = ("aloeL.jpg", "aloeR.jpg", "aloeGT.png")
ALOE_SCALE, ALOE_OFFSET = 12, 9  # the aloe pair (1282x1110, disparities 43 to 211 px)
LEFT, RIGHT = "highway_L", "highway_R"


@dataclass(frozen=True)
class StereoPairs:
    """Frames [N, H, W] in [0, 1]; disparity [N, H, W] in the filter's convention, or None."""

    left: np.ndarray
    right: np.ndarray
    disparity: np.ndarray | None = None


@dataclass(frozen=True)
class DisparityStats:
    minimum: float
    maximum: float
    within_reach: float  # fraction of known offsets with |offset| <= max_disparity
    known: float  # fraction of right-view pixels with a known offset


def right_view_disparity(disparity_left: np.ndarray) -> np.ndarray:
    """Splat a left-view disparity map onto the right view's grid.

    ``left(x)`` matches ``right(x - d)``; the result ``d_r`` says ``right(x)`` matches
    ``left(x + d_r)``. Neighbouring left pixels on one surface (disparity step <= 1 px) are
    rasterised as line segments so stretched surfaces leave no holes; on collisions the nearest
    surface (largest disparity) wins. NaN where nothing lands (occluded in the left view or
    unknown).
    """
    h, w = disparity_left.shape
    d = np.where(np.isfinite(disparity_left), disparity_left, np.nan).astype(np.float64)
    out = np.full((h, w), -np.inf)

    def splat(y: np.ndarray, xr: np.ndarray, value: np.ndarray) -> None:
        keep = (xr >= 0) & (xr < w)
        np.maximum.at(out, (y[keep], xr[keep].astype(np.int64)), value[keep])

    d0, d1 = d[:, :-1], d[:, 1:]
    same_surface = np.isfinite(d0) & np.isfinite(d1) & (np.abs(d1 - d0) <= 1.0)
    y, x = np.nonzero(same_surface)
    d0, d1 = d0[same_surface], d1[same_surface]
    a, b = x - d0, x + 1 - d1  # the segment's ends in the right view, 0 <= b - a <= 2
    for step in range(3):
        xr = np.ceil(a) + step
        t = np.clip((xr - a) / np.maximum(b - a, 1e-9), 0.0, 1.0)
        inside = xr <= b
        splat(y[inside], xr[inside], (d0 + t * (d1 - d0))[inside])
    y, x = np.nonzero(np.isfinite(d))  # isolated pixels too
    splat(y, np.rint(x - d[y, x]), d[y, x])
    return np.where(np.isfinite(out), out, np.nan).astype(np.float32)


def _block_mean(image: np.ndarray, scale: int) -> np.ndarray:
    h, w = image.shape[0] // scale, image.shape[1] // scale
    return image[: h * scale, : w * scale].reshape(h, scale, w, scale).mean(axis=(1, 3))


@functools.lru_cache(maxsize=4)
def motorcycle_scene(scale: int = 5, offset: int = 7) -> StereoPairs:
    """The scikit-image Middlebury motorcycle pair, grayscale, shrunk and pre-shifted.

    Returns one frame ([1, H, W]); disparity holds right-view offsets ``d / scale - offset``
    (NaN where unknown), so ``right(x) ~ left(x + disparity(x))``.
    """
    from skimage.data import stereo_motorcycle

    if not isinstance(scale, int) or scale < 1:
        raise InputError(f"scale is an integer downscale factor >= 1, got {scale!r}")
    if not isinstance(offset, int) or offset < 0:
        raise InputError(f"offset is a whole number of pixels >= 0, got {offset!r}")
    return _shrunk_pair(*stereo_motorcycle(), scale, offset)


def _shrunk_pair(
    left: np.ndarray, right: np.ndarray, disparity_left: np.ndarray, scale: int, offset: int
) -> StereoPairs:
    """A full-size RGB pair with its left-view disparity, as one grayscale frame shrunk ``scale``
    times and pre-shifted by ``offset`` (see ``motorcycle_scene``)."""
    from skimage.color import rgb2gray

    left = _block_mean(rgb2gray(left), scale)
    right = _block_mean(rgb2gray(right), scale)
    disparity = right_view_disparity(disparity_left)
    known = _block_mean(np.isfinite(disparity).astype(np.float64), scale)
    disparity = _block_mean(np.nan_to_num(disparity), scale) / np.maximum(known, 1e-9)
    # a block's offset is known when at least half its pixels are
    disparity = np.where(known >= 0.5, disparity / scale - offset, np.nan)
    width = left.shape[1] - offset
    if width < 1:
        raise InputError(f"offset {offset} leaves no columns at scale 1/{scale}")
    return StereoPairs(
        left=left[None, :, offset:].astype(np.float32),
        right=right[None, :, :width].astype(np.float32),
        disparity=disparity[None, :, :width].astype(np.float32),
    )


def aloe_scene(folder: str | Path) -> StereoPairs:
    """The Middlebury "aloe" pair of Debian's ``opencv-doc`` (``examples/data``: aloeL.jpg,
    aloeR.jpg and aloeGT.png, the left view's disparity in full-size pixels, 0 where unknown),
    shrunk ``ALOE_SCALE`` times and pre-shifted by ``ALOE_OFFSET`` like ``motorcycle_scene``:
    99.9% of its known offsets then lie in the filter's reach (-5.4 to 8.2 px)."""
    from skimage.io import imread

    views = []
    for name in ALOE_FILES:
        path = Path(folder) / name
        try:
            views.append(imread(path))
        except (OSError, ValueError) as e:
            raise InputError(
                f"data.aloe_dir={folder}: cannot read {name} ({e}); expected "
                f"{', '.join(ALOE_FILES)} as in Debian's opencv-doc examples/data"
            ) from e
    left, right, truth = views
    truth = (truth if truth.ndim == 2 else truth[..., 0]).astype(np.float64)
    return _shrunk_pair(left, right, np.where(truth > 0, truth, np.nan), ALOE_SCALE, ALOE_OFFSET)


def disparity_stats(scale: int = 5, offset: int = 7, max_disparity: int = 6) -> DisparityStats:
    """Range of the known ground-truth offsets of the motorcycle scene and the share within
    ``max_disparity``."""
    disparity = motorcycle_scene(scale, offset).disparity
    known = disparity[np.isfinite(disparity)]
    return DisparityStats(
        minimum=float(known.min()),
        maximum=float(known.max()),
        within_reach=float((np.abs(known) <= max_disparity).mean()),
        known=float(known.size / disparity.size),
    )


def _positions(low: int, high: int, count: int) -> list[int]:
    return sorted({int(round(p)) for p in np.linspace(low, high, count)})


def _crop(
    pairs: StereoPairs, frame: int, y: int, x: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    window = (frame, slice(y, y + size), slice(x, x + size))
    if pairs.disparity is None:
        disparity = np.full((size, size), np.nan, np.float32)
    else:
        disparity = pairs.disparity[window]
    return pairs.left[window], pairs.right[window], disparity


def _sample(left: np.ndarray, right: np.ndarray, disparity: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        name: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))[None]
        for name, v in (("left", left), ("right", right), ("disparity", disparity))
    }


class _FixedCrops(Dataset):
    """Crops at fixed (frame, row, column) positions: validation and test."""

    def __init__(self, pairs: StereoPairs, size: int, positions: list[tuple[int, int, int]]):
        self.pairs, self.size, self.positions = pairs, size, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return _sample(*_crop(self.pairs, *self.positions[index], self.size))


class _RandomCrops(Dataset):
    """Training sample ``index``: a crop drawn from ``sample_rng(seed, index)``.

    Frames from ``frames``, crop columns inside ``columns``; with ``augment``, a vertical flip and
    a contrast/brightness change shared by both views (both keep horizontal disparity).
    """

    def __init__(
        self,
        pairs: StereoPairs,
        size: int,
        frames: range,
        columns: tuple[int, int],
        seed: int,
        augment: bool,
    ) -> None:
        self.pairs, self.size, self.frames, self.columns = pairs, size, frames, columns
        self.seed, self.augment = seed, augment

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = sample_rng(self.seed, index)
        frame = self.frames[int(rng.integers(len(self.frames)))]
        y = int(rng.integers(self.pairs.left.shape[1] - self.size + 1))
        x = int(rng.integers(self.columns[0], self.columns[1] - self.size + 1))
        left, right, disparity = _crop(self.pairs, frame, y, x, self.size)
        if self.augment:
            if rng.random() < 0.5:
                left, right, disparity = left[::-1], right[::-1], disparity[::-1]
            contrast, brightness = np.exp(rng.uniform(-0.2, 0.2)), rng.uniform(-0.1, 0.1)
            left, right = (
                np.clip((v - 0.5) * contrast + 0.5 + brightness, 0, 1) for v in (left, right)
            )
        return _sample(left, right, disparity)


class StereoDataModule(StreamDataModule):
    """Left/right 64x64 crops of the motorcycle scene, or of the user's stereo HDF5 files.

    ``scale`` is the integer downscale factor of the scene (5: 1/5 size) and ``offset`` the
    left view's pre-shift in pixels at that scale; both only apply to the built-in scene.
    ``max_disparity``: the largest horizontal offset in pixels between matching pixels the data
    may contain (see the module docstring); the run layer checks the model's filter reaches it.
    ``aloe_dir`` (optional) replaces the test set by every ``crop_size`` crop, on a grid of a
    quarter crop, of a second Middlebury scene with ground truth (``aloe_scene``).
    """

    def __init__(
        self,
        path: str | None = None,
        train_path: str | None = None,
        test_path: str | None = None,
        scale: int = 5,
        offset: int = 7,
        max_disparity: int = 6,
        crop_size: int = 64,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        steps_per_epoch: int = 1000,
        test_size: int | None = None,
        aloe_dir: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, steps_per_epoch)
        check_integers(
            scale=(scale, 1),
            offset=(offset, 0),
            max_disparity=(max_disparity, 0),
            crop_size=(crop_size, 1),
        )
        self.save_hyperparameters()
        self.max_disparity = max_disparity
        if path is not None and Path(path).is_file():
            raise InputError(
                f"path={path} is a file; path is a folder holding train.h5 and test.h5, or the "
                "prefix of PREFIX_train.h5 and PREFIX_test.h5 (train_path / test_path name files)"
            )
        default_train, default_test = split_paths(path) if path else (None, None)
        self.train_path = train_path or (str(default_train) if path else None)
        self.test_path = test_path or (str(default_test) if path else None)
        self.user_data = self.train_path is not None or self.test_path is not None
        if aloe_dir is not None and not all((Path(aloe_dir) / f).is_file() for f in ALOE_FILES):
            raise InputError(
                f"data.aloe_dir={aloe_dir} does not hold {', '.join(ALOE_FILES)} (Debian's "
                "opencv-doc package has them in /usr/share/doc/opencv-doc/examples/data)"
            )
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.user_data:
            self._setup_user(stage)
        else:
            self._setup_scene()
        if self.hparams.aloe_dir is not None and stage in (None, "test", "predict"):
            pairs, c = aloe_scene(self.hparams.aloe_dir), self.hparams.crop_size
            _, h, w = pairs.left.shape
            rows, columns = (_positions(0, n - c, -(-(n - c) // (c // 4)) + 1) for n in (h, w))
            test = [(0, y, x) for y in rows for x in columns]
            self.test_set = _FixedCrops(pairs, c, test[: self.hparams.test_size])

    def _setup_scene(self) -> None:
        hp = self.hparams
        c = hp.crop_size
        pairs = motorcycle_scene(hp.scale, hp.offset)
        stats = disparity_stats(hp.scale, hp.offset, hp.max_disparity)
        if stats.within_reach < 1:
            raise InputError(
                f"at scale 1/{hp.scale} with offset {hp.offset} the scene's disparities span "
                f"[{stats.minimum:.1f}, {stats.maximum:.1f}] px, beyond max_disparity="
                f"{hp.max_disparity}; change the offset or raise max_disparity"
            )
        _, h, w = pairs.left.shape
        train_stop = w - c - hp.max_disparity  # train band: columns [0, train_stop)
        if h < c or train_stop < c:
            raise InputError(
                f"at scale 1/{hp.scale} with offset {hp.offset} the scene is {h}x{w}: too small "
                f"for disjoint {c}-px train and test bands (needs {c} rows and "
                f"{2 * c + hp.max_disparity} columns); use a smaller scale"
            )
        self.train_set = _RandomCrops(pairs, c, range(1), (0, train_stop), hp.seed, augment=True)
        val = [(0, y, x) for y in _positions(0, h - c, 3) for x in _positions(0, train_stop - c, 2)]
        self.val_set = _FixedCrops(pairs, c, val)
        # test rows every crop/4 (0, 12, 24, 36 by default): the crops cover the whole band
        test = [(0, y, w - c) for y in _positions(0, h - c, -(-(h - c) // (c // 4)) + 1)]
        self.test_set = _FixedCrops(pairs, c, test[: hp.test_size])

    def _setup_user(self, stage: str | None) -> None:
        c = self.hparams.crop_size
        if stage in (None, "fit", "validate"):
            pairs = self._read(self.train_path, "train", min_frames=2)
            n = len(pairs.left)
            n_val = max(1, n // 10)
            train_frames, columns = range(n - n_val), (0, pairs.left.shape[2])
            self.train_set = _RandomCrops(
                pairs, c, train_frames, columns, self.hparams.seed, augment=False
            )
            self.val_set = _FixedCrops(pairs, c, self._centre(pairs, range(n - n_val, n)))
        if stage in (None, "test", "predict"):
            pairs = self._read(self.test_path, "test", min_frames=1)
            frames = range(len(pairs.left))[: self.hparams.test_size]
            self.test_set = _FixedCrops(pairs, c, self._centre(pairs, frames))

    def _read(self, path: str | None, split: str, min_frames: int) -> StereoPairs:
        if path is None:
            raise InputError(f"no {split} file: set path=DIR (with {split}.h5) or {split}_path")
        left, right = read_frames(path, LEFT, min_frames), read_frames(path, RIGHT, min_frames)
        if left.shape != right.shape:
            raise InputError(
                f"{path}: {LEFT} has shape {left.shape} but {RIGHT} has {right.shape}; the left "
                "and right views need the same number of frames of the same size"
            )
        c = self.hparams.crop_size
        if left.shape[1] < c or left.shape[2] < c:
            raise InputError(
                f"{path}: frames are {left.shape[1]}x{left.shape[2]}, smaller than crop_size={c}"
            )
        return StereoPairs(left, right)

    def _centre(self, pairs: StereoPairs, frames: range) -> list[tuple[int, int, int]]:
        _, h, w = pairs.left.shape
        c = self.hparams.crop_size
        return [(f, (h - c) // 2, (w - c) // 2) for f in frames]
