"""Evaluate a checkpoint on the test split of an MVTec-layout dataset: the `hetnet-eval` command.

Metrics are computed at the model input size (masks resized with nearest-neighbour),
from raw scores, over the whole test set and per defect type (that type's images plus
all normal test images). The output folder receives report.json, the image ROC curves
(roc.png), the PRO curves up to FPR 0.3 (pro.png), one grid of the worst cases of the
whole test set (worst_cases.png) and heatmap overlays of the worst cases of every type.
The worst cases are the highest-scoring normal images, which are false positives when
they reach the threshold, and the lowest-scoring defective ones, which are false
negatives when they stay below it.
"""

import argparse
import datetime
import json
import logging
import math
import pathlib
import sys
from typing import Optional, Sequence

import cv2
import numpy as np
from sklearn.metrics import roc_curve
from torch.utils.data import DataLoader
from tqdm import tqdm

from hetnet_ros.calibration import Calibration, calibrate
from hetnet_ros.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint, save_checkpoint
from hetnet_ros.data.mvtec import NORMAL_TYPE, DatasetError, MVTecDataset
from hetnet_ros.inference import infer_raw
from hetnet_ros.metrics import (
    DEFAULT_FPR_LIMIT, classification_counts, f1_optimal_threshold, image_auroc, pixel_aupro, pixel_auroc,
    pro_curve)
from hetnet_ros.train import resolve_device
from hetnet_ros.visualize import draw_mask_outline, heatmap_overlay, save_png, save_roc_plot, side_by_side

logger = logging.getLogger(__name__)

REPORT_NAME = 'report.json'
ROC_NAME = 'roc.png'
PRO_NAME = 'pro.png'
WORST_CASES_NAME = 'worst_cases.png'
OVERLAY_FOLDER = 'overlays'

# Side in pixels of one image in the worst-case grid; smaller model inputs are enlarged
# so that the captions stay readable.
GRID_CELL_MIN_SIZE = 224
# Points per PRO curve in pro.png; longer curves are subsampled evenly.
PRO_PLOT_MAX_POINTS = 2000


class ScoredTestSet:
    """Raw model outputs and ground truth of a whole test set, at the model input size."""

    def __init__(self, dataset: MVTecDataset, scores: np.ndarray, maps: np.ndarray, masks: np.ndarray):
        self.dataset = dataset
        self.scores = scores  # float32 (N,)
        self.maps = maps  # float32 (N, S, S)
        self.masks = masks  # bool (N, S, S)
        self.labels = np.array([sample.label for sample in dataset.samples], dtype=int)
        self.defect_types = np.array([sample.defect_type for sample in dataset.samples])

    def subset(self, defect_type: str) -> np.ndarray:
        """Return the indices of one defect type's images and of all normal images."""
        return np.flatnonzero((self.defect_types == defect_type) | (self.defect_types == NORMAL_TYPE))


