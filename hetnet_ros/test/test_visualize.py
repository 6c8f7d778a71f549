"""Tests of heatmap overlays and PNG plots."""

import cv2
import numpy as np
import pytest

from hetnet_ros.data.mvtec import read_image
from hetnet_ros.visualize import (
    colorize, draw_boxes, draw_mask_outline, heatmap_overlay, save_png, save_roc_plot, side_by_side)


def test_colorize_low_blue_high_red():
    colours = colorize(np.array([[0.0, 1.0]]))
    low, high = colours[0, 0], colours[0, 1]
    assert low[2] > low[0], f'0 must be blue, got RGB {low}'
    assert high[0] > high[2], f'1 must be red, got RGB {high}'
    assert np.array_equal(colorize(np.array([[2.0]])), colorize(np.array([[1.0]]))), 'values clip at 1'


@pytest.mark.parametrize('colormap, opencv_colormap', [
    ('jet', cv2.COLORMAP_JET), ('turbo', cv2.COLORMAP_TURBO)])
def test_colorize_matches_rounded_colormap(colormap, opencv_colormap):
    # Values whose product with 255 lies at or next to a rounding boundary, random values,
    # and values outside [0, 1]. An odd width leaves elements outside OpenCV's vector loops.
    halfway = ((np.arange(256) + 0.5) / 255).astype(np.float32)
    values = np.concatenate([
        halfway, np.nextafter(halfway, np.float32(2)), np.nextafter(halfway, np.float32(-1)),
        np.random.default_rng(0).uniform(-0.1, 1.1, 4000).astype(np.float32),
        np.array([0.0, 1.0, -0.0, -3.0, 7.0], np.float32)]).reshape(1, -1)
    assert values.shape[1] % 2 == 1

    scaled = np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    expected = cv2.cvtColor(cv2.applyColorMap(scaled, opencv_colormap), cv2.COLOR_BGR2RGB)

    np.testing.assert_array_equal(colorize(values, colormap), expected)
    np.testing.assert_array_equal(
        colorize(values.astype(np.float64), colormap), expected,
        err_msg='float64 maps are converted to float32 first')


def test_overlay_shape_and_blend():
    rgb = np.full((5, 7, 3), 100, dtype=np.uint8)
    anomaly_map = np.zeros((5, 7), dtype=np.float32)
    overlay = heatmap_overlay(rgb, anomaly_map, alpha=0.0)
    assert overlay.shape == (5, 7, 3)
    assert overlay.dtype == np.uint8
    assert np.array_equal(overlay, rgb), 'alpha 0 must keep the image'
    assert np.array_equal(heatmap_overlay(rgb, anomaly_map, alpha=1.0), colorize(anomaly_map))
    assert heatmap_overlay(rgb, anomaly_map, colormap='turbo').shape == (5, 7, 3)


@pytest.mark.parametrize('rgb, anomaly_map, kwargs, fragment', [
    (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5)), {}, 'differs from the image size'),
    (np.zeros((4, 4), np.uint8), np.zeros((4, 4)), {}, 'RGB uint8'),
    (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4)), {}, 'RGB uint8'),
    (np.zeros((4, 4, 3), np.uint8), np.full((4, 4), np.nan), {}, 'NaN'),
    (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), {'colormap': 'viridis'}, 'unknown colormap'),
    (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), {'alpha': 2.0}, 'alpha'),
])
def test_overlay_rejects_bad_input(rgb, anomaly_map, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        heatmap_overlay(rgb, anomaly_map, **kwargs)


def test_mask_outline_and_boxes():
    rgb = np.zeros((10, 10, 3), dtype=np.uint8)
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:6, 2:6] = 1
    outlined = draw_mask_outline(rgb, mask, color=(0, 255, 0))
    assert outlined[2, 2, 1] == 255, 'the outline must pass through the region corner'
    assert outlined[4, 4, 1] == 0, 'the region inside must stay unchanged'
    assert rgb.max() == 0, 'the input must not be modified'
    boxed = draw_boxes(rgb, [(1, 1, 3, 3)], color=(255, 0, 0))
    assert boxed[1, 1, 0] == 255, 'top-left corner of the box'
    assert boxed[3, 3, 0] == 255, 'bottom-right corner of the box'
    assert boxed[2, 2, 0] == 0, 'inside of the box'


def test_side_by_side():
    row = side_by_side([np.zeros((4, 3, 3), np.uint8), np.ones((4, 5, 3), np.uint8)], gap=2)
    assert row.shape == (4, 10, 3)
    with pytest.raises(ValueError, match='height'):
        side_by_side([np.zeros((4, 3, 3), np.uint8), np.zeros((5, 3, 3), np.uint8)])


def test_save_png_round_trip(tmp_path, screw_root):
    rgb = read_image(sorted((screw_root / 'train' / 'good').iterdir())[0])
    small = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA)
    anomaly_map = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    path = save_png(tmp_path / 'nested' / 'overlay.png', heatmap_overlay(small, anomaly_map))
    loaded = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(loaded, heatmap_overlay(small, anomaly_map)), 'PNG must store RGB losslessly'


def test_save_png_reports_unwritable_path(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('a file where a folder is expected')
    with pytest.raises(OSError):
        save_png(blocker / 'image.png', np.zeros((2, 2, 3), np.uint8))


def test_save_roc_plot(tmp_path):
    fpr = np.array([0.0, 0.2, 1.0])
    tpr = np.array([0.0, 0.8, 1.0])
    path = save_roc_plot(tmp_path / 'roc.png', {'all': (fpr, tpr, 0.8)}, title='ROC')
    image = cv2.imread(str(path))
    assert image is not None, 'roc.png is not a readable image'
    assert image.shape == (600, 600, 3)
