"""Tests of hetnet_ros.imaging: sensor_msgs/Image buffers to and from NumPy, without ROS."""

import array
import sys

import numpy as np
import pytest

from hetnet_ros.imaging import (
    SUPPORTED_ENCODINGS, ImageDecodeError, decode_float_map, decode_image, encode_32fc1,
    encode_rgb8, rgb_from_array)

HEIGHT, WIDTH = 3, 4


def _reference_rgb() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def _pack_rows(pixels: np.ndarray, padding: int) -> bytes:
    """Serialise (H, W, ...) pixels row by row with `padding` filler bytes after each row."""
    rows = [np.ascontiguousarray(row).tobytes() + b'\xab' * padding for row in pixels]
    return b''.join(rows)


def _color_buffer(encoding: str, rgb: np.ndarray) -> np.ndarray:
    alpha = np.full(rgb.shape[:2] + (1,), 200, dtype=np.uint8)
    layouts = {
        'rgb8': rgb,
        'bgr8': rgb[:, :, ::-1],
        'rgba8': np.concatenate([rgb, alpha], axis=2),
        'bgra8': np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
    }
    return layouts[encoding]


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8'])
@pytest.mark.parametrize('padding', [0, 5])
def test_decode_color_encodings(encoding, padding):
    rgb = _reference_rgb()
    pixels = _color_buffer(encoding, rgb)
    step = WIDTH * pixels.shape[2] + padding

    decoded = decode_image(encoding, HEIGHT, WIDTH, step, _pack_rows(pixels, padding))

    assert decoded.shape == (HEIGHT, WIDTH, 3)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, rgb, err_msg=f'{encoding} with padding {padding}')


@pytest.mark.parametrize('padding', [0, 3])
def test_decode_mono8(padding):
    gray = _reference_rgb()[:, :, 0]

    decoded = decode_image('mono8', HEIGHT, WIDTH, WIDTH + padding, _pack_rows(gray, padding))

    assert decoded.shape == (HEIGHT, WIDTH, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], gray)


@pytest.mark.parametrize('is_bigendian', [False, True])
@pytest.mark.parametrize('padding', [0, 3])
def test_decode_mono16_byte_order(is_bigendian, padding):
    values = np.array([[0, 1, 128, 129], [256, 385, 386, 32768], [65407, 65408, 65534, 65535]],
                      dtype=np.uint16)
    stored = values.astype('>u2' if is_bigendian else '<u2')
    expected = np.round(values / 257.0).astype(np.uint8)

    decoded = decode_image(
        'mono16', HEIGHT, WIDTH, WIDTH * 2 + padding, _pack_rows(stored, padding), is_bigendian)

    assert decoded.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(decoded[:, :, 0], expected)
    np.testing.assert_array_equal(decoded[:, :, 2], expected)


def test_mono16_rule_matches_training_conversion():
    from hetnet_ros.data import preprocess
    values = np.arange(0, 65536, dtype=np.uint16).reshape(256, 256)

    decoded = decode_image('mono16', 256, 256, 512, values.astype('<u2').tobytes(), False)

    np.testing.assert_array_equal(decoded, preprocess.to_rgb_uint8(values))


def test_decode_is_zero_copy_view():
    rgb = _reference_rgb()
    buffer = array.array('B', rgb.tobytes())

    decoded = decode_image('rgb8', HEIGHT, WIDTH, WIDTH * 3, buffer)

    assert np.shares_memory(decoded, np.frombuffer(buffer, dtype=np.uint8)), \
        'rgb8 should be decoded as a view of the message buffer'
    assert not decoded.flags.writeable, 'the view must be read-only to protect the message'


def test_decode_accepts_rclpy_message_data():
    from sensor_msgs.msg import Image
    rgb = _reference_rgb()
    step, data = encode_rgb8(rgb)
    message = Image(
        height=HEIGHT, width=WIDTH, encoding='rgb8', step=step, data=data)

    decoded = decode_image(
        message.encoding, message.height, message.width, message.step, message.data,
        bool(message.is_bigendian))

    np.testing.assert_array_equal(decoded, rgb)


def test_unsupported_encoding_names_value_and_fix():
    with pytest.raises(ImageDecodeError) as raised:
        decode_image('yuv422', HEIGHT, WIDTH, WIDTH * 2, bytes(HEIGHT * WIDTH * 2))

    message = str(raised.value)
    assert "'yuv422'" in message
    assert 'rgb8' in message, 'the message should list the supported encodings'
    assert raised.value.reason == 'unsupported_encoding'


