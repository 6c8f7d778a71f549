"""Image conversion and resizing shared by training, evaluation and inference.

Every image that reaches the model passes through `to_rgb_uint8` and `resize_rgb`, so
a camera frame at run time is prepared exactly like a training image.
"""

from typing import Sequence

import cv2
import numpy as np
import torch


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Convert an image array to RGB uint8 of shape (H, W, 3).

    Accepted layouts are (H, W) and (H, W, 1) grayscale, (H, W, 3) RGB and (H, W, 4) RGBA.
    The alpha channel is dropped, not composited. Accepted dtypes are uint8, uint16
    (scaled by 255/65535), bool, and float with values in [0, 1] (values outside are
    clipped). The channel order is taken as RGB: convert OpenCV's BGR before calling.

    Raises:
        ValueError: the array is empty, has another shape or dtype, or contains NaN or inf.
    """
    if not isinstance(array, np.ndarray):
        raise ValueError(
            f'image must be a numpy array, got {type(array).__name__}; '
            'convert it with numpy.asarray first')
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        channels = 1
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        channels = array.shape[2]
    else:
        raise ValueError(
            f'image has shape {array.shape}; expected (H, W) or (H, W, 1) grayscale, '
            '(H, W, 3) RGB or (H, W, 4) RGBA')
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f'image is empty (shape {array.shape}); pass an image with at least one pixel')

    converted = _to_uint8(array)
    if channels == 1:
        return np.ascontiguousarray(np.repeat(converted[:, :, None], 3, axis=2))
    return np.ascontiguousarray(converted[:, :, :3])


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        # Rounded division by 257 maps 0..65535 onto 0..255 exactly at both ends.
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ValueError(
                'image contains NaN or inf values; replace them before conversion, '
                'for example with numpy.nan_to_num')
        return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(
        f'image dtype {array.dtype} is not supported; use uint8, uint16, bool, '
        'or float with values in [0, 1]')


def resize_rgb(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """Resize an (H, W, 3) image to (image_size, image_size, 3).

    Shrinking uses area averaging (cv2.INTER_AREA), which avoids aliasing; enlarging
    uses bilinear interpolation (cv2.INTER_LINEAR).
    """
    height, width = rgb.shape[:2]
    if height == image_size and width == image_size:
        return rgb
    shrinking = height >= image_size and width >= image_size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (image_size, image_size), interpolation=interpolation)


def resize_mask(mask: np.ndarray, image_size: int) -> np.ndarray:
    """Resize a ground-truth mask to (image_size, image_size) bool with nearest-neighbour.

    Any nonzero value counts as defective. A multi-channel mask is defective where any
    channel is nonzero.
    """
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    binary = (mask > 0).astype(np.uint8)
    if binary.shape != (image_size, image_size):
        binary = cv2.resize(binary, (image_size, image_size), interpolation=cv2.INTER_NEAREST)
    return binary.astype(bool)


def rgb_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """Convert an (H, W, 3) uint8 image to a float tensor (3, H, W) with values in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


def prepare_batch(images: Sequence[np.ndarray], image_size: int) -> torch.Tensor:
    """Convert and resize images into one model input batch.

    Args:
        images: arrays of any layout and dtype that `to_rgb_uint8` accepts; sizes may differ.
        image_size: side length S of the square model input, in pixels.

    Returns:
        Float tensor (N, 3, S, S), RGB in [0, 1].

    Raises:
        ValueError: the sequence is empty or an image is invalid (the message names its index).
    """
    if len(images) == 0:
        raise ValueError('prepare_batch needs at least one image, got an empty sequence')
    tensors = []
    for index, image in enumerate(images):
        try:
            rgb = to_rgb_uint8(image)
        except ValueError as error:
            raise ValueError(f'image {index} of the batch is invalid: {error}') from error
        tensors.append(rgb_to_tensor(resize_rgb(rgb, image_size)))
    return torch.stack(tensors)
