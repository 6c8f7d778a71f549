"""Datasets in the MVTec AD folder layout.

The layout, relative to the dataset root::

    train/good/*.png                       normal training images
    test/good/*.png                        normal test images
    test/<defect_type>/*.png               defective test images
    ground_truth/<defect_type>/<stem>_mask.png   masks of the defective test images

Image files may be PNG, JPEG, BMP or TIFF, matched case-insensitively by extension.
"""

import dataclasses
import logging
import pathlib
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from hetnet_ros.data.preprocess import resize_mask, resize_rgb, rgb_to_tensor, to_rgb_uint8

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff'})
NORMAL_TYPE = 'good'
MASK_SUFFIX = '_mask'

LAYOUT_HELP = (
    'expected the MVTec AD layout: train/good/, test/good/, test/<defect_type>/ and '
    'ground_truth/<defect_type>/<stem>_mask.png')


class DatasetError(Exception):
    """Error raised when a dataset folder is missing or empty, or one of its files cannot be read."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image of a dataset and its labels."""

    image_path: pathlib.Path
    defect_type: str
    label: int  # 0 normal, 1 defective
    mask_path: Optional[pathlib.Path]  # None for normal images


def list_images(folder: pathlib.Path) -> list[pathlib.Path]:
    """Return the image files directly inside a folder, sorted by name.

    Hidden files (names starting with '.') are skipped.
    """
    return sorted(
        path for path in folder.iterdir()
        if path.is_file() and not path.name.startswith('.')
        and path.suffix.lower() in IMAGE_EXTENSIONS)


