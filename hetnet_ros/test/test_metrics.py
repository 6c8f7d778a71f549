"""Tests of the anomaly-detection metrics against hand-computed values and scikit-learn."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hetnet_ros.metrics import (
    area_under_curve, classification_counts, f1_optimal_threshold, image_auroc, pixel_aupro,
    pixel_auroc, pro_curve)


def _two_region_case():
    """One 3x4 image with two regions (2 pixels and 1 pixel) and 9 normal pixels.

    Hand-traced curve (FPR, PRO): thresholds 0.9 -> (0, 0.25), 0.8 -> (1/9, 0.25),
    0.7 -> (1/9, 0.75), 0.5 -> (2/9, 0.75), 0.4 -> (2/9, 1), 0 -> (1, 1).
    Area up to FPR 0.3: 0.25/9 + 0.75/9 + (0.3 - 2/9) = 0.3 - 1/9.
    """
    mask = np.array([[1, 1, 0, 0],
                     [0, 0, 0, 1],
                     [0, 0, 0, 0]], dtype=np.uint8)
    scores = np.array([[0.9, 0.4, 0.8, 0.0],
                       [0.0, 0.0, 0.5, 0.7],
                       [0.0, 0.0, 0.0, 0.0]])
    return mask[None], scores[None]


def test_aupro_two_regions_hand_computed():
    masks, maps = _two_region_case()
    assert pixel_aupro(masks, maps) == pytest.approx((0.3 - 1 / 9) / 0.3)


def test_pro_curve_two_regions_points():
    masks, maps = _two_region_case()
    fpr, pro = pro_curve(masks, maps)
    assert np.allclose(fpr, [0, 0, 1 / 9, 1 / 9, 2 / 9, 2 / 9, 1])
    assert np.allclose(pro, [0, 0.25, 0.25, 0.75, 0.75, 1, 1])


def test_aupro_counts_normal_images():
    masks, maps = _two_region_case()
    masks = np.concatenate([masks, np.zeros_like(masks)])
    maps = np.concatenate([maps, np.zeros_like(maps)])
    # 12 more normal pixels, all at score 0: the FPR steps become 1/21 and 2/21.
    assert pixel_aupro(masks, maps) == pytest.approx((0.3 - 1 / 21) / 0.3)


def test_aupro_regions_across_images():
    masks, maps = _two_region_case()
    # The same image twice gives four regions and 18 normal pixels with the same curve.
    assert pixel_aupro(np.concatenate([masks, masks]), np.concatenate([maps, maps])) == \
        pytest.approx((0.3 - 1 / 9) / 0.3)


def test_aupro_uses_8_connectivity():
    # (0,0) touches (1,1) only diagonally. With 8-connectivity the three pixels form one
    # region, so finding (0,0) gives PRO 1/3; with 4-connectivity they would be two
    # regions {(0,0)} and {(1,1),(1,2)} and PRO would be (1 + 0) / 2.
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0, 0] = mask[1, 1] = mask[1, 2] = 1
    scores = np.zeros((4, 4))
    scores[0, 0] = 1.0
    fpr, pro = pro_curve(mask[None], scores[None])
    assert fpr[1] == 0.0
    assert pro[1] == pytest.approx(1 / 3)


def test_aupro_ties_interpolate_at_limit():
    # One region pixel tied with 4 of 10 normal pixels: the curve jumps from (0, 0) to
    # (0.4, 1) at one threshold, so PRO at FPR 0.3 is 0.75 by interpolation.
    mask = np.zeros((1, 11), dtype=np.uint8)
    mask[0, 0] = 1
    scores = np.zeros((1, 11))
    scores[0, :5] = 0.6
    area = 0.5 * 0.3 * 0.75
    assert pixel_aupro(mask[None], scores[None]) == pytest.approx(area / 0.3)


def test_aupro_perfect_and_inverted():
    masks = np.zeros((2, 8, 8), dtype=np.uint8)
    masks[0, 2:4, 2:4] = 1
    masks[0, 6:8, 6:8] = 1
    masks[1, 0, 0] = 1
    perfect = masks.astype(float)
    assert pixel_aupro(masks, perfect) == pytest.approx(1.0)
    assert pixel_aupro(masks, 1.0 - perfect) == pytest.approx(0.0)


def test_aupro_undefined_cases_are_nan():
    empty = np.zeros((2, 4, 4), dtype=np.uint8)
    assert math.isnan(pixel_aupro(empty, np.random.default_rng(0).random((2, 4, 4))))
    full = np.ones((1, 4, 4), dtype=np.uint8)
    assert math.isnan(pixel_aupro(full, np.zeros((1, 4, 4))))


def test_aupro_other_fpr_limit():
    masks, maps = _two_region_case()
    # Up to FPR 1/9 only the first step (PRO 0.25) counts.
    assert pixel_aupro(masks, maps, fpr_limit=1 / 9) == pytest.approx(0.25)
    with pytest.raises(ValueError, match='fpr_limit'):
        pixel_aupro(masks, maps, fpr_limit=0.0)


def test_aupro_rejects_shape_mismatch():
    with pytest.raises(ValueError, match='same shape'):
        pixel_aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))


def test_area_under_curve_limits():
    x = np.array([0.0, 0.5, 1.0])
    y = np.array([0.0, 1.0, 1.0])
    assert area_under_curve(x, y, 1.0) == pytest.approx(0.75)
    assert area_under_curve(x, y, 0.25) == pytest.approx(0.5 * 0.25 * 0.5)


def test_image_auroc_matches_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 50)
    scores = rng.random(50) + labels * 0.3
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert image_auroc([0, 1], [0.1, 0.9]) == 1.0
    assert image_auroc([0, 1], [0.9, 0.1]) == 0.0
    assert math.isnan(image_auroc([0, 0], [0.1, 0.2])), 'one class only has no AUROC'


def test_pixel_auroc_matches_sklearn():
    rng = np.random.default_rng(2)
    masks = rng.random((3, 6, 6)) > 0.7
    maps = rng.random((3, 6, 6)) + masks * 0.5
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert math.isnan(pixel_auroc(np.zeros((1, 3, 3)), maps[:1, :3, :3]))


def test_f1_optimal_threshold_hand_computed():
    # Thresholds 0.8, 0.4, 0.35, 0.1 give F1 2/3, 1/2, 4/5, 2/3.
    threshold, f1 = f1_optimal_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert threshold == pytest.approx(0.35)
    assert f1 == pytest.approx(0.8)


def test_f1_optimal_threshold_prefers_highest_tie():
    # Thresholds 0.9 and 0.6 both give F1 2/3.
    threshold, f1 = f1_optimal_threshold([1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6])
    assert threshold == pytest.approx(0.9)
    assert f1 == pytest.approx(2 / 3)


def test_f1_optimal_threshold_without_defects_is_nan():
    threshold, f1 = f1_optimal_threshold([0, 0], [0.1, 0.2])
    assert math.isnan(threshold)
    assert math.isnan(f1)


def test_classification_counts():
    counts = classification_counts([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.2], threshold=0.5)
    assert (counts['true_positives'], counts['false_positives'],
            counts['true_negatives'], counts['false_negatives']) == (1, 1, 1, 1)
    assert counts['precision'] == 0.5
    assert counts['recall'] == 0.5
    assert counts['f1'] == 0.5
    assert counts['accuracy'] == 0.5
    assert math.isnan(classification_counts([0], [0.0], 0.5)['precision'])


def _reference_aupro(masks, maps, fpr_limit=0.3):
    """Trace the PRO curve threshold by threshold, with scipy's labelling, as an independent check."""
    from scipy import ndimage

    normal = ~masks.astype(bool)
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        flagged = maps >= threshold
        fpr = (flagged & normal).sum() / normal.sum()
        overlaps = []
        for image_index, mask in enumerate(masks):
            labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
            for label in range(1, count + 1):
                region = labels == label
                overlaps.append(flagged[image_index][region].mean())
        points.append((fpr, float(np.mean(overlaps))))
    fpr, pro = np.array(points).T
    return area_under_curve(fpr, pro, fpr_limit) / fpr_limit


