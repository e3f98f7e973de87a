"""Highway driving video (paper section 4.2): predict 3 frames of traffic from 3 frames.

Files (the authors' format): ``{prefix}_train.h5`` and ``{prefix}_test.h5``, or ``train.h5`` and
``test.h5`` in a folder, each with a ``highway_L`` dataset [N, 64, 64] of grayscale frames in time
order (uint8, or float in [0, 1]), and optionally a ``cuts`` dataset, the indices of the frames
that start a new scene (``datamodules.h5``). ``path=DIR`` or ``path=PREFIX`` names such a pair;
``train_path`` / ``test_path`` name single files. ``scripts/video_to_h5.py`` writes them from a
video or image folder. Without a path, ``render_highway`` simulates the traffic with highway-env
once and caches it under ``cache_dir``.

The simulated camera. A square top-down view of 32 m x 32 m over a straight 7-lane road (28 m
of road, 2 m of verge either side), rendered at 256 x 256 and box-averaged to 64 x 64 (2 px per
metre; a car, 5 m x 2 m, is 10 x 4 px). The camera rides with one car in the middle of the
traffic and stays centred on the road, like a dashcam looking down: the road slides under it and
cars drift relative to it. 10 frames per second, one simulation step per frame (policy frequency
= simulation frequency), so 20,000 frames are 33 minutes of driving, like the authors' 30-minute
video. All cars, the ego car included, drive by IDM and MOBIL lane changes; the 36 cars live on a
160 m ring around the camera (a car that falls more than 80 m behind is moved 160 m ahead in its
lane once there is room, and vice versa), so the traffic keeps its density, with jams and free
flow. Episodes end after 120 s or when the ego car crashes, and a new one starts (a scene cut
about every 1,200 frames). highway-env's default view (600 x 150 px at 5.5 px per metre, 4
lanes) shrunk to 64 x 64 is a thin road in a grey field with 2-px cars; this one is all road.

Motion, measured from the simulator's speeds over the 20,000 default frames (seed 0), in 64 x 64
pixels per frame: the road (lane marks) moves 2.7 px on average and 4.0 px at most (the camera
car drives at 1-24 m/s; IDM keeps it under its target speed, drawn in 21-24 m/s: 4.8 px); cars move
-3.1 to +3.3 px relative to the camera (1st-99th percentile -1.1 to +1.5), at most 0.9 px
sideways. Every displacement is within the 11 x 11 filter's reach of +-5 px. On average 5.5 cars
are in view (2 to 10) besides the camera's own. Block matching of consecutive frames (textured
16 x 16 blocks, quarter-pixel steps, 300 pairs) agrees: the best shift within +-5 px leaves a mean
absolute error of 3.3 grey levels, the best within +-8 px 3.2, no motion 5.8 (the road marks
repeat every 8 px across and 8.7 px along the road, so the matcher cannot do better than that).
Consecutive frames differ by 4.4 grey levels on average, 2.0 at least. Rendering 20,000 frames
took 5.0 minutes here (2 CPU cores shared with other jobs; 15-25 ms per frame).

Split and sampling. The first 80 % of the rendered frames (16,000 of 20,000) are the training
file, the last 20 % the test file, as in the paper. Validation holds out the last
``val_fraction`` of the training frames (at least one window), time-ordered, and serves every
window that starts there; training windows start at random frames before it (sample i's start is
drawn from ``sample_rng(seed, i)``); the test serves every start, or the first ``test_size``.
No window spans a scene cut: the frames after a cut are not the future of those before it. The
simulated video records its new episodes as cuts.
Batches are float32 tensors [B, num_input + num_predicted, 1, H, W] in [0, 1].
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datamodules.h5 import CUTS, read_cuts, read_frames, split_paths, write_h5_atomic
from datamodules.stream import StreamDataModule, check_integers, sample_rng
from dfn.errors import InputError

log = logging.getLogger(__name__)

DATASET = "highway_L"
TEST_FRACTION = 0.2  # 16,000 train / 4,000 test frames of 20,000, as in the paper
RENDER_VERSION = 2  # bump when the renderer changes, so old caches are not reused
SUPERSAMPLE = 4  # rendered at 4x the image size, then box-averaged: antialiasing


def to_gray(image: np.ndarray, size: int) -> np.ndarray:
    """An RGB [H, W, 3] or gray [H, W] uint8 image -> uint8 [size, size] luma (ITU-R 601),
    resized by area averaging (the antialiasing filter for shrinking). The aspect ratio is not
    kept: the whole frame is squeezed into the square, as for the authors' 64x64 frames."""
    picture = Image.fromarray(np.ascontiguousarray(image))
    if picture.mode != "L":
        picture = picture.convert("L")
    if picture.size != (size, size):
        picture = picture.resize((size, size), Image.Resampling.BOX)
    return np.asarray(picture)