def score_test_set(model, dataset: MVTecDataset, device, batch_size: int, progress: bool) -> ScoredTestSet:
    """Run the model over every test image."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    scores, maps, masks = [], [], []
    for batch in tqdm(loader, desc='scoring test images', unit='batch', disable=not progress):
        batch_scores, batch_maps = infer_raw(model, batch['image'], device)
        scores.append(batch_scores)
        maps.append(batch_maps)
        masks.append(batch['mask'][:, 0].numpy() > 0.5)
    return ScoredTestSet(dataset, np.concatenate(scores), np.concatenate(maps), np.concatenate(masks))


def compute_metrics(results: ScoredTestSet, indices: Optional[np.ndarray] = None) -> dict:
    """Compute image AUROC, pixel AUROC and pixel AUPRO of all images or of `indices`."""
    if indices is None:
        indices = np.arange(len(results.scores))
    return {
        'image_count': int(indices.size),
        'image_auroc': image_auroc(results.labels[indices], results.scores[indices]),
        'pixel_auroc': pixel_auroc(results.masks[indices], results.maps[indices]),
        'pixel_aupro': pixel_aupro(results.masks[indices], results.maps[indices]),
    }


def evaluate(
        checkpoint: pathlib.Path | str, data: pathlib.Path | str, output_dir: pathlib.Path | str,
        max_images_per_type: Optional[int] = None, device: str = 'auto', batch_size: int = 8,
        overlays_per_type: int = 3, progress: bool = True,
        f1_checkpoint: Optional[pathlib.Path | str] = None, worst_cases: int = 4) -> dict:
    """Evaluate a checkpoint, write the report and plots, and return the report.

    Args:
        checkpoint: file written by hetnet-train.
        data: dataset root with test/ and ground_truth/ (MVTec AD layout).
        output_dir: folder for report.json, roc.png, pro.png, worst_cases.png and overlays/;
            created if missing.
        max_images_per_type: use at most N images of each test folder, spread evenly by name.
        device: 'auto', 'cpu', 'cuda' or 'cuda:N'.
        batch_size: images per forward pass.
        overlays_per_type: worst cases per type saved as overlay PNGs.
        progress: show a progress bar.
        f1_checkpoint: if given, also write a copy of the checkpoint whose calibration is
            F1-optimal on this test set. Metrics measured on the same images then overstate
            what the new threshold achieves on unseen images.
        worst_cases: normal and defective images per row of worst_cases.png; 0 writes no grid.

    Raises:
        CheckpointError, DatasetError, ValueError: unusable inputs.
    """
    output_dir = pathlib.Path(output_dir)
    torch_device = resolve_device(device)
    loaded = load_checkpoint(checkpoint, torch_device)
    dataset = MVTecDataset(data, 'test', loaded.config.image_size, max_images_per_type=max_images_per_type)
    logger.info('evaluating model %s on %d test images of %s',
                loaded.metadata.get('model_id'), len(dataset), data)

    results = score_test_set(loaded.model, dataset, torch_device, batch_size, progress)
    report = _build_report(checkpoint, data, loaded, results)

    output_dir.mkdir(parents=True, exist_ok=True)
    roc_path = _save_roc(output_dir / ROC_NAME, results, report['per_defect_type'])
    pro_path = _save_pro(output_dir / PRO_NAME, results, report)
    grid_path = _save_worst_case_grid(output_dir / WORST_CASES_NAME, results, loaded.calibration, worst_cases)
    overlay_paths = _save_overlays(
        output_dir / OVERLAY_FOLDER, results, loaded.calibration, overlays_per_type)

    def relative(path: Optional[pathlib.Path]) -> Optional[str]:
        return str(path.relative_to(output_dir)) if path else None

    report['plots'] = {
        'roc': relative(roc_path),
        'pro': relative(pro_path),
        'worst_cases': relative(grid_path),
        'overlays': [relative(path) for path in overlay_paths],
    }
    if f1_checkpoint is not None:
        report['f1_checkpoint'] = _save_f1_checkpoint(f1_checkpoint, loaded, results, data)

    report_path = output_dir / REPORT_NAME
    report_path.write_text(json.dumps(_json_safe(report), indent=2) + '\n')
    _print_summary(report, report_path)
    return report


def _build_report(checkpoint, data, loaded: LoadedCheckpoint, results: ScoredTestSet) -> dict:
    calibration = loaded.calibration
    dataset = results.dataset
    per_type = {
        defect_type: compute_metrics(results, results.subset(defect_type))
        for defect_type in dataset.defect_types if defect_type != NORMAL_TYPE
    }
    f1_threshold, f1 = f1_optimal_threshold(results.labels, results.scores)
    f1_normalized = math.nan if math.isnan(f1_threshold) else calibration.normalize(f1_threshold)
    at_calibrated = classification_counts(results.labels, results.scores, calibration.threshold)
    images = []
    for index, sample in enumerate(dataset.samples):
        raw_score = float(results.scores[index])
        images.append({'path': str(sample.image_path), 'defect_type': sample.defect_type,
                       'label': sample.label, 'raw_score': raw_score,
                       'pred_score': calibration.normalize(raw_score)})

    return {
        'checkpoint': str(checkpoint),
        'model_id': loaded.metadata.get('model_id'),
        'data': str(data),
        'image_size': loaded.config.image_size,
        'evaluated': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'image_counts': {name: int(np.sum(results.defect_types == name)) for name in dataset.defect_types},
        'overall': compute_metrics(results),
        'per_defect_type': per_type,
        'threshold': {
            'calibrated': {'raw': calibration.threshold, 'normalized': 0.5, 'method': calibration.method,
                           **at_calibrated},
            'f1_optimal': {'raw': f1_threshold, 'normalized': f1_normalized, 'f1': f1},
        },
        'images': images,
    }


def _save_roc(path: pathlib.Path, results: ScoredTestSet, per_type: dict) -> Optional[pathlib.Path]:
    curves = {}
    groups = [('all', np.arange(len(results.scores)))] + [(name, results.subset(name)) for name in per_type]
    for name, indices in groups:
        labels = results.labels[indices]
        if len(np.unique(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, results.scores[indices])
        curves[name] = (fpr, tpr, image_auroc(labels, results.scores[indices]))
    if not curves:
        logger.warning('no ROC curve written: the test set needs both normal and defective images')
        return None
    return save_roc_plot(path, curves, title='image-level ROC')


def _save_pro(path: pathlib.Path, results: ScoredTestSet, report: dict) -> Optional[pathlib.Path]:
    """Plot PRO over FPR up to the AUPRO limit for the whole test set and each defect type."""
    groups = [('all', np.arange(len(results.scores)), report['overall'])]
    groups += [(name, results.subset(name), report['per_defect_type'][name]) for name in report['per_defect_type']]
    curves = {}
    for name, indices, metrics in groups:
        fpr, pro = pro_curve(results.masks[indices], results.maps[indices])
        if fpr.size == 0:
            continue
        curves[name] = (*_curve_up_to(fpr, pro, DEFAULT_FPR_LIMIT), metrics['pixel_aupro'])
    if not curves:
        logger.warning('no PRO curve written: the test set needs defect regions and normal pixels')
        return None

    # Imported here, as in hetnet_ros.visualize, so that the global backend stays untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for name, (fpr, pro, aupro) in curves.items():
        axes.plot(fpr, pro, label=f'{name} (AUPRO {aupro:.3f})')
    axes.set_xlim(0, DEFAULT_FPR_LIMIT)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel('false positive rate (normal pixels)')
    axes.set_ylabel('per-region overlap')
    axes.set_title(f'PRO curve up to FPR {DEFAULT_FPR_LIMIT}')
    axes.legend(loc='upper left', fontsize='small')
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _curve_up_to(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the curve points with FPR <= fpr_limit, end it at the limit and subsample long curves."""
    inside = np.flatnonzero(fpr <= fpr_limit)
    fpr_inside, pro_inside = fpr[inside], pro[inside]
    if inside[-1] + 1 < fpr.size:
        following = inside[-1] + 1
        step = fpr[following] - fpr_inside[-1]
        weight = (fpr_limit - fpr_inside[-1]) / step if step > 0 else 0.0
        fpr_inside = np.append(fpr_inside, fpr_limit)
        pro_inside = np.append(pro_inside, pro_inside[-1] + weight * (pro[following] - pro_inside[-1]))
    if fpr_inside.size > PRO_PLOT_MAX_POINTS:
        keep = np.unique(np.linspace(0, fpr_inside.size - 1, PRO_PLOT_MAX_POINTS).round().astype(int))
        fpr_inside, pro_inside = fpr_inside[keep], pro_inside[keep]
    return fpr_inside, pro_inside


