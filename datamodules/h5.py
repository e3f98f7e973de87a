"""HDF5 frame files: validated reading and all-or-nothing writing.

The authors' format is one HDF5 file per split with 3-D datasets of grayscale frames
(`highway_L`, and `highway_R` for stereo), uint8 or float in [0, 1]. A file may also hold a
`cuts` dataset: the indices of the frames that start a new scene, whose previous frame is not
their past (the simulator's new episodes, the joins of concatenated clips).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from dfn.errors import InputError
from dfn.files import replacing

log = logging.getLogger(__name__)

CUTS = "cuts"


def split_paths(path: str | Path) -> tuple[Path, Path]:
    """The (train, test) files a ``path`` names: ``DIR/train.h5`` and ``DIR/test.h5`` for a
    folder, else ``PREFIX_train.h5`` and ``PREFIX_test.h5``."""
    path = Path(path)
    if path.is_dir():
        return path / "train.h5", path / "test.h5"
    return path.with_name(f"{path.name}_train.h5"), path.with_name(f"{path.name}_test.h5")


def write_h5_atomic(path: str | Path, arrays: dict[str, np.ndarray], **attrs) -> Path:
    """Write ``arrays`` as datasets of one HDF5 file; the file appears only once complete."""
    with replacing(path) as tmp, h5py.File(tmp, "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
        f.attrs.update(attrs)
    return Path(path)


def read_or_generate(
    path: Path,
    expected: dict[str, tuple[tuple[int, ...], type]],
    generate: Callable[[], dict[str, np.ndarray]],
    rows: int | None = None,
    **attrs,
) -> dict[str, np.ndarray]:
    """A generated data set cached at ``path``: the first ``rows`` (all by default) of each of
    its datasets, ``expected`` as name -> (shape, dtype). If the file is missing, unreadable or
    holds other shapes or dtypes, ``generate()`` makes them again and they are written
    atomically, with ``attrs``, for the next time."""
    try:
        with h5py.File(path, "r") as f:
            found = {name: (f[name].shape, f[name].dtype) for name in expected}
            if found == expected:
                return {name: f[name][:rows] for name in expected}
            problem = f"found {found}, expected {expected}"
    except FileNotFoundError:
        problem = None
    except (OSError, KeyError) as e:
        problem = f"unreadable ({e})"
    if problem:
        log.warning("regenerating the cache %s: %s", path, problem)
    start = time.perf_counter()
    arrays = generate()
    write_h5_atomic(path, arrays, **attrs)
    log.info("generated %s in %.1f s", path, time.perf_counter() - start)
    if rows is not None:
        arrays = {name: array[:rows].copy() for name, array in arrays.items()}
    return arrays


def read_frames(path: str | Path, dataset: str, min_frames: int = 1) -> np.ndarray:
    """Read a [N, H, W] frame dataset as float32 in [0, 1], or raise one clear InputError."""
    path = Path(path)
    expected = f"an HDF5 file with a 3-D dataset '{dataset}' of at least {min_frames} frames"
    if not path.is_file():
        raise InputError(f"data file not found: {path} (expected {expected})")
    try:
        with h5py.File(path, "r") as f:
            if dataset not in f:
                raise InputError(
                    f"{path} has no dataset '{dataset}' (found {sorted(f.keys())}; "
                    f"expected {expected})"
                )
            data = f[dataset]
            if data.ndim != 3:
                raise InputError(
                    f"{path}:{dataset} has shape {data.shape}; expected [frames, height, width]"
                )
            if data.shape[0] < min_frames:
                raise InputError(
                    f"{path}:{dataset} has {data.shape[0]} frames; expected at least {min_frames}"
                )
            if data.dtype != np.uint8 and data.dtype.kind != "f":
                raise InputError(
                    f"{path}:{dataset} has dtype {data.dtype}; expected uint8 or float in [0, 1]"
                )
            frames = data[()]
    except OSError as e:
        raise InputError(f"cannot read {path}: corrupt or truncated HDF5 file ({e})") from e
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) / 255.0
    frames = frames.astype(np.float32)
    if not np.isfinite(frames).all() or frames.min() < 0.0 or frames.max() > 1.0:
        raise InputError(
            f"{path}:{dataset} holds float values in [{np.nanmin(frames):.3g}, "
            f"{np.nanmax(frames):.3g}]; expected finite values in [0, 1]"
        )
    return frames


def read_cuts(path: str | Path, num_frames: int) -> np.ndarray:
    """The file's scene cuts (int64, empty without a ``cuts`` dataset), or one clear InputError.

    A cut c means frames c - 1 and c belong to different scenes; cuts are strictly increasing
    frame indices in [1, num_frames).
    """
    expected = f"strictly increasing frame indices in [1, {num_frames})"
    try:
        with h5py.File(path, "r") as f:
            if CUTS not in f:
                return np.zeros(0, np.int64)
            data = f[CUTS]
            if data.ndim != 1 or data.dtype.kind not in "iu":
                raise InputError(
                    f"{path}:{CUTS} has shape {data.shape} and dtype {data.dtype}; expected a 1-D "
                    f"integer dataset of {expected}"
                )
            cuts = data[()].astype(np.int64)
    except OSError as e:
        raise InputError(f"cannot read {path}: corrupt or truncated HDF5 file ({e})") from e
    if len(cuts) and (cuts[0] < 1 or cuts[-1] >= num_frames or (np.diff(cuts) <= 0).any()):
        shown = ", ".join(map(str, cuts[:8])) + (", ..." if len(cuts) > 8 else "")
        raise InputError(f"{path}:{CUTS} holds [{shown}]; expected {expected}")
    return cuts
