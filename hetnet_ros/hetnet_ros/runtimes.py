"""Choose the runtime and precision for a model file and load its detector: `load_detector`.

Runtimes:
    torch        `inference.AnomalyDetector` on a checkpoint written by hetnet-train
    onnxruntime  `onnx_inference.OnnxAnomalyDetector` on an .onnx file written by hetnet-export
    openvino     `openvino_inference.OpenVinoAnomalyDetector` on a checkpoint, CPU only

All detectors have the same interface (model_id, image_size, threshold, calibration,
metadata, runtime, device, precision, predict, warmup). Each runtime's module is imported
only when that runtime is chosen, so loading an ONNX export never imports PyTorch.

With runtime, device and precision 'auto', `load_detector` picks the fastest
configuration measured with hetnet-bench that keeps fp32-level maps:

    checkpoint, CUDA device   torch on cuda, fp16
    checkpoint, CPU           openvino, bf16 where the CPU has native bf16, else fp32;
                              torch fp32 when OpenVINO is not installed
    .onnx file                onnxruntime, fp32

In every reduced precision the local (CNN) teacher and the anomaly map stay in float32.
A reduced precision chosen by 'auto' is checked against fp32 on probe images at load
time, and the detector falls back to fp32 when the maps differ by more than the
tolerance of `prediction.PrecisionCheck`.
"""

import pathlib
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:
    # Only for annotations: importing the node module, which imports this one, stays light.
    from hetnet_ros.prediction import DetectorBase

AUTO = 'auto'
TORCH = 'torch'
ONNXRUNTIME = 'onnxruntime'
OPENVINO = 'openvino'
RUNTIMES = (AUTO, TORCH, ONNXRUNTIME, OPENVINO)
DEVICES = ('auto', 'cpu', 'cuda')
# 'auto' or one of prediction.PRECISIONS; kept here so this module imports nothing heavy.
PRECISION_CHOICES = (AUTO, 'fp32', 'fp16', 'bf16')
ONNX_SUFFIX = '.onnx'


class ModelLoadError(Exception):
    """Error raised when a model file is missing, unreadable or incompatible, for any runtime.

    It wraps the runtime's own error (CheckpointError, OnnxModelError or
    OpenVinoModelError), so callers can catch it without importing the runtime's module.
    """


class ConversionError(ModelLoadError):
    """Error raised when OpenVINO cannot convert or compile a readable checkpoint."""


def select_runtime(
        path: Union[pathlib.Path, str], runtime: str = AUTO, device: str = AUTO) -> tuple[str, str]:
    """Choose the runtime for a model file and a device request; return (runtime, reason).

    Raises:
        ValueError: an unknown runtime or device, or a runtime that cannot run this file
            type or on this device.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    path = pathlib.Path(path)
    is_onnx = path.suffix.lower() == ONNX_SUFFIX

    if runtime == AUTO:
        if is_onnx:
            return ONNXRUNTIME, f"runtime 'auto' runs {ONNX_SUFFIX} files with ONNX Runtime"
        if device == 'cuda' or (device == AUTO and _torch_finds_cuda()):
            return TORCH, "runtime 'auto' runs checkpoints on a CUDA device with PyTorch"
        if device == 'cpu' or device == AUTO:
            if _openvino_installed():
                return OPENVINO, ("runtime 'auto' runs checkpoints on the CPU with OpenVINO, the "
                                  'fastest CPU runtime measured with hetnet-bench')
            return TORCH, ("runtime 'auto' runs checkpoints with PyTorch because OpenVINO is not "
                           'installed; pip install openvino for faster CPU inference')

    if runtime == TORCH and is_onnx:
        raise ValueError(
            f"runtime 'torch' cannot run the ONNX file {path}; set runtime to 'onnxruntime' or "
            "'auto', or pass the checkpoint (.pt) the export was made from")
    if runtime == OPENVINO and is_onnx:
        raise ValueError(
            f"runtime 'openvino' converts checkpoints, not ONNX files, got {path}; pass the "
            "checkpoint (.pt) the export was made from, or set runtime to 'onnxruntime'")
    if runtime == OPENVINO and device == 'cuda':
        raise ValueError(
            "runtime 'openvino' runs on the CPU only, but device 'cuda' was requested; set "
            "device to 'cpu' or 'auto', or runtime to 'torch'")
    if runtime == ONNXRUNTIME and not is_onnx:
        raise ValueError(
            f"runtime 'onnxruntime' needs an {ONNX_SUFFIX} file, got {path}; export the checkpoint "
            f'with hetnet-export --checkpoint {path} --output model.onnx, or set runtime to '
            "'torch', 'openvino' or 'auto'")
    return runtime, f'runtime {runtime!r} requested'


def select_precision(runtime: str, device: str, precision: str = AUTO) -> tuple[str, str]:
    """Choose the precision for a runtime on a device ('cpu' or 'cuda'); return (precision, reason).

    'auto' picks fp16 for PyTorch on CUDA, bf16 for OpenVINO on a CPU with native bf16,
    and fp32 otherwise. An explicit precision is returned as it is; the detector checks
    that it can run on the device.

    Raises:
        ValueError: an unknown precision, or a reduced precision for ONNX Runtime.
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    if runtime == ONNXRUNTIME:
        if precision not in (AUTO, 'fp32'):
            raise ValueError(
                f"runtime 'onnxruntime' runs exports in fp32 only, got precision {precision!r}; "
                "set precision to 'fp32' or 'auto', or run the checkpoint with runtime 'openvino' "
                "or 'torch' for reduced precision")
        return 'fp32', 'ONNX Runtime runs exports in fp32'
    if precision != AUTO:
        return precision, f'precision {precision!r} requested'
    if runtime == TORCH and device == 'cuda':
        return 'fp16', "precision 'auto' uses fp16 on CUDA devices"
    if runtime == OPENVINO:
        from hetnet_ros.openvino_inference import cpu_supports_bf16
        if cpu_supports_bf16():
            return 'bf16', "precision 'auto' uses bf16 because this CPU has native bf16 instructions"
        return 'fp32', "precision 'auto' uses fp32 because this CPU has no native bf16 instructions"
    return 'fp32', "precision 'auto' uses fp32 for PyTorch on the CPU"


