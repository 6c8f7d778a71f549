"""Choose the runtime for a model file and load its detector: `load_detector`.

Runtimes:
    torch        `inference.AnomalyDetector` on a checkpoint written by hetnet-train
    onnxruntime  `onnx_inference.OnnxAnomalyDetector` on an .onnx file written by hetnet-export

Both detectors have the same interface (model_id, image_size, threshold, calibration,
metadata, runtime, device, predict, warmup). Each runtime's module is imported only when
that runtime is chosen, so loading an ONNX export never imports PyTorch.
"""

import pathlib
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    # Only for annotations: importing the node module, which imports this one, stays light.
    from hetnet_ros.prediction import DetectorBase

AUTO = 'auto'
TORCH = 'torch'
ONNXRUNTIME = 'onnxruntime'
RUNTIMES = (AUTO, TORCH, ONNXRUNTIME)
DEVICES = ('auto', 'cpu', 'cuda')
ONNX_SUFFIX = '.onnx'


class ModelLoadError(Exception):
    """Error raised when a model file is missing, unreadable or incompatible, for any runtime.

    It wraps the runtime's own error (CheckpointError or OnnxModelError), so callers can
    catch it without importing the runtime's module.
    """


def select_runtime(path: Union[pathlib.Path, str], runtime: str = AUTO) -> tuple[str, str]:
    """Choose the runtime for a model file; return (runtime, reason).

    'auto' picks by file type: ONNX Runtime for a .onnx file, PyTorch for anything else,
    which must then be a checkpoint.

    Raises:
        ValueError: an unknown runtime, or a runtime that cannot run this file type.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    path = pathlib.Path(path)
    is_onnx = path.suffix.lower() == ONNX_SUFFIX
    if runtime == AUTO:
        if is_onnx:
            return ONNXRUNTIME, f"runtime 'auto' runs {ONNX_SUFFIX} files with ONNX Runtime"
        return TORCH, (f"runtime 'auto' runs checkpoints with PyTorch; export one with hetnet-export "
                       'to run it with ONNX Runtime')
    if runtime == TORCH and is_onnx:
        raise ValueError(
            f"runtime 'torch' cannot run the ONNX file {path}; set runtime to 'onnxruntime' or "
            "'auto', or pass the checkpoint (.pt) the export was made from")
    if runtime == ONNXRUNTIME and not is_onnx:
        raise ValueError(
            f"runtime 'onnxruntime' needs an {ONNX_SUFFIX} file, got {path}; export the checkpoint "
            f'with hetnet-export --checkpoint {path} --output model.onnx, or set runtime to '
            "'torch' or 'auto'")
    return runtime, f'runtime {runtime!r} requested'


def load_detector(
        path: Union[pathlib.Path, str], runtime: str = AUTO,
        device: str = 'auto') -> tuple['DetectorBase', str]:
    """Load a model file with the chosen runtime; return (detector, reason).

    Args:
        path: a checkpoint written by hetnet-train or an .onnx file written by hetnet-export.
        runtime: 'auto', 'torch' or 'onnxruntime'; see `select_runtime`.
        device: 'cpu', 'cuda', or 'auto' (CUDA when the runtime finds it). For ONNX Runtime
            it selects the execution providers.

    Returns:
        The detector, not yet warmed up, and one sentence for the log that names the
        runtime and device it uses and the reason for the choice.

    Raises:
        ValueError: an unknown runtime or device, a runtime that cannot run this file
            type, or 'cuda' when the runtime has no CUDA support.
        ModelLoadError: the file is missing, unreadable or incompatible; the message is
            that of the runtime's CheckpointError or OnnxModelError.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    chosen, runtime_reason = select_runtime(path, runtime)

    if chosen == ONNXRUNTIME:
        from hetnet_ros.onnx_inference import OnnxAnomalyDetector, OnnxModelError, select_providers
        providers, device_reason = select_providers(device)
        try:
            detector = OnnxAnomalyDetector.from_file(path, providers)
        except OnnxModelError as error:
            raise ModelLoadError(str(error)) from error
        used = detector.session.get_providers()
        reason = (f'runtime onnxruntime with {used[0]} ({runtime_reason}; providers {providers} '
                  f'because {device_reason})')
        return detector, reason

    from hetnet_ros.checkpoint import CheckpointError
    from hetnet_ros.inference import AnomalyDetector
    torch_device, device_reason = _select_torch_device(device)
    try:
        detector = AnomalyDetector.from_checkpoint(path, device=torch_device)
    except CheckpointError as error:
        raise ModelLoadError(str(error)) from error
    return detector, f'runtime torch on {torch_device} ({runtime_reason}; {device_reason})'


def _select_torch_device(device: str) -> tuple[str, str]:
    import torch

    cuda_available = torch.cuda.is_available()
    if device == 'cuda' and not cuda_available:
        raise ValueError(
            "device 'cuda' was requested but PyTorch finds no CUDA device; "
            "set device to 'cpu' or 'auto'")
    if device == 'auto':
        if cuda_available:
            return 'cuda', "device 'auto' and PyTorch finds a CUDA device"
        return 'cpu', "device 'auto' and PyTorch finds no CUDA device"
    return device, f'device {device!r} requested'