def _save_worst_case_grid(
        path: pathlib.Path, results: ScoredTestSet, calibration: Calibration,
        per_row: int) -> Optional[pathlib.Path]:
    """Write one PNG with the highest-scoring normal images above the lowest-scoring defective ones.

    Every cell shows the heatmap overlay with the ground-truth outline in white, the
    image's name and its normalised pred_score with the verdict at the threshold 0.5.
    """
    if per_row <= 0:
        return None
    normal = np.flatnonzero(results.labels == 0)
    defective = np.flatnonzero(results.labels == 1)
    rows = [
        ('highest-scoring normal images (false positives at pred_score >= 0.5)',
         normal[np.argsort(-results.scores[normal], kind='stable')][:per_row]),
        ('lowest-scoring defective images (false negatives at pred_score < 0.5)',
         defective[np.argsort(results.scores[defective], kind='stable')][:per_row]),
    ]
    rows = [(title, indices) for title, indices in rows if indices.size]
    if not rows:
        return None

    cell_size = max(results.maps.shape[-1], GRID_CELL_MIN_SIZE)
    width = per_row * cell_size + (per_row - 1) * 4
    parts = []
    for title, indices in rows:
        parts.append(_text_strip([title], width))
        cells = [_grid_cell(results, calibration, int(index), cell_size) for index in indices]
        cells += [np.zeros_like(cells[0])] * (per_row - len(cells))
        parts.append(side_by_side(cells))
    return save_png(path, np.concatenate(parts, axis=0))


