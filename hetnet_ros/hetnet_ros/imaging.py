"""Conversion between sensor_msgs/Image pixel buffers and NumPy arrays.

This module is pure NumPy and imports no rclpy, so the same code decodes images in
the nodes and in tests without a ROS graph. It replaces cv_bridge, which is not
available for ROS 2 from wheels.

Decoded images are RGB uint8 arrays of shape (H, W, 3). Where the encoding allows,
they are read-only views of the message buffer (no copy): rgb8, bgr8, rgba8, bgra8
and mono8. mono16 needs arithmetic and always returns a new array.

16-bit rule: a 16-bit value v becomes round(v / 257), which maps 0..65535 onto
0..255 with both ends exact. It is a fixed scale, so one intensity gives the same
8-bit value in every frame (a per-frame min-max stretch would change the contrast
from frame to frame and could create or hide anomalies). It is the same rule that
`hetnet_ros.data.preprocess.to_rgb_uint8` applies to 16-bit training images.
A sensor that fills only the low 12 bits comes out at most 1/16 as bright.
"""

import array
import sys
from typing import Tuple, Union

import numpy as np

# Pixel layout of each supported encoding: (channels, bytes per channel).
ENCODING_LAYOUTS = {
    'rgb8': (3, 1),
    'bgr8': (3, 1),
    'rgba8': (4, 1),
    'bgra8': (4, 1),
    'mono8': (1, 1),
    'mono16': (1, 2),
}

SUPPORTED_ENCODINGS = tuple(ENCODING_LAYOUTS)

FLOAT_MAP_ENCODING = '32FC1'

BufferLike = Union[bytes, bytearray, memoryview, array.array, np.ndarray]


class ImageDecodeError(ValueError):
    """An image message that cannot be decoded.

    Attributes:
        reason: short machine-readable cause, one of 'unsupported_encoding',
            'empty', 'step_too_small', 'size_mismatch'. Nodes use it to count
            and throttle errors per cause.
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def decode_image(
        encoding: str,
        height: int,
        width: int,
        step: int,
        data: BufferLike,
        is_bigendian: bool = False) -> np.ndarray:
    """Decode the fields of a sensor_msgs/Image into an RGB uint8 array.

    Args:
        encoding: one of SUPPORTED_ENCODINGS.
        height, width: image size in pixels.
        step: length of one row in bytes, padding included.
        data: pixel buffer of exactly height * step bytes (bytes, array.array('B')
            as rclpy delivers it, or a uint8 NumPy array).
        is_bigendian: byte order of 16-bit pixels; ignored for 8-bit encodings.

    Returns:
        Array (H, W, 3) uint8 in RGB order. For 8-bit encodings it is a read-only
        view of `data` (possibly non-contiguous), so copy it before modifying it or
        handing it to code that needs contiguous memory.

    Raises:
        ImageDecodeError: unsupported encoding, zero size, step shorter than one row
            of pixels, or a buffer whose length is not height * step.
    """
    channels, depth_bytes = _layout(encoding)
    rows = _row_view(encoding, height, width, step, data, channels * depth_bytes)

    if depth_bytes == 2:
        byte_order = '>' if is_bigendian else '<'
        pixels = rows.view(np.dtype(byte_order + 'u2'))
        return np.repeat(_scale_16_to_8(pixels)[:, :, None], 3, axis=2)

    pixels = rows.reshape(height, width, channels)
    if encoding == 'mono8':
        return np.broadcast_to(pixels, (height, width, 3))
    if encoding in ('bgr8', 'bgra8'):
        return pixels[:, :, 2::-1]
    return pixels[:, :, :3]


def decode_float_map(
        height: int,
        width: int,
        step: int,
        data: BufferLike,
        is_bigendian: bool = False) -> np.ndarray:
    """Decode a 32FC1 image (for example an anomaly map) into a float32 array (H, W).

    The result is a read-only view of `data` when the byte order matches this machine.

    Raises:
        ImageDecodeError: zero size, step shorter than width * 4, or a buffer whose
            length is not height * step.
    """
    rows = _row_view(FLOAT_MAP_ENCODING, height, width, step, data, 4)
    byte_order = '>' if is_bigendian else '<'
    return rows.view(np.dtype(byte_order + 'f4')).astype(np.float32, copy=False)


def encode_rgb8(rgb: np.ndarray) -> Tuple[int, bytes]:
    """Encode an RGB uint8 array (H, W, 3) as rgb8 pixel data.

    Returns:
        (step, data): row length in bytes (width * 3, no padding) and the pixels.

    Raises:
        ValueError: the array is not uint8 of shape (H, W, 3) with H, W > 0.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f'rgb8 encoding needs a uint8 array of shape (H, W, 3), got {rgb.dtype} '
            f'{rgb.shape}; convert grayscale or float images to RGB uint8 first')
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f'cannot encode an empty image of shape {rgb.shape}')
    return rgb.shape[1] * 3, np.ascontiguousarray(rgb).tobytes()


