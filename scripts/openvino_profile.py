#!/usr/bin/env python3
"""Show where the OpenVINO detector spends its time: per part, and per operation type.

The detector (`hetnet_ros.openvino_inference.OpenVinoAnomalyDetector`) runs a checkpoint
as a teacher part (always fp32), a student part (fp32 or bf16) and the anomaly map in
PyTorch. This script times the three parts at batch 1 (p50 over --iterations calls after
warm-up). A second detector with OpenVINO's performance counters on then gives the time
per (operation type, kernel) of one call, largest first.

Usage:
    export PYTHONPATH=$PWD/hetnet_ros
    python scripts/openvino_profile.py --checkpoint models/demo_screw.pt
    python scripts/openvino_profile.py --config full    # WideResNet50-2 + Swin-T, random weights
"""

import argparse
import collections
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch

from hetnet_ros.bench import CONFIGS, write_checkpoint
from hetnet_ros.checkpoint import load_checkpoint
from hetnet_ros.openvino_inference import OpenVinoAnomalyDetector
from hetnet_ros.prediction import probe_images


def time_parts(detector: OpenVinoAnomalyDetector, image: np.ndarray, iterations: int) -> dict:
    """Return the p50 seconds of the teacher part, the student part and the anomaly map."""
    times = collections.defaultdict(list)
    for _ in range(iterations):
        started = time.perf_counter()
        teacher = detector._teacher_request.infer([image])
        local = [teacher[output] for output in detector._teacher_outputs]
        teacher_done = time.perf_counter()
        student = detector._student_request.infer([image, *local])
        student_levels = [student[output] for output in detector._student_outputs]
        student_done = time.perf_counter()
        with torch.inference_mode():
            detector._model.anomaly_map_generator(
                [torch.from_numpy(level) for level in local],
                [torch.from_numpy(level) for level in student_levels])
        finished = time.perf_counter()
        times['teacher part'].append(teacher_done - started)
        times['student part'].append(student_done - teacher_done)
        times['anomaly map (PyTorch)'].append(finished - student_done)
        times['total'].append(finished - started)
    return {name: float(np.median(values)) for name, values in times.items()}


def operation_times(profiling: list) -> list[tuple[str, float]]:
    """Return (operation type / kernel, milliseconds) of OpenVINO profiling info, largest first."""
    totals = collections.Counter()
    for info in profiling:
        totals[f'{info.node_type} / {info.exec_type}'] += info.real_time.total_seconds() * 1e3
    return totals.most_common()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', type=pathlib.Path, default=None,
                        help='checkpoint written by hetnet-train (default: build --config)')
    parser.add_argument('--config', choices=CONFIGS, default='full',
                        help="model built with random weights when no checkpoint is given (default 'full')")
    parser.add_argument('--precision', choices=('fp32', 'bf16'), default='bf16',
                        help='precision of the student part (default bf16)')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (default 2)')
    parser.add_argument('--iterations', type=int, default=10, help='timed calls (default 10)')
    parser.add_argument('--top', type=int, default=8, help='operation types listed per part (default 8)')
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)

    with tempfile.TemporaryDirectory(prefix='hetnet-profile-') as directory:
        checkpoint = options.checkpoint
        if checkpoint is None:
            checkpoint = pathlib.Path(directory) / 'model.pt'
            write_checkpoint(options.config, 256, checkpoint)
        detector = OpenVinoAnomalyDetector.from_checkpoint(checkpoint, options.precision, options.threads)
        # Performance counters are a compile-time property and slow every call a little,
        # so a second detector with counters on gives the per-operation split.
        loaded = load_checkpoint(checkpoint, 'cpu')
        counted = OpenVinoAnomalyDetector(
            loaded.model, loaded.calibration, loaded.metadata['model_id'], options.precision,
            options.threads, compile_properties={'PERF_COUNT': True})

    image = probe_images(detector.image_size, 1)
    for _ in range(3):
        detector.infer_batch(image)
        counted.infer_batch(image)
    print(f'p50 over {options.iterations} calls, batch 1, {options.threads} threads, '
          f'student part in {options.precision}:')
    for name, seconds in time_parts(detector, image, options.iterations).items():
        print(f'  {name:24s} {seconds * 1e3:8.1f} ms')

    for name, profiling in counted.profiling_info().items():
        rows = operation_times(profiling)
        total = sum(milliseconds for _, milliseconds in rows)
        print(f'{name}, one call with performance counters: {total:.1f} ms')
        for operation, milliseconds in rows[:options.top]:
            print(f'  {operation:50s} {milliseconds:8.1f} ms  {milliseconds / total:6.1%}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