def _grid_cell(results: ScoredTestSet, calibration: Calibration, index: int, size: int) -> np.ndarray:
    rgb, mask = results.dataset.load_resized(index)
    overlay = draw_mask_outline(heatmap_overlay(rgb, calibration.normalize(results.maps[index])), mask)
    if overlay.shape[0] != size:
        overlay = cv2.resize(overlay, (size, size), interpolation=cv2.INTER_NEAREST)
    sample = results.dataset.samples[index]
    score = calibration.normalize(float(results.scores[index]))
    verdict = 'anomalous' if score >= 0.5 else 'normal'
    caption = [f'{sample.defect_type}/{sample.image_path.name}', f'pred_score {score:.3f} ({verdict})']
    return np.concatenate([overlay, _text_strip(caption, size)], axis=0)


def _text_strip(lines: Sequence[str], width: int, line_height: int = 16) -> np.ndarray:
    """Render lines of white text on a black (H, width, 3) uint8 strip; long lines are cut at the edge."""
    strip = np.zeros((line_height * len(lines) + 4, width, 3), dtype=np.uint8)
    for number, line in enumerate(lines):
        baseline = line_height * (number + 1) - 2
        cv2.putText(strip, line, (4, baseline), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def _save_overlays(
        folder: pathlib.Path, results: ScoredTestSet, calibration: Calibration,
        per_type_count: int) -> list[pathlib.Path]:
    paths = []
    for defect_type in results.dataset.defect_types:
        indices = np.flatnonzero(results.defect_types == defect_type)
        # Worst cases: normal images closest to a false alarm, defects closest to a miss.
        order = np.argsort(results.scores[indices])
        if defect_type == NORMAL_TYPE:
            order = order[::-1]
        for index in indices[order[:per_type_count]]:
            rgb, mask = results.dataset.load_resized(int(index))
            normalized = calibration.normalize(results.maps[index])
            overlay = heatmap_overlay(rgb, normalized)
            panel = side_by_side([draw_mask_outline(rgb, mask), draw_mask_outline(overlay, mask)])
            score = calibration.normalize(float(results.scores[index]))
            stem = results.dataset.samples[index].image_path.stem
            paths.append(save_png(folder / defect_type / f'{stem}_score{score:.3f}.png', panel))
    return paths


def _save_f1_checkpoint(path, loaded: LoadedCheckpoint, results: ScoredTestSet, data) -> dict:
    normal = results.labels == 0
    if not normal.any() or normal.all():
        raise ValueError('an F1-optimal calibration needs both normal and defective test images')
    calibration = calibrate(
        results.scores[normal], results.scores[~normal], normal_map_min=float(results.maps[normal].min()))
    metadata = dict(loaded.metadata)
    metadata['calibration_source'] = {'data': str(data), 'images': int(len(results.scores)),
                                      'previous_model_id': loaded.metadata.get('model_id')}
    stored = save_checkpoint(path, loaded.model, calibration, metadata, loaded.training_state)
    logger.info('wrote %s with the F1-optimal threshold %.6g (model %s)', path, calibration.threshold,
                stored['model_id'])
    return {'path': str(path), 'model_id': stored['model_id'], 'calibration': calibration.to_dict()}


def _json_safe(value):
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _format_metric(value: float) -> str:
    return '   n/a' if value is None or math.isnan(value) else f'{value:6.4f}'


def _print_summary(report: dict, report_path: pathlib.Path) -> None:
    header = f'{"defect type":<24} {"images":>6}' + ''.join(
        f'  {title:>11}' for title in ('image AUROC', 'pixel AUROC', 'pixel AUPRO'))
    lines = [f'model {report["model_id"]} on {report["data"]}', header]
    rows = [('all', report['overall'])] + list(report['per_defect_type'].items())
    for name, metrics in rows:
        values = ''.join(f'  {_format_metric(metrics[key]):>11}'
                         for key in ('image_auroc', 'pixel_auroc', 'pixel_aupro'))
        lines.append(f'{name:<24} {metrics["image_count"]:>6}{values}')

    calibrated = report['threshold']['calibrated']
    lines.append(f'calibrated threshold {calibrated["raw"]:.6g} (raw): '
                 f'precision {_format_metric(calibrated["precision"])}, '
                 f'recall {_format_metric(calibrated["recall"])}, F1 {_format_metric(calibrated["f1"])}')
    f1_optimal = report['threshold']['f1_optimal']
    lines.append(f'F1-optimal threshold {f1_optimal["raw"]:.6g} '
                 f'(raw, {_format_metric(f1_optimal["normalized"])} normalised): '
                 f'F1 {_format_metric(f1_optimal["f1"])}')
    lines.append(f'report: {report_path}')
    for line in lines:
        logger.info('%s', line)


def build_parser() -> argparse.ArgumentParser:
    """Create the `hetnet-eval` argument parser."""
    parser = argparse.ArgumentParser(
        prog='hetnet-eval',
        description='Evaluate a HetNet checkpoint on the test split of an MVTec-layout dataset: image AUROC, '
                    'pixel AUROC and pixel AUPRO (FPR up to 0.3) overall and per defect type, written to '
                    'OUTPUT/report.json with ROC and PRO plots, a grid of the worst false positives and '
                    'false negatives, and heatmap overlays of the worst cases per defect type.')
    parser.add_argument('--checkpoint', type=pathlib.Path, required=True,
                        help='checkpoint written by hetnet-train')
    parser.add_argument('--data', type=pathlib.Path, required=True,
                        help='dataset root with test/ and ground_truth/ (MVTec AD layout)')
    parser.add_argument('--output', type=pathlib.Path, required=True, help='folder for the report and plots')
    parser.add_argument('--max-images-per-type', type=int, default=None,
                        help='use at most N images of each test folder, spread evenly by name (default: all)')
    parser.add_argument('--device', default='auto',
                        help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N' (default: %(default)s)")
    parser.add_argument('--batch-size', type=int, default=8,
                        help='images per forward pass (default: %(default)s)')
    parser.add_argument('--overlays-per-type', type=int, default=3,
                        help='worst cases per defect type saved as heatmap overlay PNGs '
                             '(default: %(default)s)')
    parser.add_argument('--worst-cases', type=int, default=4,
                        help='normal and defective images per row of worst_cases.png; 0 writes no grid '
                             '(default: %(default)s)')
    parser.add_argument('--save-f1-checkpoint', type=pathlib.Path, default=None,
                        help='also write a copy of the checkpoint with the F1-optimal threshold of this '
                             'test set (metrics on the same images then overstate its accuracy)')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `hetnet-eval`; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f'--batch-size must be at least 1, got {args.batch_size}')
    if args.overlays_per_type < 0:
        parser.error(f'--overlays-per-type must be at least 0, got {args.overlays_per_type}')
    if args.worst_cases < 0:
        parser.error(f'--worst-cases must be at least 0, got {args.worst_cases}')
    if args.max_images_per_type is not None and args.max_images_per_type < 1:
        parser.error(f'--max-images-per-type must be at least 1, got {args.max_images_per_type}')
    logging.basicConfig(level=logging.INFO, format='%(message)s', stream=sys.stdout)
    try:
        evaluate(args.checkpoint, args.data, args.output, max_images_per_type=args.max_images_per_type,
                 device=args.device, batch_size=args.batch_size, overlays_per_type=args.overlays_per_type,
                 progress=not args.no_progress, f1_checkpoint=args.save_f1_checkpoint,
                 worst_cases=args.worst_cases)
    except (CheckpointError, DatasetError, ValueError, OSError) as error:
        logger.error('hetnet-eval failed: %s', error)
        return 1
    except RuntimeError as error:
        # PyTorch raises RuntimeError for device faults, for example CUDA out of memory.
        logger.debug('hetnet-eval failed', exc_info=True)
        logger.error('hetnet-eval failed: %s', error)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