def spread_indices(count: int, limit: Optional[int]) -> list[int]:
    """Pick `limit` of `count` indices spread evenly over the range, in ascending order.

    The choice is deterministic: index i of the result is floor(i * count / limit).
    With limit None or not below count, all indices are returned.
    """
    if limit is None or limit >= count:
        return list(range(count))
    if limit < 1:
        raise ValueError(f'the image limit must be at least 1, got {limit}')
    return [(i * count) // limit for i in range(limit)]


def read_image(path: pathlib.Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3).

    Grayscale, RGBA and 16-bit files are converted as `to_rgb_uint8` describes.

    Raises:
        DatasetError: the file cannot be decoded.
    """
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DatasetError(f'failed to read image {path}: the file is missing, truncated or not an image')
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    try:
        return to_rgb_uint8(array)
    except ValueError as error:
        raise DatasetError(f'failed to convert image {path}: {error}') from error


def read_mask(path: pathlib.Path) -> np.ndarray:
    """Read a ground-truth mask file as an (H, W) array; nonzero values mark defects.

    Raises:
        DatasetError: the file cannot be decoded.
    """
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DatasetError(f'failed to read mask {path}: the file is missing, truncated or not an image')
    if array.ndim == 3:
        array = array.max(axis=2)
    return array


def _require_folder(folder: pathlib.Path) -> None:
    if not folder.is_dir():
        raise DatasetError(f'folder not found: {folder}; {LAYOUT_HELP}')


def _index_masks(mask_folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """Map lower-case image stems to their mask files (`<stem>_mask.<ext>`)."""
    if not mask_folder.is_dir():
        return {}
    index = {}
    for path in list_images(mask_folder):
        stem = path.stem.lower()
        if stem.endswith(MASK_SUFFIX):
            index[stem[:-len(MASK_SUFFIX)]] = path
    return index


def find_samples(
        root: pathlib.Path, split: str, max_images: Optional[int] = None,
        max_images_per_type: Optional[int] = None,
        defect_types: Optional[Sequence[str]] = None) -> list[Sample]:
    """List the samples of one split of an MVTec-layout dataset.

    Args:
        root: dataset root folder.
        split: 'train' (train/good only) or 'test' (test/good and every test/<defect_type>).
        max_images: keep at most this many samples in all, spread evenly over the sorted list.
        max_images_per_type: keep at most this many samples of each folder (test/good counts
            as one type), spread evenly by file name. Applied before `max_images`.
        defect_types: for the test split, the folders to use; None means all of them.

    Raises:
        DatasetError: a folder is missing or contains no images, or a defect image has no mask.
    """
    root = pathlib.Path(root)
    if split not in ('train', 'test'):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    _require_folder(root)
    split_folder = root / split
    _require_folder(split_folder)

    if split == 'train':
        type_names = [NORMAL_TYPE]
    else:
        type_names = sorted(path.name for path in split_folder.iterdir()
                            if path.is_dir() and not path.name.startswith('.'))
        if defect_types is not None:
            unknown = sorted(set(defect_types) - set(type_names))
            if unknown:
                raise DatasetError(
                    f'defect types {unknown} not found in {split_folder}; available: {type_names}')
            type_names = [name for name in type_names if name in set(defect_types)]
        if not type_names:
            raise DatasetError(f'{split_folder} has no subfolders; {LAYOUT_HELP}')

    samples: list[Sample] = []
    for type_name in type_names:
        folder = split_folder / type_name
        _require_folder(folder)
        paths = list_images(folder)
        if not paths:
            raise DatasetError(
                f'{folder} contains no images (looked for {", ".join(sorted(IMAGE_EXTENSIONS))}, '
                f'any case); {LAYOUT_HELP}')
        paths = [paths[i] for i in spread_indices(len(paths), max_images_per_type)]
        if type_name == NORMAL_TYPE:
            samples.extend(Sample(path, type_name, 0, None) for path in paths)
            continue

        mask_folder = root / 'ground_truth' / type_name
        masks = _index_masks(mask_folder)
        for path in paths:
            mask_path = masks.get(path.stem.lower())
            if mask_path is None:
                raise DatasetError(
                    f'no ground-truth mask for {path}: expected '
                    f'{mask_folder / (path.stem + MASK_SUFFIX)}.png (any image extension); {LAYOUT_HELP}')
            samples.append(Sample(path, type_name, 1, mask_path))

    return [samples[i] for i in spread_indices(len(samples), max_images)]


class MVTecDataset(Dataset):
    """One split of an MVTec-layout dataset, resized for the model.

    Each item is a dict with
    'image' float tensor (3, S, S) RGB in [0, 1],
    'mask' float tensor (1, S, S) with 1 on defect pixels (all zeros for normal images),
    'label' int (0 normal, 1 defective), 'defect_type' str and 'path' str.
    Images are resized with `resize_rgb`, masks with nearest-neighbour.
    """

    def __init__(
            self, root: pathlib.Path | str, split: str = 'train', image_size: int = 256,
            max_images: Optional[int] = None, max_images_per_type: Optional[int] = None,
            defect_types: Optional[Sequence[str]] = None, cache: bool = False,
            samples: Optional[Sequence[Sample]] = None):
        """Find the samples; images are read lazily.

        Args:
            root: dataset root folder.
            split: 'train' or 'test'.
            image_size: side length S of the square output images, in pixels.
            max_images, max_images_per_type, defect_types: see `find_samples`.
            cache: keep the resized images in memory after the first read (S * S * 3 bytes each).
            samples: use these samples in place of searching `root` (for example a subset
                of another dataset's samples).
        """
        if image_size < 1:
            raise ValueError(f'image_size must be a positive number of pixels, got {image_size}')
        self.root = pathlib.Path(root)
        self.split = split
        self.image_size = image_size
        if samples is None:
            samples = find_samples(self.root, split, max_images, max_images_per_type, defect_types)
        self.samples = list(samples)
        self.cache = cache
        self._cached: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        logger.debug('%s split of %s: %d images', split, self.root, len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def defect_types(self) -> list[str]:
        """Distinct defect types of the samples, in order of first appearance."""
        return list(dict.fromkeys(sample.defect_type for sample in self.samples))

    def load_resized(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the resized RGB uint8 image (S, S, 3) and bool mask (S, S) of one sample."""
        if index in self._cached:
            return self._cached[index]
        sample = self.samples[index]
        rgb = resize_rgb(read_image(sample.image_path), self.image_size)
        if sample.mask_path is None:
            mask = np.zeros((self.image_size, self.image_size), dtype=bool)
        else:
            mask = resize_mask(read_mask(sample.mask_path), self.image_size)
        if self.cache:
            self._cached[index] = (rgb, mask)
        return rgb, mask

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        rgb, mask = self.load_resized(index)
        return {
            'image': rgb_to_tensor(rgb),
            'mask': torch.from_numpy(mask).float().unsqueeze(0),
            'label': sample.label,
            'defect_type': sample.defect_type,
            'path': str(sample.image_path),
        }
