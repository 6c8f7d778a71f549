"""Tests of hetnet-eval with a real tiny checkpoint on a few real screw test images."""

import json
import math
import pathlib
import shutil

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hetnet_ros.checkpoint import read_checkpoint
from hetnet_ros.evaluate import _json_safe, main

DEFECT_TYPES = ['manipulated_front', 'scratch_head', 'scratch_neck', 'thread_side', 'thread_top']


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
                   '--device', 'cpu', '--no-progress'])
    assert status == 0
    report = json.loads((output / 'report.json').read_text())
    assert report['overall']['image_auroc'] is None
    assert report['overall']['pixel_aupro'] is None
    assert report['threshold']['f1_optimal']['raw'] is None
    assert report['per_defect_type'] == {}
    assert report['plots']['roc'] is None
    assert len(report['plots']['overlays']) == 2


def test_undefined_metrics_written_as_null():
    assert _json_safe({'a': math.nan, 'b': [np.float32(0.5), math.inf]}) == {'a': None, 'b': [0.5, None]}
