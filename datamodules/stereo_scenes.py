"""Procedural stereo scenes with exact ground-truth disparity: unlimited, seeded "dead leaves".

A scene is a few flat textured layers ("leaves") at their own depths. Layer 0 is the background
and covers the whole view; the others are ellipses or rotated rectangles. Each layer's disparity
is a plane in the right view, ``d(x, y) = d0 + gx (x - cx) + gy (y - cy)``: fronto-parallel when
the gradient is zero, slanted otherwise (``max_slant``: the most it changes across the crop).
All of it stays in ``[-max_disparity, max_disparity]``, the sign convention of
``datamodules.stereo``: ``right(x) ~ left(x + disparity(x))``, so a larger disparity is nearer.

Two layouts. ``layers``: each layer's depth is drawn at random, independently of
how it looks, and the farthest is the background. The stereo model sees only the left view, which
then shows which layer is in front of which but not how far away any is:
``scripts/stereo_scenes_bounds.py`` measures what that leaves to learn. ``ground``: the
background is a floor whose disparity grows from ``-max_disparity`` on the top row to
``max_disparity`` on the bottom one, and every leaf stands on it, upright and facing the
camera, at the floor's disparity at its lowest point, as in driving scenes: depth shows in the
left view through where things stand. The data module's default is ``ground``, the layout in
which a model that sees only the left view can learn the disparity; ``SceneSettings`` (the
renderer's own settings, for tests and scripts) defaults to ``layers``.

Both views are rendered from the same layers, with a depth buffer (at each pixel the layer with
the largest disparity wins). A layer's texture and shape live in left-view coordinates ``u``;
the right view's pixel ``x`` sees that layer's surface point ``u = x + d(x)``, sampled from the
same continuous texture, so the ground truth is exact: ``right(x)`` equals the left view
interpolated at ``x + d(x)``. A right-view pixel whose surface point is hidden in the left view
(behind a nearer layer there) is occluded: NaN in the ground truth. Points that leave the left
crop keep their disparity (the stereo task does not score them).

Textures are crops of natural images, at full, half or quarter size (block means, so without
aliasing), rotated, slightly zoomed, with their own brightness and contrast. Of a few candidate
crops per layer the one with the most contrast is used, so that matching needs real texture.
Source images: scikit-image's, split as for the steerable filters (``datamodules.steerable``),
or a folder of the user's (``texture_dir``: sorted by name, the first fifth (at least one) for
the test set, the next tenth (at least one) for validation, the rest for training).

Training scenes are drawn afresh (sample i from ``sample_rng(seed, i)``, training images only);
validation and test scenes are fixed sets from their own images and their own fixed seeds,
``val_size`` generated at setup, ``test_size`` generated once and cached as HDF5 under
``cache_dir``. Batches are the stereo module's dicts: "left", "right" [B, 1, S, S] in [0, 1] and
"disparity" (NaN where occluded).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.h5 import read_or_generate
from datamodules.steerable import SPLITS, load_images
from datamodules.stereo import StereoPairs, _block_mean, _FixedCrops, _sample
from datamodules.stream import StreamDataModule, check_integers, sample_rng
from dfn.errors import InputError

log = logging.getLogger(__name__)

EVAL_SEEDS = {"val": 20_163, "test": 20_164}  # fixed, and refused as the training seed
CACHE_VERSION = 1  # bump when the generator changes, so old caches are not reused
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIEWS = ("left", "right", "disparity")
CANDIDATES = 4  # texture crops tried per layer; the one with the most contrast is kept
LEVELS = (1, 2, 4)  # texture scales: full, half and quarter size
LAYOUTS = ("layers", "ground")


# --------------------------------------------------------------------------- textures


@dataclass(frozen=True)
class Textures:
    """Grayscale images, flattened into one array for vectorised sampling.

    ``pixels`` holds image k from ``offset[k]`` with shape ``(height[k], width[k])``.
    """

    pixels: np.ndarray
    offset: np.ndarray
    height: np.ndarray
    width: np.ndarray

    @classmethod
    def from_images(cls, images: list[np.ndarray], min_side: int) -> Textures:
        """Every image at the scales of ``LEVELS`` whose smaller side is at least ``min_side``."""
        levels = [
            _block_mean(image, s) if s > 1 else image
            for image in images
            for s in LEVELS
            if min(image.shape) // s >= min_side or s == 1
        ]
        sizes = np.array([level.size for level in levels])
        return cls(
            pixels=np.concatenate([level.ravel() for level in levels]).astype(np.float32),
            offset=np.concatenate([[0], np.cumsum(sizes)[:-1]]),
            height=np.array([level.shape[0] for level in levels]),
            width=np.array([level.shape[1] for level in levels]),
        )

    def sample(self, k: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
        """Bilinear samples of images ``k`` at rows ``sy`` and columns ``sx`` (clamped)."""
        h, w = self.height[k], self.width[k]
        sy = np.clip(sy, 0, h - 1.001)
        sx = np.clip(sx, 0, w - 1.001)
        y0, x0 = np.floor(sy).astype(np.int64), np.floor(sx).astype(np.int64)
        ty, tx = sy - y0, sx - x0
        i = self.offset[k] + y0 * w + x0
        p = self.pixels
        top = p[i] * (1 - tx) + p[i + 1] * tx
        bottom = p[i + w] * (1 - tx) + p[i + w + 1] * tx
        return top * (1 - ty) + bottom * ty


def load_texture_dir(path: str | Path, min_side: int) -> dict[str, list[np.ndarray]]:
    """The train/val/test images of a user's folder (grayscale, [0, 1]), each at least
    ``min_side`` pixels high and wide, or one clear InputError."""
    from skimage.color import rgb2gray
    from skimage.io import imread
    from skimage.util import img_as_float

    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"data.texture_dir={path} is not a folder of images")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 3:
        raise InputError(
            f"data.texture_dir={path} holds {len(files)} images ({', '.join(IMAGE_SUFFIXES)}); "
            "expected at least 3: disjoint images for the training, validation and test scenes"
        )
    images = []
    for file in files:
        try:
            image = img_as_float(imread(file))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read the texture image {file}: {e}") from e
        if image.ndim == 3:
            image = rgb2gray(image[..., :3]) if image.shape[-1] >= 3 else image[..., 0]
        if min(image.shape) < min_side:
            raise InputError(
                f"the texture image {file} is {image.shape[0]}x{image.shape[1]}; expected at "
                f"least {min_side}x{min_side} (the crop widened by the disparity range)"
            )
        images.append(np.ascontiguousarray(image, dtype=np.float32))
    n_test = max(1, len(files) // 5)
    n_val = max(1, len(files) // 10)
    return {
        "test": images[:n_test],
        "val": images[n_test : n_test + n_val],
        "train": images[n_test + n_val :],
    }


# --------------------------------------------------------------------------- the generator


@dataclass(frozen=True)
class SceneSettings:
    """What the generator draws; its defaults are those of ``StereoScenesDataModule``."""

    size: int
    min_layers: int
    max_layers: int
    max_disparity: float
    max_slant: float
    layout: str


def _window_coordinates(
    rng: np.random.Generator, textures: Textures, n: int, s: SceneSettings
) -> dict[str, np.ndarray]:
    """``n`` random texture placements: image, centre and 2x2 map from view to image pixels."""
    k = rng.integers(len(textures.height), size=n)
    theta = rng.uniform(0, 2 * np.pi, n)
    zoom = np.exp(rng.uniform(np.log(0.7), np.log(1.1), n))  # image pixels per view pixel
    cos, sin = np.cos(theta) * zoom, np.sin(theta) * zoom
    # half extents of the sampled window (all rows, columns widened by the disparity range)
    half_y, half_x = s.size / 2, s.size / 2 + s.max_disparity + 1
    reach_y = np.abs(cos) * half_y + np.abs(sin) * half_x
    reach_x = np.abs(sin) * half_y + np.abs(cos) * half_x
    room_y = np.maximum(textures.height[k] - 1 - 2 * reach_y, 0)
    room_x = np.maximum(textures.width[k] - 1 - 2 * reach_x, 0)
    return {
        "k": k,
        "cy": reach_y + rng.random(n) * room_y,
        "cx": reach_x + rng.random(n) * room_x,
        "a": np.stack([cos, -sin, sin, cos], axis=1),  # (row, col) <- (y, u) about the centre
    }


def _texture(textures: Textures, p: dict, j: np.ndarray, y: np.ndarray, u: np.ndarray):
    """Layer ``j``'s raw texture at view rows ``y`` and left-view columns ``u``."""
    dy, du = y - p["centre"], u - p["centre"]
    a = p["a"][j]
    sy = p["cy"][j] + a[..., 0] * dy + a[..., 1] * du
    sx = p["cx"][j] + a[..., 2] * dy + a[..., 3] * du
    return textures.sample(p["k"][j], sy, sx)


