"""Anomaly-detection metrics: image AUROC, pixel AUROC, pixel AUPRO and the F1-optimal threshold.

Every function takes raw (un-normalised) scores, because clipping in the score
normalisation would create ties. A metric that is undefined for its input (one class
only, no defect regions) is returned as NaN rather than raised, so that an evaluation
report can still list the other metrics.
"""

import math
from typing import Sequence

import cv2
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

# Upper FPR limit of the AUPRO integral; published MVTec AD pixel AUPRO results use 0.3.
DEFAULT_FPR_LIMIT = 0.3


def image_auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Compute the area under the ROC curve of image scores.

    Args:
        labels: (N,) 0 for normal images, 1 for defective ones.
        scores: (N,) image anomaly scores, higher meaning more anomalous.

    Returns:
        AUROC in [0, 1], or NaN when the labels hold only one class.
    """
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    _check_same_length(labels, scores)
    if len(np.unique(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, scores))


def pixel_auroc(masks: np.ndarray, anomaly_maps: np.ndarray) -> float:
    """Compute the area under the ROC curve over all pixels of all images.

    Args:
        masks: (N, H, W) ground truth, nonzero on defect pixels.
        anomaly_maps: (N, H, W) pixel anomaly scores.

    Returns:
        AUROC in [0, 1], or NaN when there are no defect pixels or no normal pixels.
    """
    masks, anomaly_maps = _check_maps(masks, anomaly_maps)
    truth = masks.ravel()
    if truth.all() or not truth.any():
        return math.nan
    return float(roc_auc_score(truth, anomaly_maps.ravel()))


def pixel_aupro(masks: np.ndarray, anomaly_maps: np.ndarray, fpr_limit: float = DEFAULT_FPR_LIMIT) -> float:
    """Compute the normalised area under the per-region-overlap (PRO) curve.

    Each 8-connected component of a ground-truth mask is one region. For a threshold t,
    the overlap of a region is the fraction of its pixels with score >= t, PRO(t) is the
    mean overlap over all regions of the test set, and FPR(t) is the fraction of all normal
    pixels of the test set (including those of normal images) with score >= t. The curve
    PRO over FPR is traced exactly at every distinct score, integrated with the trapezoid
    rule from FPR 0 to `fpr_limit` (interpolating linearly at the limit) and divided by
    `fpr_limit`, so a perfect map scores 1.

    Args:
        masks: (N, H, W) ground truth, nonzero on defect pixels; masks of normal images are empty.
        anomaly_maps: (N, H, W) pixel anomaly scores.
        fpr_limit: upper FPR limit of the integral, in (0, 1].

    Returns:
        AUPRO in [0, 1], or NaN when there are no regions or no normal pixels.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f'fpr_limit must be in (0, 1], got {fpr_limit}')
    masks, anomaly_maps = _check_maps(masks, anomaly_maps)
    fpr, pro = pro_curve(masks, anomaly_maps)
    if fpr.size == 0:
        return math.nan
    return area_under_curve(fpr, pro, fpr_limit) / fpr_limit


