#!/usr/bin/env python3
"""Measure the memory of the LMGN statistics for WideResNet50 levels 1-3 at 256 px.

Builds timm wide_resnet50_2 with random weights (nothing is downloaded), reads its feature
shapes at 256 px, then streams --images random feature maps of those shapes through
LocalGaussianNoise.fit in batches of --batch-size, as training does with real teacher
features. Prints the computed size of the statistics (`statistics_bytes`), the bytes
actually stored, and the growth of the process's peak resident set size during the fit.

    .venv/bin/python scripts/lmgn_memory.py --images 300
"""

import argparse
import resource
import sys
import time
from typing import Optional

import torch

from hetnet_ros.model.lmgn import LocalGaussianNoise, statistics_bytes
from hetnet_ros.model.teachers import TimmTeacher


def peak_rss_mib() -> float:
    """Return the peak resident set size of this process in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: Optional[list[str]] = None) -> int:
    """Run the measurement; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=300, help='training images to simulate (default: 300)')
    parser.add_argument('--batch-size', type=int, default=16, help='images per streamed batch (default: 16)')
    args = parser.parse_args(argv)

    teacher = TimmTeacher('wide_resnet50_2', 'random', (1, 2, 3), 256, role='cnn_teacher')
    with torch.no_grad():
        shapes = [tuple(feature.shape[1:]) for feature in teacher(torch.zeros(1, 3, 256, 256))]
    del teacher
    channels = [shape[0] for shape in shapes]
    sizes = [shape[1:] for shape in shapes]
    computed = statistics_bytes(channels, sizes, args.images)
    print(f'wide_resnet50_2 levels 1-3 at 256 px: feature shapes {shapes}')
    print(f'statistics_bytes for {args.images} images: {computed / 2**30:.3f} GiB')

    generator = torch.Generator().manual_seed(0)

    def batches():
        for start in range(0, args.images, args.batch_size):
            count = min(args.batch_size, args.images - start)
            yield [torch.randn(count, *shape, generator=generator) for shape in shapes]

    before_mib = peak_rss_mib()
    started = time.monotonic()
    noise = LocalGaussianNoise('mgd')
    noise.fit(batches())
    fit_s = time.monotonic() - started
    growth_gib = (peak_rss_mib() - before_mib) / 1024.0
    print(f'stored: {noise.nbytes / 2**30:.3f} GiB in {fit_s:.1f} s; peak resident memory grew by '
          f'{growth_gib:.3f} GiB during the fit (from {before_mib / 1024:.3f} GiB after start-up)')
    return 0 if noise.nbytes == computed else 1


if __name__ == '__main__':
    sys.exit(main())
