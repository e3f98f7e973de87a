"""Convert driving video into the authors' HDF5 format: grayscale frames, train/test split in time.

    python scripts/video_to_h5.py drive.mp4 -o data/drive            # mono: highway_L
    python scripts/video_to_h5.py frames/ -o data/drive              # a folder of images
    python scripts/video_to_h5.py left.mp4 right.mp4 -o data/stereo/  # stereo: highway_L, highway_R
    python scripts/video_to_h5.py kitti/2011_09_26_drive_0001_sync -o data/kitti/
    python scripts/video_to_h5.py --clips dashcam/*.mp4 -o data/drive   # clips of one video

An input is a video file (anything FFmpeg decodes, streamed with PyAV), a folder of images (taken
in name order), or a KITTI-style folder whose ``image_02/`` and ``image_03/`` subfolders (or their
``data/`` folders) hold the left and right views. Frames are turned into luma and shrunk to
``--size`` x ``--size`` by area averaging (the whole frame, aspect ratio not kept); ``--step``
keeps every k-th frame. The first frames go to ``OUT_train.h5``, the last ``--test-fraction`` to
``OUT_test.h5`` (``OUT/train.h5`` and ``OUT/test.h5`` when OUT is a folder or ends with a slash),
uint8 datasets ``highway_L`` (and ``highway_R``). With ``--clips`` the inputs are clips of one
mono video (a dashcam's files), joined in the order given, with a scene cut recorded at each join
(dataset ``cuts``), so that no training or test window spans two clips. Bad input gives one error
line and exit status 1, and no output file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from datamodules.h5 import CUTS, split_paths, write_h5_atomic
from datamodules.highway import to_gray
from dfn.errors import InputError
from dfn.run.cli import one_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
LEFT, RIGHT = "highway_L", "highway_R"


def _stack(frames: list[np.ndarray], source: Path, size: int) -> np.ndarray:
    if not frames:
        raise InputError(f"{source} holds no frames")
    return np.stack(frames).reshape(len(frames), size, size)


def read_video(
    path: str | Path, size: int = 64, step: int = 1, progress: bool = False
) -> np.ndarray:
    """Every ``step``-th frame of a video as uint8 [N, size, size], decoded one frame at a time."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"video not found: {path}")
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            bar = tqdm(
                total=stream.frames or None, desc=path.name, unit="frame", disable=not progress
            )
            with bar:
                for index, frame in enumerate(container.decode(stream)):
                    bar.update()
                    if index % step == 0:
                        frames.append(to_gray(frame.to_ndarray(format="rgb24"), size))
    except (av.FFmpegError, OSError) as e:
        raise InputError(f"cannot decode video {path}: {e}") from e
    return _stack(frames, path, size)


def read_image_folder(
    folder: str | Path, size: int = 64, step: int = 1, progress: bool = False
) -> np.ndarray:
    """Every ``step``-th image of a folder, in name order, as uint8 [N, size, size]."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[::step]
    if not files:
        raise InputError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    frames = []
    for file in tqdm(files, desc=folder.name, unit="image", disable=not progress):
        try:
            with Image.open(file) as image:
                frames.append(to_gray(np.asarray(image.convert("RGB")), size))
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"cannot read image {file}: {e}") from e
    return _stack(frames, folder, size)


def read_view(
    path: str | Path, size: int = 64, step: int = 1, progress: bool = False
) -> np.ndarray:
    """A video file or a folder of images as uint8 [N, size, size]."""
    path = Path(path)
    if path.is_dir():
        return read_image_folder(path, size, step, progress)
    return read_video(path, size, step, progress)


def read_clips(
    paths: Iterable[str | Path], size: int = 64, step: int = 1, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Clips of one video (videos or image folders), joined in order: uint8 frames [N, size,
    size] and the cuts, the index of the first frame of every clip but the first."""
    clips = []
    for path in map(Path, paths):
        if not path.exists():
            raise InputError(f"input not found: {path}")
        clips.append(read_view(path, size, step, progress))
    cuts = np.cumsum([len(clip) for clip in clips[:-1]], dtype=np.int64)
    return np.concatenate(clips), cuts


def _kitti_view(folder: Path, camera: str) -> Path:
    view = folder / camera
    return view / "data" if (view / "data").is_dir() else view