def test_aupro_regions_in_several_images_hand_computed():
    # Image 0: a 2-pixel region A; image 1: a 1-pixel region B; image 2: normal, with one
    # high-scoring pixel. 2 regions of weight 1/2 each, 3 * 9 - 3 = 24 normal pixels.
    masks = np.zeros((3, 3, 3), dtype=np.uint8)
    masks[0, 0, 0:2] = 1
    masks[1, 2, 2] = 1
    maps = np.zeros((3, 3, 3))
    maps[0, 0, 0] = 0.9  # half of A
    maps[2, 1, 1] = 0.8  # a false positive on the normal image
    maps[1, 2, 2] = 0.7  # all of B
    maps[0, 0, 1] = 0.6  # the rest of A
    # Curve (FPR, PRO): 0.9 -> (0, 1/4), 0.8 -> (1/24, 1/4), 0.7 -> (1/24, 3/4),
    # 0.6 -> (1/24, 1) and 0 -> (1, 1).
    fpr, pro = pro_curve(masks, maps)
    assert np.allclose(fpr, [0, 0, 1 / 24, 1 / 24, 1 / 24, 1]), f'FPR points {fpr}'
    assert np.allclose(pro, [0, 1 / 4, 1 / 4, 3 / 4, 1, 1]), f'PRO points {pro}'
    # Area up to 0.3: PRO 1/4 from 0 to 1/24, then PRO 1 from 1/24 to 0.3.
    expected = ((1 / 24) * (1 / 4) + (0.3 - 1 / 24)) / 0.3
    assert pixel_aupro(masks, maps) == pytest.approx(expected)