def _standing(
    s: SceneSettings, n: int, row: np.ndarray, radii: np.ndarray, turn: np.ndarray, ellipse
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Planes (d0, gx, gy) of the ground layout: the background is a floor whose disparity grows
    from -max_disparity on the top row to max_disparity on the bottom one; every leaf stands on
    it, upright and facing the camera, at the floor's disparity at its lowest point."""
    cos, sin = np.abs(np.cos(turn)), np.abs(np.sin(turn))
    below = np.where(  # from a shape's centre down to its lowest point
        ellipse,
        np.hypot(radii[:, 0] * cos, radii[:, 1] * sin),
        radii[:, 0] * cos + radii[:, 1] * sin,
    )
    floor = 2 * s.max_disparity / (s.size - 1)  # disparity per row
    d0 = np.clip(-s.max_disparity + floor * (row + below), -s.max_disparity, s.max_disparity)
    d0[0], gx, gy = 0.0, np.zeros(n), np.zeros(n)
    gy[0] = floor
    return d0, gx, gy


def _layers(rng: np.random.Generator, textures: Textures, s: SceneSettings) -> dict:
    """Random parameters of one scene's layers, background (layer 0) first."""
    n = int(rng.integers(s.min_layers, s.max_layers + 1))
    size, d_max = s.size, s.max_disparity
    # disparity planes; the farthest (smallest disparity at the centre) is the background
    d0 = np.sort(rng.uniform(-d_max, d_max, n))
    angle = rng.uniform(0, 2 * np.pi, n)
    slope = rng.uniform(0, s.max_slant / size, n)
    gx, gy = slope * np.cos(angle), slope * np.sin(angle)
    # shrink the slant where the plane would leave [-d_max, d_max] inside the crop
    reach = (np.abs(gx) + np.abs(gy)) * (size - 1) / 2
    shrink = np.minimum(1.0, (d_max - np.abs(d0)) / np.maximum(reach, 1e-12))
    gx, gy = gx * shrink, gy * shrink
    # shapes in left-view coordinates: ellipses or rotated rectangles
    centre_yx = rng.uniform(-0.1 * size, 1.1 * size, (n, 2))
    radii = rng.uniform(0.08 * size, 0.35 * size, (n, 2))
    turn = rng.uniform(0, np.pi, n)
    ellipse = rng.random(n) < 0.5
    if s.layout == "ground":
        d0, gx, gy = _standing(s, n, centre_yx[:, 0], radii, turn, ellipse)
    # textures: of CANDIDATES placements per layer, the one with the most contrast
    tries = _window_coordinates(rng, textures, n * CANDIDATES, s)
    tries["centre"] = (size - 1) / 2
    grid = np.linspace(0, size - 1, 8)
    coarse = _texture(
        textures,
        tries,
        np.arange(n * CANDIDATES)[:, None, None],
        grid[None, :, None],
        grid[None, None, :],
    ).reshape(n, CANDIDATES, -1)
    best = np.arange(n) * CANDIDATES + coarse.std(axis=2).argmax(axis=1)
    texture = {key: tries[key][best] for key in ("k", "cy", "cx", "a")}
    texture["centre"] = tries["centre"]
    mean = coarse.reshape(n * CANDIDATES, -1)[best].mean(axis=1)
    return {
        "n": n,
        "d0": d0,
        "gx": gx,
        "gy": gy,
        "shape_centre": centre_yx,
        "radii": radii,
        "cos": np.cos(turn),
        "sin": np.sin(turn),
        "ellipse": ellipse,
        "texture": texture,
        "source_mean": mean,
        "brightness": rng.uniform(0.25, 0.75, n),
        "contrast": np.exp(rng.uniform(np.log(0.6), np.log(1.6), n)),
    }


def _covers(p: dict, y: np.ndarray, u: np.ndarray) -> np.ndarray:
    """[n, S, S]: whether each layer covers left-view points (y, u), [S, S] or [n, S, S]."""
    cy, cu = p["shape_centre"][:, 0], p["shape_centre"][:, 1]
    shape = (-1, 1, 1)
    dy, du = y - cy.reshape(shape), u - cu.reshape(shape)
    cos, sin = p["cos"].reshape(shape), p["sin"].reshape(shape)
    a = (cos * dy + sin * du) / p["radii"][:, 0].reshape(shape)
    b = (-sin * dy + cos * du) / p["radii"][:, 1].reshape(shape)
    inside = np.where(
        p["ellipse"].reshape(shape), a**2 + b**2 <= 1, (np.abs(a) <= 1) & (np.abs(b) <= 1)
    )
    inside[0] = True  # the background
    return inside


def _plane(p: dict, c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each layer's right-view plane as ``d = a + gx x + gy y``: (a, gx, gy), each [n, 1, 1]."""
    a = p["d0"] - p["gx"] * c - p["gy"] * c
    return a[:, None, None], p["gx"][:, None, None], p["gy"][:, None, None]


def _left_disparity(p: dict, c: float, y: np.ndarray, u: np.ndarray) -> np.ndarray:
    """[n, ...] each layer's disparity at left-view point (y, u): solve u = x + d(x, y)."""
    a, gx, gy = _plane(p, c)
    x = (u - a - gy * y) / (1 + gx)
    return a + gx * x + gy * y


def _front(covers: np.ndarray, disparity: np.ndarray) -> np.ndarray:
    """The visible layer: of those covering a point, the one with the largest disparity."""
    return np.where(covers, disparity, -np.inf).argmax(axis=0)


def _shade(textures: Textures, p: dict, j: np.ndarray, y: np.ndarray, u: np.ndarray):
    raw = _texture(textures, p["texture"], j, y, u)
    value = p["brightness"][j] + p["contrast"][j] * (raw - p["source_mean"][j])
    return np.clip(value, 0.0, 1.0)


class Scene(NamedTuple):
    """One scene's [S, S] maps; the first three are a stereo module sample's."""

    left: np.ndarray  # in [0, 1]
    right: np.ndarray
    disparity: np.ndarray  # the right view's, NaN where occluded: right(x) ~ left(x + d(x))
    # the left view's, known everywhere: left(u) is seen at right(u - d(u)), the Middlebury
    # convention of ``stereo.right_view_disparity``
    left_disparity: np.ndarray
    layer: np.ndarray  # the layer the right view shows, by rank of disparity (0: farthest)
    num_layers: int


def render_scene(textures: Textures, rng: np.random.Generator, settings: SceneSettings) -> Scene:
    """One scene drawn from ``rng``; the maps are float32, ``layer`` int64."""
    s = settings.size
    c = (s - 1) / 2
    p = _layers(rng, textures, settings)
    y = np.arange(s, dtype=np.float64)[:, None] + np.zeros((1, s))
    x = np.arange(s, dtype=np.float64)[None, :] + np.zeros((s, 1))
    # left view: layer j shows its own surface point u at pixel u
    d_left = _left_disparity(p, c, y, x)
    front_left = _front(_covers(p, y, x), d_left)
    left = _shade(textures, p, front_left, y, x)
    d_left = np.take_along_axis(d_left, front_left[None], 0)[0]
    # right view: pixel x sees layer j's surface point u = x + d_j(x, y)
    a, gx, gy = _plane(p, c)
    d = a + gx * x + gy * y  # [n, S, S]
    u = x + d
    front_right = _front(_covers(p, y, u), d)
    truth = np.take_along_axis(d, front_right[None], 0)[0]
    u_front = x + truth
    right = _shade(textures, p, front_right, y, u_front)
    # occluded: another layer is in front of that surface point in the left view
    seen = _front(_covers(p, y, u_front), _left_disparity(p, c, y, u_front)) == front_right
    disparity = np.where(seen, truth, np.nan)
    maps = (v.astype(np.float32) for v in (left, right, disparity, d_left))
    rank = np.argsort(np.argsort(p["d0"]))
    return Scene(*maps, layer=rank[front_right], num_layers=p["n"])


def render_set(textures: Textures, seed: int, count: int, settings: SceneSettings) -> StereoPairs:
    """``count`` scenes; scene i uses ``sample_rng(seed, i)``, so a set is a prefix of a larger."""
    views = np.zeros((3, count, settings.size, settings.size), np.float32)
    for i in range(count):
        views[:, i] = render_scene(textures, sample_rng(seed, i), settings)[:3]
    return StereoPairs(*views)


# --------------------------------------------------------------------------- fixed sets


def load_or_generate(path: Path, generate, count: int, size: int) -> StereoPairs:
    """The cached set at ``path``; (re)generated with ``generate()`` and cached atomically if the
    file is missing, unreadable or of the wrong shape."""

    def views() -> dict[str, np.ndarray]:
        pairs = generate()
        return dict(zip(VIEWS, (pairs.left, pairs.right, pairs.disparity), strict=True))

    expected = dict.fromkeys(VIEWS, ((count, size, size), np.float32))
    return StereoPairs(*read_or_generate(path, expected, views).values())


class SceneStream(Dataset):
    """Freshly drawn training scenes: item i is rendered from ``sample_rng(seed, i)``."""

    def __init__(self, textures: Textures, seed: int, settings: SceneSettings) -> None:
        self.textures, self.seed, self.settings = textures, seed, settings

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        scene = render_scene(self.textures, sample_rng(self.seed, index), self.settings)
        return _sample(*scene[:3])


def _check_number(name: str, value: object, low: float, high: float) -> float:
    if not isinstance(value, Real) or isinstance(value, bool) or not low <= value <= high:
        raise InputError(f"data.{name}={value!r}; expected a number in [{low:g}, {high:g}]")
    return float(value)


# --------------------------------------------------------------------------- data module


class StereoScenesDataModule(StreamDataModule):
    """Procedural stereo scenes (see the module docstring); ``max_disparity`` is the largest
    |disparity| in pixels, at most a quarter of the crop (beyond that most matches leave it)."""

    def __init__(
        self,
        crop_size: int = 64,
        min_layers: int = 2,
        max_layers: int = 5,
        max_disparity: float = 5.0,
        max_slant: float = 4.0,
        layout: str = "ground",
        texture_dir: str | None = None,
        val_size: int = 200,
        test_size: int = 1000,
        cache_dir: str = "outputs/data",
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        steps_per_epoch: int = 1000,
    ) -> None:
        super().__init__(batch_size, num_workers, steps_per_epoch)
        check_integers(
            crop_size=(crop_size, 16),
            min_layers=(min_layers, 1),
            max_layers=(max_layers, 1),
            val_size=(val_size, 1),
            test_size=(test_size, 1),
        )
        if max_layers < min_layers:
            raise InputError(
                f"data.max_layers={max_layers} is below data.min_layers={min_layers}; expected "
                "min_layers <= max_layers (the number of layers, background included)"
            )
        self.max_disparity = _check_number(
            "max_disparity", max_disparity, 0.5, crop_size // 4
        )  # fmt: skip
        _check_number("max_slant", max_slant, 0.0, 2 * self.max_disparity)
        if layout not in LAYOUTS:
            raise InputError(f"data.layout={layout!r}; expected one of {', '.join(LAYOUTS)}")
        if seed in EVAL_SEEDS.values():
            raise InputError(
                f"data.seed={seed} is the seed of the fixed validation or test scenes "
                f"({EVAL_SEEDS}); pick another training seed"
            )
        self.save_hyperparameters()
        self.settings = SceneSettings(
            crop_size, min_layers, max_layers, self.max_disparity, float(max_slant), layout
        )
        self.texture_dir = texture_dir
        self._textures: dict[str, Textures] | None = None
        if texture_dir is not None:
            self.textures("train")  # read and check the folder now, not after the model is built

    def _images(self) -> dict[str, list[np.ndarray]]:
        if self.texture_dir is None:
            return {name: load_images(SPLITS[name]) for name in ("train", "val", "test")}
        s = self.settings
        return load_texture_dir(self.texture_dir, s.size + 2 * int(np.ceil(s.max_disparity + 1)))

    def textures(self, split: str) -> Textures:
        if self._textures is None:
            images = self._images()
            self._textures = {
                name: Textures.from_images(split_images, 2 * self.settings.size)
                for name, split_images in images.items()
            }
        return self._textures[split]

    def cache_path(self) -> Path:
        """The test set's cache file, named by everything its content depends on."""
        textures = self.textures("test")
        key = hashlib.sha1(textures.pixels.tobytes())
        key.update(json.dumps(self.settings.__dict__, sort_keys=True).encode())
        source = "skimage" if self.texture_dir is None else "dir"
        name = (
            f"stereo_scenes_v{CACHE_VERSION}_test_{source}-{key.hexdigest()[:10]}"
            f"_n{self.hparams.test_size}_s{self.settings.size}_seed{EVAL_SEEDS['test']}.h5"
        )
        return Path(self.hparams.cache_dir) / name

    def _test_pairs(self) -> StereoPairs:
        n = self.hparams.test_size
        return load_or_generate(
            self.cache_path(),
            lambda: render_set(self.textures("test"), EVAL_SEEDS["test"], n, self.settings),
            n,
            self.settings.size,
        )

    def prepare_data(self) -> None:
        self._test_pairs()  # fill the cache once per node

    def setup(self, stage: str | None = None) -> None:
        hp, size = self.hparams, self.settings.size
        if stage in ("fit", None):
            self.train_set = SceneStream(self.textures("train"), hp.seed, self.settings)
        if stage in ("fit", "validate", None):
            val = render_set(self.textures("val"), EVAL_SEEDS["val"], hp.val_size, self.settings)
            self.val_set = _FixedCrops(val, size, [(i, 0, 0) for i in range(hp.val_size)])
        if stage in ("test", None):
            test = self._test_pairs()
            self.test_set = _FixedCrops(test, size, [(i, 0, 0) for i in range(hp.test_size)])
