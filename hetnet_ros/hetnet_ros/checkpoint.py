"""Self-describing HetNet checkpoints.

A checkpoint is one file written with `torch.save` that contains a dict of plain Python
values and tensors, so `torch.load(weights_only=True)` can read it without running
pickled code:

    format, format_version   identify the file and its layout
    config                   HetNetConfig.to_dict(): teachers, weights source, image size, normalisation
    state_dict               all model weights, teachers included (the LMGN noise statistics
                             are not part of the state_dict and are refitted before training resumes)
    calibration              Calibration.to_dict(): threshold and score normalisation
    metadata                 model_id, package_version, created (ISO 8601, UTC), training settings
    training_state           {'epoch': completed epochs, 'optimizer': optimizer state_dict} or None

Teacher weights are stored, so loading never downloads or reads a separate weights file.
"""

import datetime
import hashlib
import json
import logging
import os
import pathlib
from typing import Any, NamedTuple, Optional

import numpy as np
import torch

import hetnet_ros
from hetnet_ros.calibration import Calibration
from hetnet_ros.model import HetNet, HetNetConfig

logger = logging.getLogger(__name__)

FORMAT_NAME = 'hetnet_ros.checkpoint'
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """Error raised when a checkpoint file is missing, unreadable, or does not match this package."""


class LoadedCheckpoint(NamedTuple):
    """A checkpoint's model, ready for inference, and everything stored with it."""

    model: HetNet  # in eval mode, on the requested device
    config: HetNetConfig
    calibration: Calibration
    metadata: dict
    training_state: Optional[dict]  # {'epoch': int, 'optimizer': dict}, or None


def compute_model_id(state_dict: dict[str, torch.Tensor], config: dict, calibration: dict) -> str:
    """Derive a short id from the weights, configuration and calibration.

    Equal weights, configuration and calibration give the same id, and any change gives a
    new one (barring a collision of the 48-bit hash prefix), so the id printed in a verdict
    names the model that produced it.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(json.dumps(calibration, sort_keys=True, default=str).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return 'hetnet-' + digest.hexdigest()[:12]


def save_checkpoint(
        path: pathlib.Path | str, model: HetNet, calibration: Calibration, metadata: Optional[dict] = None,
        training_state: Optional[dict] = None) -> dict:
    """Write a checkpoint atomically and return the metadata stored in it.

    The file is written to a temporary name in the same folder and then renamed, so an
    interrupted save never leaves a truncated checkpoint under `path`.

    Args:
        path: output file; parent folders are created.
        model: the trained model (any device).
        calibration: threshold and score normalisation.
        metadata: extra JSON-like values, for example {'training': {...}}. The keys
            model_id, package_version, created and torch_version are filled in.
        training_state: {'epoch': completed epochs, 'optimizer': optimizer.state_dict()}
            to allow resuming, or None.

    Raises:
        CheckpointError: the file cannot be written.
    """
    path = pathlib.Path(path)
    config_dict = model.config.to_dict()
    state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    calibration_dict = calibration.to_dict()
    stored_metadata = _to_plain(dict(metadata or {}), 'metadata')
    stored_metadata['model_id'] = compute_model_id(state_dict, config_dict, calibration_dict)
    stored_metadata['package_version'] = hetnet_ros.__version__
    stored_metadata['torch_version'] = str(torch.__version__)
    stored_metadata['created'] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    if training_state is not None:
        training_state = {
            'epoch': int(training_state['epoch']),
            'optimizer': _to_cpu(training_state['optimizer']),
        }
    payload = {
        'format': FORMAT_NAME,
        'format_version': FORMAT_VERSION,
        'config': config_dict,
        'state_dict': state_dict,
        'calibration': calibration_dict,
        'metadata': stored_metadata,
        'training_state': training_state,
    }

    temporary = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise CheckpointError(f'failed to write checkpoint {path}: {error}') from error
    finally:
        temporary.unlink(missing_ok=True)
    logger.info('saved checkpoint %s (model %s)', path, stored_metadata['model_id'])
    return stored_metadata


def read_checkpoint(path: pathlib.Path | str) -> dict:
    """Read and validate a checkpoint file's payload without building the model.

    Raises:
        CheckpointError: the file is missing, corrupt, not a hetnet_ros checkpoint, or
            from a newer format version.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(
            f'checkpoint not found: {path}; pass the .pt file written by hetnet-train')
    if not path.is_file():
        raise CheckpointError(
            f'checkpoint path {path} is not a file; pass the .pt file written by hetnet-train')
    try:
        payload = torch.load(path, map_location='cpu', weights_only=True)
    # Damaged bytes make torch.load raise many types (UnpicklingError, RuntimeError,
    # EOFError, IndexError and more), so any failure to read counts as a corrupt file.
    except Exception as error:  # noqa: BLE001
        # Only the first line of torch's message: the rest advises weights_only=False,
        # which would run code from an unknown file.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ''
        raise CheckpointError(
            f'failed to read checkpoint {path}: the file is corrupt, truncated, or not a checkpoint '
            f'written by hetnet_ros ({type(error).__name__}: {reason}); copy or train it again') from error

    if not isinstance(payload, dict) or payload.get('format') != FORMAT_NAME:
        raise CheckpointError(
            f'{path} is a PyTorch file but not a hetnet_ros checkpoint; pass a file written by hetnet-train')
    version = payload.get('format_version')
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f'checkpoint {path} has format version {version!r}, but hetnet_ros {hetnet_ros.__version__} '
            f'reads versions up to {FORMAT_VERSION}; upgrade hetnet_ros')
    missing = [key for key in ('config', 'state_dict', 'calibration', 'metadata') if key not in payload]
    if missing:
        raise CheckpointError(
            f'checkpoint {path} lacks the entries {missing}; it is incomplete, train it again')
    return payload