def pro_curve(masks: np.ndarray, anomaly_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trace the PRO curve at every distinct score, see `pixel_aupro`.

    Returns:
        (fpr, pro), both (K,) ascending and starting at (0, 0); empty arrays when there
        are no regions or no normal pixels.
    """
    masks, anomaly_maps = _check_maps(masks, anomaly_maps)

    # Weight of every pixel: a normal pixel adds 1 / (normal pixel count) to the FPR once
    # its score passes the threshold, a pixel of region r adds 1 / (|r| * region count) to PRO.
    normal_weight = np.zeros(masks.shape, dtype=np.float64)
    region_weight = np.zeros(masks.shape, dtype=np.float64)
    normal = ~masks
    normal_count = int(normal.sum())
    region_count = 0
    for index in range(masks.shape[0]):
        if not masks[index].any():
            continue
        label_count, labels = cv2.connectedComponents(masks[index].astype(np.uint8), connectivity=8)
        sizes = np.bincount(labels.ravel(), minlength=label_count)
        region_pixels = labels > 0
        region_weight[index][region_pixels] = 1.0 / sizes[labels[region_pixels]]
        region_count += label_count - 1
    if region_count == 0 or normal_count == 0:
        return np.empty(0), np.empty(0)
    normal_weight[normal] = 1.0 / normal_count
    region_weight /= region_count

    # Sort by descending score; cumulative sums give FPR and PRO for "score >= t" at each
    # t. Of a run of equal scores only the last position is a valid threshold.
    order = np.argsort(-anomaly_maps.ravel(), kind='stable')
    sorted_scores = anomaly_maps.ravel()[order]
    fpr = np.cumsum(normal_weight.ravel()[order])
    pro = np.cumsum(region_weight.ravel()[order])
    run_ends = np.flatnonzero(np.diff(sorted_scores) != 0)
    keep = np.append(run_ends, sorted_scores.size - 1)
    fpr = np.concatenate([[0.0], fpr[keep]])
    pro = np.concatenate([[0.0], pro[keep]])
    # Cumulative float sums can overshoot 1 by rounding.
    return np.clip(fpr, 0.0, 1.0), np.clip(pro, 0.0, 1.0)


def area_under_curve(x: np.ndarray, y: np.ndarray, x_limit: float) -> float:
    """Integrate y over ascending x from x[0] to `x_limit` with the trapezoid rule.

    When `x_limit` falls between two points, y is interpolated linearly there. Points
    with equal x (vertical steps) add no area.
    """
    inside = x <= x_limit
    x_inside = x[inside]
    y_inside = y[inside]
    beyond = np.flatnonzero(~inside)
    if beyond.size and x_inside.size and x_inside[-1] < x_limit:
        next_index = beyond[0]
        x0, y0 = x_inside[-1], y_inside[-1]
        x1, y1 = x[next_index], y[next_index]
        y_limit = y0 + (y1 - y0) * (x_limit - x0) / (x1 - x0)
        x_inside = np.append(x_inside, x_limit)
        y_inside = np.append(y_inside, y_limit)
    if x_inside.size < 2:
        return 0.0
    return float(np.sum((x_inside[1:] - x_inside[:-1]) * (y_inside[1:] + y_inside[:-1]) / 2.0))


def f1_optimal_threshold(
        labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Find the score threshold with the highest F1 of the defective class.

    A score at or above the threshold counts as defective. Among thresholds with the same
    F1 the highest one is returned, which flags the fewest normal images.

    Args:
        labels: (N,) 0 for normal images, 1 for defective ones.
        scores: (N,) image anomaly scores.

    Returns:
        (threshold, f1). Both are NaN when there is no defective image.
    """
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    _check_same_length(labels, scores)
    if not labels.any():
        return math.nan, math.nan
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last precision/recall pair (1, 0) has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator),
                   where=denominator > 0)
    best = np.flatnonzero(f1 == f1.max())
    best_index = best[np.argmax(thresholds[best])]
    return float(thresholds[best_index]), float(f1[best_index])


def classification_counts(
        labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
        threshold: float) -> dict[str, float]:
    """Count the decisions 'score >= threshold means defective' and derive their rates.

    Returns:
        dict with true_positives, false_positives, true_negatives, false_negatives (int),
        and precision, recall, f1, accuracy (float; NaN where the denominator is 0).
    """
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    _check_same_length(labels, scores)
    predicted = scores >= threshold
    actual = labels == 1
    true_positives = int(np.sum(predicted & actual))
    false_positives = int(np.sum(predicted & ~actual))
    true_negatives = int(np.sum(~predicted & ~actual))
    false_negatives = int(np.sum(~predicted & actual))
    precision = _ratio(true_positives, true_positives + false_positives)
    recall = _ratio(true_positives, true_positives + false_negatives)
    f1 = _ratio(2 * true_positives, 2 * true_positives + false_positives + false_negatives)
    return {
        'true_positives': true_positives,
        'false_positives': false_positives,
        'true_negatives': true_negatives,
        'false_negatives': false_negatives,
        'precision': precision,
        'recall': recall,
        'f1': f1,
        'accuracy': _ratio(true_positives + true_negatives, labels.size),
    }


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def _check_same_length(labels: np.ndarray, scores: np.ndarray) -> None:
    if labels.shape != scores.shape:
        raise ValueError(f'labels and scores differ in length: {labels.size} labels, {scores.size} scores')
    if labels.size == 0:
        raise ValueError('labels and scores are empty; pass at least one image')


def _check_maps(masks: np.ndarray, anomaly_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks = np.asarray(masks)
    anomaly_maps = np.asarray(anomaly_maps, dtype=np.float64)
    if masks.ndim == 2:
        masks = masks[None]
    if anomaly_maps.ndim == 2:
        anomaly_maps = anomaly_maps[None]
    if masks.shape != anomaly_maps.shape or masks.ndim != 3:
        raise ValueError(
            f'masks {masks.shape} and anomaly maps {anomaly_maps.shape} must have the same '
            'shape (N, H, W); squeeze channel axes and resize the maps to the mask size')
    if masks.size == 0:
        raise ValueError('masks and anomaly maps are empty; pass at least one image')
    if not np.all(np.isfinite(anomaly_maps)):
        raise ValueError('anomaly maps contain NaN or inf values')
    return masks != 0, anomaly_maps