@pytest.mark.parametrize('height, width', [(0, 4), (3, 0), (0, 0)])
def test_empty_image_rejected(height, width):
    with pytest.raises(ImageDecodeError) as raised:
        decode_image('rgb8', height, width, width * 3, b'')

    assert f'height={height}' in str(raised.value)
    assert raised.value.reason == 'empty'


def test_step_smaller_than_row_rejected():
    with pytest.raises(ImageDecodeError) as raised:
        decode_image('rgb8', HEIGHT, WIDTH, WIDTH * 3 - 1, bytes(HEIGHT * (WIDTH * 3 - 1)))

    assert f'step={WIDTH * 3 - 1}' in str(raised.value)
    assert raised.value.reason == 'step_too_small'


def test_truncated_data_rejected():
    step = WIDTH * 3
    with pytest.raises(ImageDecodeError) as raised:
        decode_image('rgb8', HEIGHT, WIDTH, step, bytes(HEIGHT * step - 1))

    message = str(raised.value)
    assert 'truncated' in message
    assert str(HEIGHT * step - 1) in message
    assert str(HEIGHT * step) in message
    assert raised.value.reason == 'size_mismatch'


def test_oversized_data_rejected():
    step = WIDTH * 2
    with pytest.raises(ImageDecodeError) as raised:
        decode_image('mono16', HEIGHT, WIDTH, step, bytes(HEIGHT * step + 2))

    assert 'longer' in str(raised.value)
    assert raised.value.reason == 'size_mismatch'


def test_encode_rgb8_round_trip():
    rgb = _reference_rgb()

    step, data = encode_rgb8(rgb[:, ::-1])

    assert step == WIDTH * 3
    assert len(data) == HEIGHT * step
    np.testing.assert_array_equal(decode_image('rgb8', HEIGHT, WIDTH, step, data), rgb[:, ::-1])


@pytest.mark.parametrize('bad', [
    np.zeros((2, 2), np.uint8), np.zeros((2, 2, 3), np.float32), np.zeros((0, 2, 3), np.uint8)])
def test_encode_rgb8_rejects_bad_arrays(bad):
    with pytest.raises(ValueError):
        encode_rgb8(bad)


def test_encode_32fc1_round_trip():
    float_map = np.linspace(-1.0, 2.0, HEIGHT * WIDTH, dtype=np.float64).reshape(HEIGHT, WIDTH)

    step, data, is_bigendian = encode_32fc1(float_map)

    assert step == WIDTH * 4
    assert is_bigendian == (sys.byteorder == 'big')
    decoded = decode_float_map(HEIGHT, WIDTH, step, data, is_bigendian)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, float_map.astype(np.float32))


def test_decode_float_map_big_endian():
    float_map = np.array([[0.25, 0.5], [0.75, 1.5]], dtype=np.float32)

    decoded = decode_float_map(2, 2, 8, float_map.astype('>f4').tobytes(), True)

    np.testing.assert_array_equal(decoded, float_map)


def test_decode_float_map_truncated():
    with pytest.raises(ImageDecodeError) as raised:
        decode_float_map(2, 2, 8, bytes(15))

    assert '32FC1' in str(raised.value)


def test_rgb_from_array_layouts():
    rgb = _reference_rgb()
    gray = rgb[:, :, 0]
    bgra = np.concatenate([rgb[:, :, ::-1], np.zeros((HEIGHT, WIDTH, 1), np.uint8)], axis=2)

    np.testing.assert_array_equal(rgb_from_array(rgb[:, :, ::-1], 'bgr'), rgb)
    np.testing.assert_array_equal(rgb_from_array(bgra, 'bgr'), rgb)
    np.testing.assert_array_equal(rgb_from_array(rgb, 'rgb'), rgb)
    np.testing.assert_array_equal(rgb_from_array(gray[:, :, None])[:, :, 1], gray)
    sixteen_bit = rgb_from_array(np.full((2, 2), 65535, np.uint16))
    assert sixteen_bit.dtype == np.uint8
    assert np.all(sixteen_bit == 255)


@pytest.mark.parametrize('bad', [
    np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2), np.float32), np.zeros((0, 3), np.uint8)])
def test_rgb_from_array_rejects_bad_arrays(bad):
    with pytest.raises(ValueError):
        rgb_from_array(bad)


def test_supported_encodings_listed():
    assert set(SUPPORTED_ENCODINGS) == {'rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16'}
