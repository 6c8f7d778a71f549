#!/usr/bin/env python3
"""Measure how reduced precision changes a trained checkpoint's anomaly maps and verdicts.

For a checkpoint and a folder of real test images, the script compares each variant
with fp32 PyTorch on the same images. It prints one Markdown table row per variant with
the largest absolute map difference, that difference as a fraction of the fp32 map
range, the largest normalised pred_score difference and the number of changed verdicts.

Variants:
    torch-bf16-all            every network under bf16 autocast, the local teacher
                              included; the anomaly map in float32
    torch-bf16                the detector's bf16 policy: the local teacher and the
                              anomaly map in float32, the rest under bf16 autocast
    openvino-detector-fp32    OpenVinoAnomalyDetector in fp32
    openvino-detector-bf16    OpenVinoAnomalyDetector in bf16 (the detector's CPU default)

Usage:
    export PYTHONPATH=$PWD/hetnet_ros
    python scripts/precision_study.py --checkpoint models/demo_screw.pt --images 16 \
        --output docs/results/precision_demo_screw.json
"""

import argparse
import json
import pathlib
import sys

import numpy as np
import torch

from hetnet_ros.bench import DEFAULT_DATA, load_images
from hetnet_ros.checkpoint import CheckpointError, load_checkpoint
from hetnet_ros.inference import AnomalyDetector, infer_raw
from hetnet_ros.prediction import compare_with_fp32

def run_all_bf16(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run every network under bf16 autocast, the local teacher included, one image at a time.

    HetNet keeps its local teacher in float32 under autocast, so this variant calls the
    teacher modules directly to show what that rule prevents.
    """
    scores, maps = [], []
    for index in range(len(images)):
        batch = torch.from_numpy(images[index:index + 1])
        with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
            normalized = (batch - model.normalization_mean) / model.normalization_std
            local = model.cnn_teacher(normalized)
            global_ = model.extract_global_features(normalized, local)
            student = model.decode(model.fuse(local, global_))
        with torch.inference_mode():
            anomaly_map = model.anomaly_map_generator(
                [level.float() for level in local], [level.float() for level in student])
        maps.append(anomaly_map.numpy()[:, 0])
        scores.append(anomaly_map.amax(dim=(1, 2, 3)).numpy())
    return np.concatenate(scores), np.concatenate(maps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', type=pathlib.Path, required=True,
                        help='checkpoint (.pt) written by hetnet-train')
    parser.add_argument('--images-dir', type=pathlib.Path, default=DEFAULT_DATA,
                        help=f'folder of real test images (default {DEFAULT_DATA})')
    parser.add_argument('--images', type=int, default=16, help='number of images (default 16)')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (default 2)')
    parser.add_argument('--output', type=pathlib.Path, default=None, help='JSON file to write')
    options = parser.parse_args(argv)

    if options.images < 1:
        parser.error(f'--images must be at least 1, got {options.images}')
    if options.checkpoint.suffix.lower() == '.onnx':
        parser.error(f'--checkpoint needs the .pt checkpoint written by hetnet-train, not the '
                     f'ONNX export {options.checkpoint}')
    torch.set_num_threads(options.threads)
    try:
        loaded = load_checkpoint(options.checkpoint, 'cpu')
        model = loaded.model.eval()
        images = load_images(options.images_dir, options.images, model.config.image_size)
    except (CheckpointError, FileNotFoundError) as error:
        print(f'precision_study: {error}', file=sys.stderr)
        return 1
    if model.cnn_teacher is None or model.transformer_teacher is None:
        print('precision_study: the checkpoint needs both teachers (teacher_mode both)', file=sys.stderr)
        return 2
    calibration = loaded.calibration
    print(f'{len(images)} images from {options.images_dir}, checkpoint {options.checkpoint}',
          file=sys.stderr)

    reference_scores, reference_maps = infer_raw(model, torch.from_numpy(images), 'cpu')
    variants = {'torch-bf16-all': run_all_bf16(model, images)}
    detector = AnomalyDetector(model, calibration, loaded.metadata['model_id'], 'cpu', precision='bf16')
    variants['torch-bf16'] = detector.infer_batch(images)

    from hetnet_ros.openvino_inference import OpenVinoAnomalyDetector
    for precision in ('fp32', 'bf16'):
        fresh = load_checkpoint(options.checkpoint, 'cpu')
        openvino_detector = OpenVinoAnomalyDetector(
            fresh.model, fresh.calibration, fresh.metadata['model_id'], precision, options.threads)
        variants[f'openvino-detector-{precision}'] = openvino_detector.infer_batch(images)

    reference_verdicts = calibration.normalize(reference_scores) >= 0.5
    rows = []
    print('| variant | max abs map diff | share of fp32 map range | max normalised score diff '
          '| verdicts changed |')
    print('|---|---|---|---|---|')
    for name, (scores, maps) in variants.items():
        check = compare_with_fp32(scores, maps, reference_scores, reference_maps, calibration)
        changed = int(np.sum((calibration.normalize(scores) >= 0.5) != reference_verdicts))
        rows.append({'variant': name, 'max_abs_map_diff': check.max_map_diff,
                     'map_range': check.map_range, 'map_diff_fraction': check.map_diff_fraction,
                     'max_score_diff': check.max_score_diff, 'verdicts_changed': changed,
                     'images': len(images)})
        print(f'| {name} | {check.max_map_diff:.2e} | {check.map_diff_fraction:.2%} | '
              f'{check.max_score_diff:.4f} | {changed} of {len(images)} |')

    if options.output:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(json.dumps({
            'checkpoint': str(options.checkpoint), 'images_dir': str(options.images_dir),
            'torch_version': torch.__version__, 'rows': rows}, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