def load_detector(
        path: Union[pathlib.Path, str], runtime: str = AUTO, device: str = AUTO,
        precision: str = AUTO, threads: Optional[int] = None) -> tuple['DetectorBase', str]:
    """Load a model file with the chosen runtime and precision; return (detector, reason).

    The detector's `check_against_fp32` compares a reduced precision with fp32 on probe
    images. When precision 'auto' chose it and it is outside the tolerance, the model is
    loaded again in fp32. An explicitly requested precision is kept, and runtime 'auto'
    falls back to PyTorch when OpenVINO cannot convert the checkpoint.

    Args:
        path: a checkpoint written by hetnet-train or an .onnx file written by hetnet-export.
        runtime: 'auto', 'torch', 'onnxruntime' or 'openvino'; see `select_runtime`.
        device: 'cpu', 'cuda', or 'auto' (CUDA when PyTorch or ONNX Runtime finds it).
            For ONNX Runtime it selects the execution providers.
        precision: 'auto', 'fp32', 'bf16' or 'fp16'; see `select_precision`.
        threads: CPU threads per inference for OpenVINO; None uses all cores.

    Returns:
        The detector, not yet warmed up, and one sentence for the log that names the
        runtime, device and precision it uses and the reasons for the choice.

    Raises:
        ValueError: an unknown runtime, device or precision, a combination that cannot run
            this file type or on this device, or 'cuda' when the runtime has no CUDA support.
        ModelLoadError: the file is missing, unreadable, incompatible, or cannot be converted.
    """
    chosen, runtime_reason = select_runtime(path, runtime, device)

    if chosen == ONNXRUNTIME:
        select_precision(chosen, 'cpu', precision)
        from hetnet_ros.onnx_inference import OnnxAnomalyDetector, OnnxModelError, select_providers
        providers, device_reason = select_providers(device)
        try:
            detector = OnnxAnomalyDetector.from_file(path, providers)
        except OnnxModelError as error:
            raise ModelLoadError(str(error)) from error
        used = detector.session.get_providers()
        reason = (f'runtime onnxruntime with {used[0]} in fp32 ({runtime_reason}; providers '
                  f'{providers} because {device_reason})')
        return detector, reason

    if chosen == OPENVINO:
        torch_device, device_reason = 'cpu', 'OpenVINO runs on the CPU'
    else:
        torch_device, device_reason = _select_torch_device(device)
    chosen_precision, precision_reason = select_precision(chosen, torch_device, precision)
    try:
        detector = _load_checkpoint_detector(chosen, path, torch_device, chosen_precision, threads)
    except ConversionError as error:
        if runtime != AUTO:
            raise
        # runtime 'auto' chose OpenVINO, so PyTorch on the CPU is the fallback.
        chosen, runtime_reason = TORCH, (
            f"runtime 'auto' falls back to PyTorch because OpenVINO failed: {error}")
        device_reason = 'the CPU, where OpenVINO would have run'
        chosen_precision, precision_reason = select_precision(chosen, torch_device, precision)
        detector = _load_checkpoint_detector(chosen, path, torch_device, chosen_precision, threads)

    check_reason = ''
    if chosen_precision != 'fp32':
        check = detector.check_against_fp32()
        check_reason = f'; {chosen_precision} against fp32: {check.describe()}'
        if precision == AUTO and not check.passed:
            detector = _load_checkpoint_detector(chosen, path, torch_device, 'fp32', threads)
            check_reason += ', outside the tolerance, so it falls back to fp32'
            chosen_precision = 'fp32'
    reason = (f'runtime {chosen} on {torch_device} in {chosen_precision} ({runtime_reason}; '
              f'{device_reason}; {precision_reason}{check_reason})')
    return detector, reason


def _load_checkpoint_detector(runtime: str, path, device: str, precision: str,
                              threads: Optional[int]) -> 'DetectorBase':
    from hetnet_ros.checkpoint import CheckpointError

    try:
        if runtime == OPENVINO:
            from hetnet_ros.openvino_inference import OpenVinoAnomalyDetector, OpenVinoModelError
            try:
                return OpenVinoAnomalyDetector.from_checkpoint(path, precision, threads)
            except OpenVinoModelError as error:
                raise ConversionError(str(error)) from error
        from hetnet_ros.inference import AnomalyDetector
        return AnomalyDetector.from_checkpoint(path, device=device, precision=precision)
    except CheckpointError as error:
        raise ModelLoadError(str(error)) from error


def _torch_finds_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec('openvino') is not None


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
