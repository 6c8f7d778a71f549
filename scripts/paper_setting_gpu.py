#!/usr/bin/env python3
"""Train and evaluate HetNet in the paper's setting on one CUDA GPU, in about 5 minutes.

The HetNet paper (Yu et al., "Noise Fusion-based Distillation Learning for Anomaly
Detection in Complex Industrial Environments", Section IV-A) trains with WideResNet50 as
the CNN teacher and Swin-T pretrained on ImageNet-22k as the Transformer teacher. Its
other settings are 256 px input, levels 1-3, Adam with lr 0.005 and betas (0.5, 0.999),
alpha 0.1, batch size 16 and 200 epochs. This script uses all of them but stops training
after the first epoch that ends --train-time-s seconds after training started (180 s by
default). Model construction, LMGN fitting, training, calibration and the evaluation of
the whole mvtec_screw test set then take about 5 minutes, an estimate that has not been
measured on a GPU. The number of epochs reached is printed.

Teacher weights: 'hub' (the default) lets timm download them from the Hugging Face hub.
On a machine without hub access, pass local state-dict files with --cnn-weights and
--transformer-weights.

Exit status: 0 on success, 1 when training or evaluation fails, 2 when no CUDA device
is present.

    python scripts/paper_setting_gpu.py --output runs/paper_setting
"""

import argparse
import json
import logging
import os
import pathlib
import sys
import time
from typing import Optional

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = pathlib.Path(os.environ.get('HETNET_DATA', REPO_ROOT.parent / 'shared' / 'data')) / 'mvtec_screw'
CNN_TEACHER = 'wide_resnet50_2'
TRANSFORMER_TEACHER = 'swin_tiny_patch4_window7_224.ms_in22k'


def build_parser() -> argparse.ArgumentParser:
    """Create the argument parser."""
    parser = argparse.ArgumentParser(
        description="Train and evaluate HetNet in the paper's setting (WideResNet50 + Swin-T, 256 px, "
                    'batch 16, Adam lr 0.005) on one CUDA GPU within about 5 minutes.')
    parser.add_argument('--output', type=pathlib.Path, required=True,
                        help='folder for the checkpoint, the evaluation report and summary.json')
    parser.add_argument('--data', type=pathlib.Path, default=DEFAULT_DATA,
                        help='MVTec-layout dataset (default: mvtec_screw under $HETNET_DATA or ../shared/data)')
    parser.add_argument('--train-time-s', type=float, default=180.0,
                        help='stop training after the first epoch that ends this many seconds after '
                             'training started (default: %(default)s)')
    parser.add_argument('--cnn-weights', default='hub',
                        help=f"{CNN_TEACHER} weights: 'hub' or a local state-dict file (default: hub)")
    parser.add_argument('--transformer-weights', default='hub',
                        help=f"{TRANSFORMER_TEACHER} weights: 'hub' or a local state-dict file (default: hub)")
    parser.add_argument('--device', default='cuda', help="CUDA device, 'cuda' or 'cuda:N' (default: cuda)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run the training and evaluation; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s', stream=sys.stdout)

    import torch

    if not torch.cuda.is_available():
        print('error: no CUDA device is available (torch.cuda.is_available() is False). This script '
              "runs the paper's setting on a GPU only; on a CPU use scripts/ablation_study.py.",
              file=sys.stderr)
        return 2

    from hetnet_ros.checkpoint import CheckpointError, read_checkpoint
    from hetnet_ros.data.mvtec import DatasetError
    from hetnet_ros.evaluate import evaluate
    from hetnet_ros.train import TrainOptions, train

    device = torch.device(args.device)
    output = args.output
    output.mkdir(parents=True, exist_ok=True)
    options = TrainOptions(
        data=args.data, output=output / 'paper_setting.pt', cnn_teacher=CNN_TEACHER,
        cnn_weights=args.cnn_weights, transformer_teacher=TRANSFORMER_TEACHER,
        transformer_weights=args.transformer_weights, device=args.device,
        max_train_time_s=args.train_time_s, save_every=200, progress=False)
    print(f"paper setting on {torch.cuda.get_device_name(device)}: {CNN_TEACHER} + {TRANSFORMER_TEACHER}, "
          f'{options.image_size} px, levels {options.levels}, batch {options.batch_size}, Adam lr '
          f'{options.learning_rate} betas {options.betas}, alpha {options.alpha}, up to {options.epochs} '
          f'epochs or {args.train_time_s:g} s of training', flush=True)

    started = time.monotonic()
    try:
        checkpoint = train(options)
        train_s = time.monotonic() - started
        report = evaluate(checkpoint, args.data, output / 'eval', device=args.device, batch_size=16,
                          progress=False)
    except (CheckpointError, DatasetError, ValueError, OSError, RuntimeError) as error:
        print(f'error: {error}', file=sys.stderr)
        if args.cnn_weights == 'hub' or args.transformer_weights == 'hub':
            print('If the teacher weights could not be downloaded, pass local state-dict files with '
                  '--cnn-weights and --transformer-weights.', file=sys.stderr)
        return 1

    training = read_checkpoint(checkpoint)['metadata']['training']
    summary = {
        'gpu': torch.cuda.get_device_name(device),
        'epochs_completed': training['epochs_completed'],
        'train_s': round(train_s, 1),
        'total_s': round(time.monotonic() - started, 1),
        'peak_gpu_memory_mib': round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
        'overall': report['overall'],
        'per_defect_type': report['per_defect_type'],
    }
    (output / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    overall = report['overall']
    print(f"{summary['epochs_completed']} epochs in {summary['train_s']:.0f} s (train, incl. LMGN and "
          f"calibration); image AUROC {overall['image_auroc']:.4f}, pixel AUROC {overall['pixel_auroc']:.4f}, "
          f"pixel AUPRO {overall['pixel_aupro']:.4f}; peak GPU memory {summary['peak_gpu_memory_mib']:.0f} MiB; "
          f"summary in {output / 'summary.json'}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