# --------------------------------------------------------------------------- simulator


class _Camera:
    """What highway-env's viewer follows: the camera car's x, the road's centre line in y."""

    def __init__(self, car, y: float) -> None:
        self.car, self.y = car, y

    @property
    def position(self) -> np.ndarray:
        return np.array([self.car.position[0], self.y])


def _ring_traffic(road, centre: float, ring_m: float) -> None:
    """Move cars that left the ring around ``centre`` to its other end, in their lane, once
    nothing in that lane is within 20 m of the spot (so IDM never sees an overlap)."""
    for car in road.vehicles:
        dx = car.position[0] - centre
        if abs(dx) <= ring_m / 2:
            continue
        x = car.position[0] - np.sign(dx) * ring_m
        if all(
            other.lane_index != car.lane_index or abs(other.position[0] - x) > 20
            for other in road.vehicles
            if other is not car
        ):
            car.position = np.array([x, car.position[1]])


def render_highway(
    num_frames: int,
    size: int = 64,
    seed: int = 0,
    *,
    view_m: float = 32.0,
    lanes: int = 7,
    fps: int = 10,
    cars: int = 36,
    density: float = 2.0,
    ring_m: float = 160.0,
    episode_s: float = 120.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulated highway traffic seen from above: frames, uint8 [num_frames, size, size], and the
    scene cuts, the indices of the frames that start a new episode (int64).

    ``view_m``: side of the square view in metres; ``lanes``: 4 m each; ``fps``: frames (and
    simulation steps) per second; ``cars``: on a ``ring_m`` ring around the camera, spawned with
    highway-env's ``vehicles_density``; ``episode_s``: episode length. Deterministic in ``seed``.
    Raises RuntimeError when the renderer draws blank or frozen frames (e.g. SDL's ``dummy``
    video driver, which draws nothing).
    """
    # Headless drawing: the "dummy" driver makes highway-env skip drawing (black frames).
    os.environ["SDL_VIDEODRIVER"] = "offscreen"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    from highway_env.envs.highway_env import HighwayEnvFast
    from highway_env.vehicle.behavior import IDMVehicle

    screen = size * SUPERSAMPLE
    env = HighwayEnvFast(
        config={
            "observation": {"type": "AttributesObservation", "attributes": []},  # costs nothing
            "lanes_count": lanes,
            "vehicles_count": cars - 1,  # besides the ego car
            "vehicles_density": density,
            "duration": episode_s,
            "simulation_frequency": fps,
            "policy_frequency": fps,
            "screen_width": screen,
            "screen_height": screen,
            "scaling": screen / view_m,
            "centering_position": [0.5, 0.5],
            "offscreen_rendering": True,
        },
        render_mode="rgb_array",
    )
    road_centre = (lanes - 1) * 4.0 / 2  # lane centres are at y = 0, 4, 8, ... metres

    def new_episode(episode_seed: int | None) -> _Camera:
        env.reset(seed=episode_seed)
        # The ego car drives like the others (IDM + MOBIL): no agent policy, and it rarely crashes.
        ego = IDMVehicle.create_from(env.vehicle)
        env.road.vehicles[env.road.vehicles.index(env.vehicle)] = ego
        env.controlled_vehicles[0] = ego
        cars_in_order = sorted(env.road.vehicles, key=lambda car: car.position[0])
        camera = _Camera(cars_in_order[len(cars_in_order) // 2], road_centre)
        env.render()  # creates the viewer
        env.viewer.observer_vehicle = camera
        return camera

    frames = np.empty((num_frames, size, size), np.uint8)
    cuts = []
    try:
        camera = new_episode(seed)
        for t in range(num_frames):
            _, _, crashed, timed_out, _ = env.step(0)  # the action is ignored by the IDM ego car
            _ring_traffic(env.road, camera.car.position[0], ring_m)
            frames[t] = to_gray(env.render(), size)
            if frames[t].min() == frames[t].max():
                raise RuntimeError(
                    f"highway-env rendered a blank frame (all pixels {frames[t, 0, 0]}) at frame "
                    f"{t}: pygame draws nothing (SDL_VIDEODRIVER="
                    f"{os.environ.get('SDL_VIDEODRIVER')!r}; it must be 'offscreen')"
                )
            if (crashed or timed_out) and t + 1 < num_frames:
                camera = new_episode(None)
                cuts.append(t + 1)
    finally:
        env.close()
    frozen = float((frames[1:] == frames[:-1]).all(axis=(1, 2)).mean()) if num_frames > 1 else 0.0
    if frozen > 0.01:
        raise RuntimeError(
            f"highway-env rendered frozen video: {frozen:.0%} of consecutive frames are identical"
        )
    return frames, np.array(cuts, np.int64)


def cache_prefix(cache_dir: str | Path, num_frames: int, size: int, seed: int) -> Path:
    """The rendered video's files are ``{prefix}_train.h5`` and ``{prefix}_test.h5``."""
    return Path(cache_dir) / f"highway_v{RENDER_VERSION}_n{num_frames}_{size}px_seed{seed}"


def _cache_is_valid(paths: tuple[Path, Path], lengths: tuple[int, int], size: int) -> bool:
    try:
        for path, length in zip(paths, lengths, strict=True):
            with h5py.File(path, "r") as f:
                data = f[DATASET]
                if data.shape != (length, size, size) or data.dtype != np.uint8 or CUTS not in f:
                    return False
    except (OSError, KeyError):
        return False
    return True


def render_cached(
    cache_dir: str | Path, num_frames: int, size: int, seed: int
) -> tuple[Path, Path]:
    """(train, test) files of the rendered video, rendered and written once, then reused."""
    paths = split_paths(cache_prefix(cache_dir, num_frames, size, seed))
    num_test = round(num_frames * TEST_FRACTION)
    if _cache_is_valid(paths, (num_frames - num_test, num_test), size):
        return paths
    log.info("rendering %d highway frames with highway-env into %s", num_frames, paths[0].parent)
    start = time.perf_counter()
    frames, cuts = render_highway(num_frames, size, seed)
    attrs = {"seed": seed, "version": RENDER_VERSION, "source": "highway-env"}
    num_train = num_frames - num_test  # a cut at the split starts the test file: none needed
    train = {DATASET: frames[:num_train], CUTS: cuts[cuts < num_train]}
    write_h5_atomic(paths[0], train, **attrs)
    test = {DATASET: frames[num_train:], CUTS: cuts[cuts > num_train] - num_train}
    write_h5_atomic(paths[1], test, **attrs)
    log.info("rendered %d frames in %.0f s", num_frames, time.perf_counter() - start)
    return paths


# --------------------------------------------------------------------------- datasets


def window_starts(num_frames: int, length: int, cuts: np.ndarray) -> np.ndarray:
    """The first frames of the windows of ``length`` consecutive frames that span no cut.

    Window [s, s + length) spans cut c when s < c < s + length; one may start at a cut.
    """
    spans = np.zeros(max(num_frames - length + 1, 0), bool)
    for cut in cuts:
        spans[max(cut - length + 1, 0) : cut] = True
    return np.flatnonzero(~spans)


class _RandomWindows(Dataset):
    """Training sample ``index``: the window at a start drawn from ``sample_rng(seed, index)``
    among ``starts``."""

    def __init__(self, frames: np.ndarray, starts: np.ndarray, length: int, seed: int) -> None:
        self.frames, self.starts, self.length, self.seed = frames, starts, length, seed

    def __getitem__(self, index: int) -> torch.Tensor:
        start = self.starts[sample_rng(self.seed, index).integers(len(self.starts))]
        return torch.from_numpy(self.frames[start : start + self.length, None])


class _AllWindows(Dataset):
    """The windows at ``starts``, in time order."""

    def __init__(self, frames: np.ndarray, starts: np.ndarray, length: int) -> None:
        self.frames, self.starts, self.length = frames, starts, length

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> torch.Tensor:
        start = self.starts[index]
        return torch.from_numpy(self.frames[start : start + self.length, None])


# --------------------------------------------------------------------------- data module


class HighwayDataModule(StreamDataModule):
    """Windows of ``num_input + num_predicted`` consecutive 64x64 frames of highway video.

    ``path`` (a folder with ``train.h5`` / ``test.h5``, or a prefix of ``_train.h5`` /
    ``_test.h5``) names the authors' files, ``train_path`` / ``test_path`` single files (they
    override ``path``'s); without any, the simulated video of ``num_frames`` frames (seed
    ``render_seed``) is rendered into ``cache_dir`` once. An epoch is ``steps_per_epoch``
    freshly sampled training batches.
    """

    def __init__(
        self,
        path: str | None = None,
        train_path: str | None = None,
        test_path: str | None = None,
        dataset: str = DATASET,
        num_input: int = 3,
        num_predicted: int = 3,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        steps_per_epoch: int = 1000,
        val_fraction: float = 0.05,
        test_size: int | None = None,
        num_frames: int = 20_000,
        image_size: int = 64,
        cache_dir: str = "outputs/data",
        render_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, steps_per_epoch)
        check_integers(
            num_input=(num_input, 1),
            num_predicted=(num_predicted, 1),
            image_size=(image_size, 1),
            num_frames=(num_frames, 2),
        )
        if test_size is not None and (not isinstance(test_size, int) or test_size < 1):
            raise InputError(f"data.test_size={test_size!r}; expected null or an integer >= 1")
        if not 0 < val_fraction < 1:
            raise InputError(f"data.val_fraction={val_fraction!r}; expected a number in (0, 1)")
        self.save_hyperparameters()
        self.window = num_input + num_predicted
        if path is not None:
            default_train, default_test = split_paths(path)
            train_path, test_path = train_path or default_train, test_path or default_test
        self.train_path, self.test_path = train_path, test_path
        self.simulated = train_path is None and test_path is None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def prepare_data(self) -> None:
        if self.simulated:
            hp = self.hparams
            render_cached(hp.cache_dir, hp.num_frames, hp.image_size, hp.render_seed)

    def _paths(self) -> tuple[Path, Path]:
        if self.simulated:
            hp = self.hparams
            return render_cached(hp.cache_dir, hp.num_frames, hp.image_size, hp.render_seed)
        return self.train_path, self.test_path

    def _read(
        self, path: str | Path | None, split: str, min_frames: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The file's frames and scene cuts."""
        if path is None:
            raise InputError(
                f"no {split} file: set data.path (a folder with {split}.h5, or a prefix of "
                f"_{split}.h5) or data.{split}_path, or neither to simulate the video"
            )
        frames = read_frames(path, self.hparams.dataset, min_frames)
        size = self.hparams.image_size
        if frames.shape[1:] != (size, size):
            raise InputError(
                f"{path}:{self.hparams.dataset} holds {frames.shape[1]}x{frames.shape[2]} frames; "
                f"expected {size}x{size} (data.image_size; scripts/video_to_h5.py --size resizes)"
            )
        return frames, read_cuts(path, len(frames))

    def _starts(self, num_frames: int, cuts: np.ndarray, frames_of: str) -> np.ndarray:
        """The starts of the windows that span no cut, or an InputError if there is none."""
        starts = window_starts(num_frames, self.window, cuts)
        if len(starts) == 0:
            raise InputError(
                f"{frames_of}: no {self.window} consecutive frames without a scene cut (cuts at "
                f"frames {cuts.tolist()}); expected a scene of at least {self.window} frames"
            )
        return starts

    def setup(self, stage: str | None = None) -> None:
        train_path, test_path = self._paths()
        if stage in (None, "fit", "validate"):
            # validation: the last val_fraction of the training frames, at least one window
            frames, cuts = self._read(train_path, "train", min_frames=self.window + 1)
            num_val = max(self.window, round(len(frames) * self.hparams.val_fraction))
            num_fit = len(frames) - num_val
            if num_fit < self.window:
                raise InputError(
                    f"{train_path} has {len(frames)} frames: too few for a training window of "
                    f"{self.window} frames and {num_val} validation frames; lower "
                    "data.val_fraction or give more frames"
                )
            fit_cuts, val_cuts = cuts[cuts < num_fit], cuts[cuts > num_fit] - num_fit
            fit_starts = self._starts(num_fit, fit_cuts, f"{train_path}, training frames")
            self.train_set = _RandomWindows(frames, fit_starts, self.window, self.hparams.seed)
            val_starts = self._starts(num_val, val_cuts, f"{train_path}, validation frames")
            self.val_set = _AllWindows(frames[num_fit:], val_starts, self.window)
        if stage in (None, "test", "predict"):
            frames, cuts = self._read(test_path, "test", min_frames=self.window)
            starts = self._starts(len(frames), cuts, str(test_path))
            self.test_set = _AllWindows(frames, starts[: self.hparams.test_size], self.window)
