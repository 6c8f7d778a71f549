"""Heatmap overlays and PNG plots of anomaly maps and ROC curves.

Plots use matplotlib's Agg canvas directly, so importing this module never changes the
global matplotlib backend and works without a display.
"""

import functools
import pathlib
from typing import Iterable, Mapping, Optional, Sequence

import cv2
import numpy as np

COLORMAPS = {'jet': cv2.COLORMAP_JET, 'turbo': cv2.COLORMAP_TURBO}


def colorize(anomaly_map: np.ndarray, colormap: str = 'jet') -> np.ndarray:
    """Convert a normalised (H, W) map to an RGB uint8 (H, W, 3) false-colour image.

    Values are clipped to [0, 1] and scaled to round(255 * value), rounding half to even.
    0 is blue and 1 is red in both colormaps.
    """
    if colormap not in COLORMAPS:
        raise ValueError(f'unknown colormap {colormap!r}; use one of {sorted(COLORMAPS)}')
    values = np.asarray(anomaly_map, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f'anomaly map must have shape (H, W), got {values.shape}')
    if not np.all(np.isfinite(values)):
        raise ValueError('anomaly map contains NaN or inf values')
    # convertScaleAbs multiplies in float32 and rounds half to even like np.round (OpenCV
    # 4.14), and the clipped values are non-negative, so its bytes equal
    # np.round(values * 255) in one pass.
    scaled = cv2.convertScaleAbs(np.clip(values, 0.0, 1.0), alpha=255.0)
    return cv2.applyColorMap(scaled, _rgb_lookup_table(colormap))


@functools.cache
def _rgb_lookup_table(colormap: str) -> np.ndarray:
    """Return the OpenCV colormap as a (256, 1, 3) uint8 lookup table in RGB order."""
    gray_levels = np.arange(256, dtype=np.uint8).reshape(256, 1)
    bgr = cv2.applyColorMap(gray_levels, COLORMAPS[colormap])
    table = np.ascontiguousarray(bgr[:, :, ::-1])
    table.flags.writeable = False  # shared by every call through the cache
    return table


def heatmap_overlay(
        rgb: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5, colormap: str = 'jet') -> np.ndarray:
    """Blend the colourised anomaly map over the image.

    Args:
        rgb: (H, W, 3) uint8 image.
        anomaly_map: (H, W) normalised map, 0.5 at the decision threshold.
        alpha: weight of the heatmap in the blend, in [0, 1].
        colormap: 'jet' or 'turbo'.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    _check_rgb(rgb)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    if np.shape(anomaly_map) != rgb.shape[:2]:
        raise ValueError(
            f'anomaly map shape {np.shape(anomaly_map)} differs from the image size {rgb.shape[:2]}; '
            'resize the map to the image first')
    heat = colorize(anomaly_map, colormap)
    return cv2.addWeighted(heat, alpha, rgb, 1.0 - alpha, 0.0)


def draw_mask_outline(
        rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 255, 255),
        thickness: int = 1) -> np.ndarray:
    """Return a copy of the image with the outlines of a (H, W) mask's regions drawn on it."""
    _check_rgb(rgb)
    contours, _ = cv2.findContours(
        (np.asarray(mask) != 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    output = rgb.copy()
    cv2.drawContours(output, contours, -1, color, thickness)
    return output


def draw_boxes(
        rgb: np.ndarray, boxes: Iterable[tuple[int, int, int, int]],
        color: tuple[int, int, int] = (255, 0, 0), thickness: int = 1) -> np.ndarray:
    """Return a copy of the image with (x, y, width, height) boxes drawn on it."""
    _check_rgb(rgb)
    output = rgb.copy()
    for x, y, width, height in boxes:
        cv2.rectangle(output, (int(x), int(y)), (int(x + width - 1), int(y + height - 1)), color, thickness)
    return output


def side_by_side(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Place (H, W, 3) uint8 images of equal height in a row, separated by black columns."""
    if not images:
        raise ValueError('side_by_side needs at least one image')
    height = images[0].shape[0]
    for image in images:
        _check_rgb(image)
        if image.shape[0] != height:
            raise ValueError(f'images differ in height: {image.shape[0]} and {height}')
    spacer = np.zeros((height, gap, 3), dtype=np.uint8)
    parts = []
    for index, image in enumerate(images):
        if index:
            parts.append(spacer)
        parts.append(image)
    return np.concatenate(parts, axis=1)


def save_png(path: pathlib.Path | str, rgb: np.ndarray) -> pathlib.Path:
    """Write an RGB uint8 image as PNG, creating parent folders; return the path.

    The file is PNG whatever its name ends in.

    Raises:
        OSError: the folder or file cannot be written.
    """
    _check_rgb(rgb)
    path = pathlib.Path(path)
    encoded, data = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not encoded:
        raise OSError(f'failed to encode PNG for {path}')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())
    return path


def save_roc_plot(
        path: pathlib.Path | str, curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
        title: Optional[str] = None) -> pathlib.Path:
    """Plot ROC curves into a PNG file and return its path.

    Args:
        path: output file.
        curves: label -> (false positive rates, true positive rates, AUROC) per curve.
        title: figure title.
    """
    # Imported here so that modules using only the overlays do not load matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(6, 6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for label, (fpr, tpr, auroc) in curves.items():
        axes.plot(fpr, tpr, label=f'{label} (AUROC {auroc:.3f})')
    axes.plot([0, 1], [0, 1], color='grey', linestyle='--', linewidth=0.8)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel('false positive rate')
    axes.set_ylabel('true positive rate')
    if title:
        axes.set_title(title)
    if curves:
        axes.legend(loc='lower right', fontsize='small')
    figure.tight_layout()
    figure.savefig(path)
    return path


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        description = f'{rgb.dtype} {rgb.shape}' if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(
            f'expected an RGB uint8 image of shape (H, W, 3), got {description}; '
            'convert it with hetnet_ros.data.preprocess.to_rgb_uint8')
