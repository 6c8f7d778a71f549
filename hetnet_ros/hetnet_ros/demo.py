"""The main job of `make demo`: inspect one part in simulation on real images.

Steps:
1. Use the given checkpoint, or train a short CPU model on the data set's
   normal training images (reused on later runs when its settings match).
2. Pick real test images, normal and defective in turn, one per inspection
   pose, into a replay folder.
3. Start the camera (replay), detector and inspection (simulated arm) nodes
   with `hetnet-inspect`, inspect the part over every pose, print each view's
   score and verdict and the part verdict, and record every view.

The demo model is trained for a few minutes on a CPU, far from the 200 epochs
of the HetNet paper (Yu et al.), so its verdicts show the pipeline working,
not HetNet's accuracy.
"""

import argparse
import logging
import pathlib
import shutil
import sys
from typing import Optional, Sequence

from hetnet_ros import launcher
from hetnet_ros.checkpoint import CheckpointError, read_checkpoint
from hetnet_ros.data.mvtec import DatasetError, find_samples
from hetnet_ros.train import TrainOptions, train

logger = logging.getLogger('hetnet_ros.demo')

# Settings of the demo model: the offline teachers (EfficientNet-Lite0 with its
# real ImageNet weights, Swin-T with random weights) at the paper's 256 px,
# trained for three epochs so that a 2-core machine finishes in a few minutes.
DEMO_TRAINING = {
    'epochs': 3,
    'batch_size': 8,
    'max_train_images': 120,
    'holdout_images': 12,
    'image_size': 256,
    'seed': 0,
}

# Number of replayed test images; the camera loops over them when the pose
# list is longer.
DEMO_VIEW_COUNT = 6


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m hetnet_ros.demo',
        description='Train a short demo model if needed and inspect one part in simulation.')
    parser.add_argument('--data', type=pathlib.Path, required=True,
                        help='MVTec-layout data set root (train/good, test/<type>)')
    parser.add_argument('--checkpoint', default='',
                        help='checkpoint to use; empty trains or reuses the demo model')
    parser.add_argument('--default-checkpoint', type=pathlib.Path,
                        default=pathlib.Path('models/demo.pt'),
                        help='where the demo model is written and looked for (default: %(default)s)')
    parser.add_argument('--part-id', default='demo-part-001', help='identifier of the inspected part')
    parser.add_argument('--records', type=pathlib.Path, default=pathlib.Path('records'),
                        help='folder for the records database and images (default: %(default)s)')
    parser.add_argument('--views', type=int, default=DEMO_VIEW_COUNT,
                        help='number of real test images to replay (default: %(default)s)')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = build_parser().parse_args(argv)
    try:
        # The test images are checked first, so a data set without them fails before training.
        images = prepare_replay_images(args.data, args.records / 'replay_images', args.views)
        checkpoint = resolve_checkpoint(args.checkpoint, args.default_checkpoint, args.data)
    except (CheckpointError, DatasetError, ValueError) as error:
        print(f'demo failed: {error}', file=sys.stderr)
        return 1

    print(f'==> Inspecting part {args.part_id!r} with {checkpoint} on {len(images)} real test images')
    return launcher.main([
        '--checkpoint', str(checkpoint),
        '--images', str(images[0].parent),
        '--records', str(args.records),
        '--part-id', args.part_id,
        '--camera-rate-hz', '0',
        '--report-json', str(args.records / f'{args.part_id}_report.json'),
        '--quiet',
    ])


def resolve_checkpoint(given: str, default_path: pathlib.Path, data: pathlib.Path) -> pathlib.Path:
    """Return the checkpoint to inspect with, training the demo model when needed.

    Raises:
        CheckpointError: a given checkpoint is missing or unreadable.
    """
    if given:
        path = pathlib.Path(given)
        read_checkpoint(path)
        print(f'==> Using the given checkpoint {path}')
        return path

    if default_path.is_file() and _trained_with_demo_settings(default_path, data):
        print(f'==> Reusing the demo model {default_path} (delete it to train again)')
        return default_path

    settings = ', '.join(f'{name}={value}' for name, value in DEMO_TRAINING.items())
    print(f'==> Training the demo model on {data} ({settings}; offline teachers: '
          'EfficientNet-Lite0 ImageNet weights + Swin-T random weights)')
    options = TrainOptions(data=data, output=default_path, **DEMO_TRAINING)
    return train(options)


def _trained_with_demo_settings(path: pathlib.Path, data: pathlib.Path) -> bool:
    try:
        training = read_checkpoint(path).get('metadata', {}).get('training', {})
    except CheckpointError as error:
        logger.warning('ignoring the demo model %s: %s', path, error)
        return False
    options = training.get('options', training)
    same_data = pathlib.Path(str(options.get('data', ''))).resolve() == data.resolve()
    return same_data and all(options.get(name) == value for name, value in DEMO_TRAINING.items())


def prepare_replay_images(data: pathlib.Path, folder: pathlib.Path, count: int) -> list[pathlib.Path]:
    """Copy `count` real test images into `folder`, normal and defective in turn.

    Files are named with their position first (`00_good_000.png`) so the replay
    camera, which sorts by name, shows them in this order.

    Raises:
        DatasetError: the data set has no test images.
        ValueError: count is below 1.
    """
    if count < 1:
        raise ValueError(f'--views must be at least 1, got {count}')
    samples = find_samples(data, 'test')
    normal = [sample for sample in samples if sample.label == 0]
    defective = [sample for sample in samples if sample.label == 1]
    if not normal or not defective:
        raise DatasetError(
            f'{data}/test needs both good and defective images for the demo, found '
            f'{len(normal)} good and {len(defective)} defective')

    # Defective images are taken one per defect type in turn, so the views show
    # different kinds of defect.
    defective = sorted(defective, key=lambda sample: (_index_within_type(sample, defective), sample.defect_type))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    chosen = []
    for position in range(count):
        pool = normal if position % 2 == 0 else defective
        sample = pool[(position // 2) % len(pool)]
        target = folder / f'{position:02d}_{sample.defect_type}_{sample.image_path.name}'
        shutil.copyfile(sample.image_path, target)
        chosen.append(target)
        print(f'    view {position}: {sample.defect_type}/{sample.image_path.name}')
    return chosen


def _index_within_type(sample, samples) -> int:
    same_type = [other.image_path for other in samples if other.defect_type == sample.defect_type]
    return same_type.index(sample.image_path)


if __name__ == '__main__':
    sys.exit(main())