def encode_32fc1(float_map: np.ndarray) -> Tuple[int, bytes, bool]:
    """Encode a float map (H, W) as 32FC1 pixel data in this machine's byte order.

    Returns:
        (step, data, is_bigendian): row length in bytes (width * 4), the pixels as
        float32, and the byte order to put into the message.

    Raises:
        ValueError: the array is not 2-D with H, W > 0.
    """
    if float_map.ndim != 2 or float_map.shape[0] == 0 or float_map.shape[1] == 0:
        raise ValueError(
            f'32FC1 encoding needs a non-empty 2-D array (H, W), got shape {float_map.shape}')
    pixels = np.ascontiguousarray(float_map, dtype=np.float32)
    return float_map.shape[1] * 4, pixels.tobytes(), sys.byteorder == 'big'


def rgb_from_array(array: np.ndarray, channel_order: str = 'rgb') -> np.ndarray:
    """Convert a decoded image file to RGB uint8 (H, W, 3) with the 16-bit rule above.

    Args:
        array: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of uint8 or uint16,
            as cv2.imread(..., cv2.IMREAD_UNCHANGED) returns it.
        channel_order: 'rgb' or 'bgr' (OpenCV's order), for 3- and 4-channel arrays.

    Raises:
        ValueError: unsupported shape, dtype or channel order, or an empty array.
    """
    if channel_order not in ('rgb', 'bgr'):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(
            f'image array has shape {array.shape}; expected (H, W), (H, W, 1), '
            '(H, W, 3) or (H, W, 4)')
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f'image array is empty (shape {array.shape})')

    if array.dtype == np.uint16:
        array = _scale_16_to_8(array)
    elif array.dtype != np.uint8:
        raise ValueError(f'image dtype {array.dtype} is not supported; use uint8 or uint16')

    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if channel_order == 'bgr':
        return np.ascontiguousarray(array[:, :, 2::-1])
    return np.ascontiguousarray(array[:, :, :3])


def _layout(encoding: str) -> Tuple[int, int]:
    try:
        return ENCODING_LAYOUTS[encoding]
    except (KeyError, TypeError):
        raise ImageDecodeError(
            f'image encoding {encoding!r} is not supported; publish one of '
            f'{", ".join(SUPPORTED_ENCODINGS)} (for example set the camera driver to rgb8)',
            'unsupported_encoding') from None


def _row_view(
        encoding: str,
        height: int,
        width: int,
        step: int,
        data: BufferLike,
        pixel_bytes: int) -> np.ndarray:
    """Check the sizes and return the pixel bytes as a uint8 view (height, width * pixel_bytes)."""
    if height <= 0 or width <= 0:
        raise ImageDecodeError(
            f'{encoding} image is empty (height={height}, width={width}); '
            'the publisher sent no pixels, check that the camera delivers frames',
            'empty')

    row_bytes = width * pixel_bytes
    if step < row_bytes:
        raise ImageDecodeError(
            f'{encoding} image has step={step} bytes, less than width * {pixel_bytes} = '
            f'{row_bytes} bytes for width={width}; the publisher must set step to the '
            'row length in bytes, padding included',
            'step_too_small')

    buffer = np.frombuffer(data, dtype=np.uint8)
    expected = height * step
    if buffer.size != expected:
        problem = 'truncated' if buffer.size < expected else 'longer than its header says'
        raise ImageDecodeError(
            f'{encoding} image data is {problem}: {buffer.size} bytes, expected '
            f'height * step = {height} * {step} = {expected} bytes; the header and the pixel '
            'buffer do not match, check the publisher',
            'size_mismatch')

    rows = buffer.reshape(height, step)[:, :row_bytes]
    rows.flags.writeable = False
    return rows


def _scale_16_to_8(pixels: np.ndarray) -> np.ndarray:
    # Rounded division by 257: (v + 128) // 257 equals round(v / 257) for 0..65535.
    return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