def read_views(
    inputs: Iterable[str | Path], size: int = 64, step: int = 1, progress: bool = False
) -> dict[str, np.ndarray]:
    """One input (video, image folder, or KITTI folder with image_02/ and image_03/) or a
    left/right pair -> {"highway_L": frames} or {"highway_L": left, "highway_R": right}."""
    inputs = [Path(p) for p in inputs]
    if len(inputs) == 1 and (inputs[0] / "image_02").is_dir() and (inputs[0] / "image_03").is_dir():
        inputs = [_kitti_view(inputs[0], "image_02"), _kitti_view(inputs[0], "image_03")]
    if len(inputs) not in (1, 2):
        raise InputError(f"expected one input or a left/right pair, got {len(inputs)} inputs")
    for path in inputs:
        if not path.exists():
            raise InputError(f"input not found: {path}")
    views = {
        name: read_view(path, size, step, progress)
        for name, path in zip((LEFT, RIGHT), inputs, strict=False)
    }
    if len(views) == 2 and len(views[LEFT]) != len(views[RIGHT]):
        raise InputError(
            f"left view {inputs[0]} has {len(views[LEFT])} frames but right view {inputs[1]} "
            f"has {len(views[RIGHT])}; a stereo pair needs the same number of frames"
        )
    return views


def convert(
    inputs: Iterable[str | Path],
    output: str | Path,
    size: int = 64,
    test_fraction: float = 0.2,
    step: int = 1,
    progress: bool = False,
    clips: bool = False,
) -> tuple[Path, Path]:
    """Write the train and test files of ``inputs`` (see ``read_views``, or ``read_clips`` with
    ``clips``) and return their paths: ``OUTPUT_train.h5`` / ``OUTPUT_test.h5``, or
    ``OUTPUT/train.h5`` / ``OUTPUT/test.h5`` when ``output`` is a folder (or ends with a slash)."""
    if not isinstance(size, int) or size < 1:
        raise InputError(f"--size must be a positive integer, got {size!r}")
    if not isinstance(step, int) or step < 1:
        raise InputError(f"--step must be a positive integer, got {step!r}")
    if not 0 < test_fraction < 1:
        raise InputError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    inputs = list(inputs)
    cuts = None
    if clips:
        frames, cuts = read_clips(inputs, size, step, progress)
        views = {LEFT: frames}
    else:
        views = read_views(inputs, size, step, progress)
    count = len(views[LEFT])
    num_test = round(count * test_fraction)
    if num_test < 1 or num_test >= count:
        raise InputError(
            f"{count} frames cannot be split into train and test with --test-fraction "
            f"{test_fraction}; give more frames"
        )
    if str(output).endswith(("/", "\\")):
        Path(output).mkdir(parents=True, exist_ok=True)
    train_path, test_path = split_paths(output)
    attrs = {"source": " ".join(str(p) for p in inputs), "step": step}
    split = count - num_test
    train = {k: v[:split] for k, v in views.items()}
    test = {k: v[split:] for k, v in views.items()}
    if cuts is not None:  # a join at the split starts the test file: no cut needed there
        train[CUTS], test[CUTS] = cuts[cuts < split], cuts[cuts > split] - split
    write_h5_atomic(train_path, train, **attrs)
    try:
        write_h5_atomic(test_path, test, **attrs)
    except BaseException:
        train_path.unlink(missing_ok=True)  # a train file without its test file is no dataset
        raise
    return train_path, test_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert video, image folders or stereo pairs to the authors' HDF5 format."
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="video, image folder, or pair")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_PREFIX")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (64)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="last part for test")
    parser.add_argument("--step", type=int, default=1, help="keep every STEP-th frame (1)")
    parser.add_argument(
        "--clips", action="store_true", help="the inputs are clips of one video, joined in order"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        paths = convert(
            args.inputs,
            args.output,
            size=args.size,
            test_fraction=args.test_fraction,
            step=args.step,
            progress=not args.quiet,
            clips=args.clips,
        )
    except Exception as e:  # bad input, a full disk, too little memory: one line; a bug: raised
        line = one_line(e)
        if line is None:
            raise
        print(f"video_to_h5: error: {line}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
