"""Replay camera: real images from a folder or an MVTec-layout data set, as camera frames."""

import logging
import pathlib
from typing import List, Sequence, Tuple, Union

import cv2
import numpy as np

from hetnet_ros.cameras.base import (
    Camera, CameraFrameError, CameraNotFoundError, EndOfStreamError)
from hetnet_ros.imaging import rgb_from_array

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')


def list_replay_images(source: Union[str, pathlib.Path]) -> List[pathlib.Path]:
    """List the images a replay of `source` shows, in replay order.

    `source` may be one image file, an MVTec-layout data set root, or any other
    folder. An MVTec-layout root is a folder with a `test/` folder of defect-type
    folders. Its images are `test/<type>/*`, which leaves out `train/` and
    `ground_truth/`. Any other folder contributes every image below it, recursively.
    Extensions are matched case-insensitively and hidden files are skipped. The
    order is sorted by path relative to `source`, so it is the same on every machine.

    Raises:
        CameraNotFoundError: `source` does not exist or contains no images.
    """
    source = pathlib.Path(source).expanduser()
    if not source.exists():
        raise CameraNotFoundError(
            f'replay source {source} does not exist; set the source to a folder of images, '
            'an image file, or the root of an MVTec-layout data set')

    if source.is_file():
        images = [source] if _is_image(source) else []
    elif (source / 'test').is_dir() and any(path.is_dir() for path in (source / 'test').iterdir()):
        images = [
            path for type_folder in (source / 'test').iterdir() if type_folder.is_dir()
            for path in type_folder.iterdir() if path.is_file() and _is_image(path)]
    else:
        images = [path for path in source.rglob('*') if path.is_file() and _is_image(path)]

    if not images:
        raise CameraNotFoundError(
            f'replay source {source} contains no images with the extensions '
            f'{", ".join(IMAGE_EXTENSIONS)} (any case); point the source at a folder that '
            'holds images')
    base = source if source.is_dir() else source.parent
    return sorted(images, key=lambda path: path.relative_to(base).as_posix())


class ReplayCamera(Camera):
    """Camera that replays image files, one per read.

    Args:
        source: image file, folder or MVTec-layout data set root (see `list_replay_images`).
        loop: start over after the last image; without it, read raises EndOfStreamError.
        shuffle: show the images in a random order, a new permutation for every pass.
        seed: seed of that random order, so a shuffled replay is reproducible.
    """

    def __init__(
            self,
            source: Union[str, pathlib.Path],
            loop: bool = True,
            shuffle: bool = False,
            seed: int = 0):
        super().__init__(name=f'replay:{source}')
        self.source = pathlib.Path(source)
        self.loop = loop
        self.shuffle = shuffle
        self.seed = seed
        self._images: List[pathlib.Path] = []
        self._order: Sequence[int] = ()
        self._position = 0
        self._rng = np.random.default_rng(seed)

    @property
    def images(self) -> List[pathlib.Path]:
        """Images of this replay in sorted order (empty before open())."""
        return list(self._images)

    def _open(self) -> None:
        self._images = list_replay_images(self.source)
        self._rng = np.random.default_rng(self.seed)
        self._start_pass()
        logger.info('replaying %d images from %s', len(self._images), self.source)

    def _read(self, timeout_s: float) -> Tuple[np.ndarray, str]:
        # Reading a file needs no wait, so timeout_s is not used.
        if self._position >= len(self._order):
            if not self.loop:
                raise EndOfStreamError(
                    f'replay of {self.source} finished after {len(self._images)} images; '
                    'enable loop to start over')
            logger.debug('replay of %s starts over', self.source)
            self._start_pass()

        path = self._images[self._order[self._position]]
        self._position += 1

        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise CameraFrameError(
                f'cannot read image {path}: the file is missing, unreadable or not a '
                'supported image; replace or remove it')
        try:
            rgb = rgb_from_array(image, channel_order='bgr')
        except ValueError as error:
            raise CameraFrameError(f'cannot convert image {path} to RGB: {error}') from error
        return rgb, str(path)

    def _close(self) -> None:
        self._order = ()
        self._position = 0

    def _start_pass(self) -> None:
        count = len(self._images)
        self._order = self._rng.permutation(count) if self.shuffle else range(count)
        self._position = 0


def _is_image(path: pathlib.Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith('.')
