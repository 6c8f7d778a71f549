"""Tests of hetnet-eval with a real tiny checkpoint on a few real screw test images."""

import json
import math
import pathlib
import shutil
import types

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hetnet_ros.checkpoint import read_checkpoint
from hetnet_ros.evaluate import GRID_CELL_MIN_SIZE, ScoredTestSet, _json_safe, compute_metrics, main
from hetnet_ros.metrics import pixel_aupro

DEFECT_TYPES = ['manipulated_front', 'scratch_head', 'scratch_neck', 'thread_side', 'thread_top']
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def evaluation(tiny_checkpoint, screw_root, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """Run hetnet-eval once with 2 images per type; return (output folder, F1 checkpoint)."""
    output = tmp_path_factory.mktemp('evaluation')
    f1_checkpoint = output / 'f1.pt'
    status = main(['--checkpoint', str(tiny_checkpoint), '--data', str(screw_root), '--output', str(output),
                   '--max-images-per-type', '2', '--overlays-per-type', '1', '--device', 'cpu',
                   '--save-f1-checkpoint', str(f1_checkpoint), '--no-progress'])
    assert status == 0, 'hetnet-eval failed'
    return output, f1_checkpoint


@pytest.fixture(scope='module')
def report(evaluation) -> dict:
    return json.loads((evaluation[0] / 'report.json').read_text())


def test_report_keys(report, tiny_checkpoint):
    for key in ('checkpoint', 'model_id', 'data', 'image_size', 'overall', 'per_defect_type', 'threshold',
                'images', 'plots', 'image_counts'):
        assert key in report, f'report lacks {key}'
    assert report['model_id'] == read_checkpoint(tiny_checkpoint)['metadata']['model_id']
    assert report['image_size'] == 64
    assert report['image_counts'] == {'good': 2, **{name: 2 for name in DEFECT_TYPES}}


def test_metrics_in_unit_interval(report):
    rows = {'all': report['overall'], **report['per_defect_type']}
    assert sorted(report['per_defect_type']) == DEFECT_TYPES
    for name, metrics in rows.items():
        for metric in ('image_auroc', 'pixel_auroc', 'pixel_aupro'):
            value = metrics[metric]
            assert value is not None, f'{name} {metric} is undefined'
            assert 0.0 <= value <= 1.0, f'{name} {metric} = {value}'
    assert report['overall']['image_count'] == 12
    assert report['per_defect_type']['scratch_head']['image_count'] == 4


def test_image_auroc_equals_sklearn(report):
    labels = [image['label'] for image in report['images']]
    scores = [image['raw_score'] for image in report['images']]
    assert report['overall']['image_auroc'] == pytest.approx(roc_auc_score(labels, scores))
    subset = [image for image in report['images'] if image['defect_type'] in ('good', 'thread_top')]
    assert report['per_defect_type']['thread_top']['image_auroc'] == pytest.approx(
        roc_auc_score([image['label'] for image in subset], [image['raw_score'] for image in subset]))


def test_thresholds_reported(report):
    calibrated = report['threshold']['calibrated']
    assert calibrated['normalized'] == 0.5
    assert calibrated['method'] == 'normal_quantile'
    assert calibrated['true_positives'] + calibrated['false_negatives'] == 10
    f1_optimal = report['threshold']['f1_optimal']
    assert 0.0 <= f1_optimal['normalized'] <= 1.0
    assert 0.0 < f1_optimal['f1'] <= 1.0
    for image in report['images']:
        assert 0.0 <= image['pred_score'] <= 1.0


def test_plots_written(evaluation, report):
    output = evaluation[0]
    roc = cv2.imread(str(output / report['plots']['roc']))
    assert roc is not None, 'roc.png is not a readable image'
    overlays = report['plots']['overlays']
    assert len(overlays) == 6, 'one worst case per type'
    for relative in overlays:
        image = cv2.imread(str(output / relative))
        assert image is not None, f'{relative} is not a readable image'
        assert image.shape[0] == 64, f'{relative} is not a 64 px high panel'
    assert any(relative.startswith('overlays/good/') for relative in overlays)


def test_pro_and_worst_case_pngs_listed(evaluation, report):
    output = evaluation[0]
    plots = report['plots']
    assert plots['pro'] == 'pro.png', f"report lists the PRO plot as {plots['pro']!r}"
    assert plots['worst_cases'] == 'worst_cases.png', f"report lists the grid as {plots['worst_cases']!r}"
    for relative in (plots['roc'], plots['pro'], plots['worst_cases']):
        data = (output / relative).read_bytes()
        assert data.startswith(PNG_SIGNATURE), f'{relative} does not start with the PNG signature'
        assert cv2.imread(str(output / relative)) is not None, f'{relative} does not decode'


def test_worst_case_grid_layout(evaluation, report):
    grid = cv2.imread(str(evaluation[0] / report['plots']['worst_cases']))
    cell = GRID_CELL_MIN_SIZE  # the 64 px model maps are enlarged to this size
    # Two rows (2 normal and 10 defective images, 4 per row by default): a 20 px title
    # strip, the cells and a 36 px caption each.
    assert grid.shape[1] == 4 * cell + 3 * 4, f'grid width {grid.shape[1]}'
    assert grid.shape[0] == 2 * (20 + cell + 36), f'grid height {grid.shape[0]}'
    # The third and fourth normal cells do not exist and stay black.
    empty_cells = grid[20:20 + cell, 2 * (cell + 4):]
    assert empty_cells.max() == 0, 'cells without an image must stay black'
    assert grid[20:20 + cell, :cell].max() > 0, 'the first cell must show an image'


def test_f1_checkpoint(evaluation, report):
    payload = read_checkpoint(evaluation[1])
    assert payload['calibration']['method'] == 'f1_optimal'
    assert payload['calibration']['threshold'] == pytest.approx(report['threshold']['f1_optimal']['raw'])
    assert payload['metadata']['calibration_source']['previous_model_id'] == report['model_id']
    assert payload['metadata']['model_id'] == report['f1_checkpoint']['model_id']


def test_missing_checkpoint_exit_status(screw_root, tmp_path, caplog):
    status = main(['--checkpoint', str(tmp_path / 'none.pt'), '--data', str(screw_root),
                   '--output', str(tmp_path / 'out'), '--no-progress'])
    assert status == 1
    assert 'checkpoint not found' in caplog.text


def test_negative_worst_cases_rejected(tiny_checkpoint, screw_root, tmp_path):
    with pytest.raises(SystemExit) as raised:
        main(['--checkpoint', str(tiny_checkpoint), '--data', str(screw_root), '--output', str(tmp_path),
              '--worst-cases', '-1'])
    assert raised.value.code == 2


def test_invalid_batch_size(tiny_checkpoint, screw_root, tmp_path):
    with pytest.raises(SystemExit) as raised:
        main(['--checkpoint', str(tiny_checkpoint), '--data', str(screw_root), '--output', str(tmp_path),
              '--batch-size', '0'])
    assert raised.value.code == 2


def test_normal_only_test_set(tiny_checkpoint, screw_root, tmp_path):
    # Without defective images AUROC, AUPRO and the F1-optimal threshold are undefined:
    # the report stores them as null and the command still succeeds.
    data = tmp_path / 'normal_only'
    (data / 'test' / 'good').mkdir(parents=True)
    for source in sorted((screw_root / 'test' / 'good').iterdir())[:2]:
        shutil.copy(source, data / 'test' / 'good' / source.name)
    output = tmp_path / 'out'
    status = main(['--checkpoint', str(tiny_checkpoint), '--data', str(data), '--output', str(output),
                   '--device', 'cpu', '--worst-cases', '1', '--no-progress'])
    assert status == 0
    report = json.loads((output / 'report.json').read_text())
    assert report['overall']['image_auroc'] is None
    assert report['overall']['pixel_aupro'] is None
    assert report['threshold']['f1_optimal']['raw'] is None
    assert report['per_defect_type'] == {}
    assert report['plots']['roc'] is None
    assert report['plots']['pro'] is None, 'no defect regions, so no PRO curve'
    grid = cv2.imread(str(output / report['plots']['worst_cases']))
    assert grid is not None, 'the grid of normal images must still be written'
    expected = (20 + GRID_CELL_MIN_SIZE + 36, GRID_CELL_MIN_SIZE)
    assert grid.shape[:2] == expected, f'one row of one cell expected, got {grid.shape[:2]}'
    assert len(report['plots']['overlays']) == 2


def test_undefined_metrics_written_as_null():
    assert _json_safe({'a': math.nan, 'b': [np.float32(0.5), math.inf]}) == {'a': None, 'b': [0.5, None]}


def test_per_type_metrics_match_sklearn():
    # Each defect type is scored on its own images plus all normal ones.
    rng = np.random.default_rng(5)
    defect_types = ['good'] * 4 + ['crack'] * 3 + ['dent'] * 3
    samples = [types.SimpleNamespace(label=int(name != 'good'), defect_type=name) for name in defect_types]
    masks = np.zeros((10, 8, 8), dtype=bool)
    for index in range(4, 10):
        row, column = rng.integers(0, 6, 2)
        masks[index, row:row + 2, column:column + 3] = True
    maps = rng.random((10, 8, 8)) + 0.4 * masks
    scores = maps.max(axis=(1, 2))
    results = ScoredTestSet(types.SimpleNamespace(samples=samples), scores, maps, masks)

    for defect_type in ('crack', 'dent'):
        metrics = compute_metrics(results, results.subset(defect_type))

        chosen = np.array([name in ('good', defect_type) for name in defect_types])
        labels = np.array([sample.label for sample in samples])[chosen]
        assert metrics['image_count'] == 7, f'{defect_type}: 3 defective and 4 normal images expected'
        assert metrics['image_auroc'] == pytest.approx(roc_auc_score(labels, scores[chosen])), \
            f'{defect_type}: image AUROC differs from scikit-learn'
        assert metrics['pixel_auroc'] == pytest.approx(
            roc_auc_score(masks[chosen].ravel(), maps[chosen].ravel())), \
            f'{defect_type}: pixel AUROC differs from scikit-learn'
        assert metrics['pixel_aupro'] == pytest.approx(pixel_aupro(masks[chosen], maps[chosen])), \
            f'{defect_type}: AUPRO must be computed on the same subset'