def test_aupro_matches_threshold_sweep():
    rng = np.random.default_rng(3)
    masks = np.zeros((4, 12, 12), dtype=np.uint8)
    masks[0, 1:4, 1:3] = 1
    masks[0, 8:11, 7:12] = 1  # a second region in the same image
    masks[1, 5, 5] = masks[1, 6, 6] = 1  # diagonal neighbours: one region
    masks[2, 0:12, 0] = 1
    # Image 3 stays normal (empty mask).
    maps = np.round(rng.random(masks.shape) * 0.6 + masks * 0.3, 2)  # rounding creates ties

    assert pixel_aupro(masks, maps) == pytest.approx(_reference_aupro(masks, maps), abs=1e-9)


def test_metrics_with_constant_scores():
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    masks[0, 1:3, 1:3] = 1
    constant = np.full(masks.shape, 0.3)
    # One threshold flags every pixel: the PRO curve is the diagonal from (0, 0) to
    # (1, 1), whose area up to 0.3 is 0.045, normalised 0.15.
    assert pixel_aupro(masks, constant) == pytest.approx(0.15)
    assert pixel_auroc(masks, constant) == pytest.approx(0.5)
    assert image_auroc([0, 1, 0, 1], [0.5] * 4) == pytest.approx(0.5)
    threshold, f1 = f1_optimal_threshold([0, 1, 0, 1], [0.5] * 4)
    assert threshold == pytest.approx(0.5), 'the only threshold flags every image'
    assert f1 == pytest.approx(2 / 3)


def test_metrics_with_only_defective_images():
    assert math.isnan(image_auroc([1, 1, 1], [0.2, 0.5, 0.9])), 'image AUROC needs normal images'
    threshold, f1 = f1_optimal_threshold([1, 1, 1], [0.2, 0.5, 0.9])
    assert threshold == pytest.approx(0.2), 'the lowest score flags every defective image'
    assert f1 == pytest.approx(1.0)
    # Defective images still have normal pixels, so the pixel metrics are defined.
    masks = np.zeros((1, 4, 4), dtype=np.uint8)
    masks[0, 0, 0] = 1
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1.0
    assert pixel_auroc(masks, maps) == pytest.approx(1.0)
    assert pixel_aupro(masks, maps) == pytest.approx(1.0)


def test_metrics_with_only_normal_images():
    assert math.isnan(image_auroc([0, 0], [0.2, 0.3]))
    empty = np.zeros((2, 4, 4), dtype=np.uint8)
    maps = np.random.default_rng(4).random((2, 4, 4))
    assert math.isnan(pixel_auroc(empty, maps)), 'pixel AUROC needs defect pixels'
    assert math.isnan(pixel_aupro(empty, maps)), 'AUPRO needs defect regions'
    fpr, pro = pro_curve(empty, maps)
    assert fpr.size == 0, 'no PRO curve without regions'
    assert pro.size == 0, 'no PRO curve without regions'