def load_checkpoint(path: pathlib.Path | str, device: str | torch.device = 'cpu') -> LoadedCheckpoint:
    """Load a checkpoint and build its model in eval mode on `device`.

    Raises:
        CheckpointError: the file is missing or corrupt, or its configuration or weights
            do not fit this version of the model code.
    """
    path = pathlib.Path(path)
    payload = read_checkpoint(path)
    written_by = payload['metadata'].get('package_version', 'an unknown version')

    # The model id is a hash of the stored weights, configuration and calibration, so a
    # file damaged after it was written no longer matches its id.
    stored_id = payload['metadata'].get('model_id')
    actual_id = compute_model_id(payload['state_dict'], payload['config'], payload['calibration'])
    if stored_id != actual_id:
        raise CheckpointError(
            f'checkpoint {path} is corrupt: its content hashes to {actual_id}, not to its model id '
            f'{stored_id!r}; copy it again or train it again')

    try:
        config = HetNetConfig.from_dict(payload['config'])
        calibration = Calibration.from_dict(payload['calibration'])
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(
            f'checkpoint {path} (written by hetnet_ros {written_by}) has a configuration this '
            f'version ({hetnet_ros.__version__}) cannot use: {error}') from error

    # The teachers are built with random weights, which the stored state_dict replaces, so
    # loading needs no download or weights file.
    model = HetNet(config, load_teacher_weights=False)
    try:
        model.load_state_dict(payload['state_dict'], strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f'checkpoint {path} (written by hetnet_ros {written_by}) does not match the model layout '
            f'of hetnet_ros {hetnet_ros.__version__}: {_first_line(error)}') from error
    model.to(device)
    model.eval()
    logger.info('loaded checkpoint %s (model %s)', path, payload['metadata'].get('model_id'))
    return LoadedCheckpoint(model, config, calibration, payload['metadata'], payload.get('training_state'))


def _to_plain(value: Any, where: str) -> Any:
    """Convert metadata to the types torch.load(weights_only=True) accepts.

    Paths become strings and NumPy scalars Python numbers.

    Raises:
        CheckpointError: a value of another type.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(key): _to_plain(item, f'{where}.{key}') for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(item, f'{where}[{index}]') for index, item in enumerate(value)]
    raise CheckpointError(
        f'{where} has a value of type {type(value).__name__}, which a checkpoint cannot store; '
        'use None, bool, int, float, str, paths, lists or dicts')


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    lines = text.splitlines()
    return ' '.join(line.strip() for line in lines[:4]) if lines else type(error).__name__
