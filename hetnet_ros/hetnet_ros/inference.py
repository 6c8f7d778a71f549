"""Run a trained HetNet checkpoint with PyTorch on single images: `AnomalyDetector`.

The detector takes RGB uint8 images of any size, resizes them to the model input size
exactly as training did, and returns an anomaly map at the input size together with the
image verdict. Scores are normalised by the checkpoint's calibration, so 0.5 is always
the decision threshold. The pre- and post-processing lives in `hetnet_ros.prediction`
and is shared with the ONNX Runtime detector (`hetnet_ros.onnx_inference`).

The networks can run in reduced precision: 'bf16' on CPUs whose oneDNN has native bf16
kernels and on CUDA devices that support bf16, 'fp16' on CUDA devices. The local teacher
and the anomaly map run in float32 in every precision (see `HetNet._run_local_teacher` and
`HetNet.compute_anomaly_map`).
"""

import contextlib
import functools
import pathlib
from typing import Optional

import numpy as np
import torch

from hetnet_ros.calibration import Calibration
from hetnet_ros.checkpoint import load_checkpoint
from hetnet_ros.model import HetNet
# Re-exported, so that callers keep importing the result types from here.
from hetnet_ros.prediction import (  # noqa: F401
    PRECISION_BF16, PRECISION_FP16, PRECISION_FP32, PRECISIONS, DetectorBase, PrecisionCheck,
    Prediction, Region, compare_with_fp32, find_regions, probe_images, validate_rgb)
from hetnet_ros.runtimes import TORCH

AUTOCAST_DTYPES = {PRECISION_FP16: torch.float16, PRECISION_BF16: torch.bfloat16}


@functools.cache
def cpu_bf16_unavailable_reason() -> str:
    """Return why this CPU cannot run bf16 autocast fast, or '' when oneDNN has native bf16 kernels."""
    if not torch.backends.mkldnn.is_available():
        return 'this PyTorch build has no oneDNN (mkldnn)'
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return (f'oneDNN finds no native bf16 instructions on this CPU '
                f'(capability {torch.backends.cpu.get_cpu_capability()})')
    return ''


def autocast_dtype(precision: str, device: torch.device | str) -> Optional[torch.dtype]:
    """Check that `precision` can run on `device` and return its autocast dtype, None for 'fp32'.

    Raises:
        ValueError: an unknown precision, 'fp16' on the CPU, 'bf16' on a CPU without
            native oneDNN bf16 or on a CUDA device without native bf16, or a reduced
            precision on a device type other than cpu and cuda.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == PRECISION_FP32:
        return None

    device = torch.device(device)
    if device.type == 'cpu':
        if precision == PRECISION_FP16:
            raise ValueError(
                "precision 'fp16' is not supported on the CPU because oneDNN accelerates bf16 "
                "there, not fp16; use 'bf16' or 'fp32' on the CPU, or 'fp16' on a CUDA device")
        reason = cpu_bf16_unavailable_reason()
        if reason:
            raise ValueError(
                f"precision 'bf16' is not supported on this CPU: {reason}; use 'fp32' on this CPU")
    elif device.type == 'cuda':
        # Without emulation: emulated bf16 on GPUs before compute capability 8.0 is slower than fp32.
        if precision == PRECISION_BF16 and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ValueError(
                f"precision 'bf16' is not supported on CUDA device {device}, which has no native "
                "bf16 (compute capability below 8.0); use 'fp16' or 'fp32' on this device")
    else:
        raise ValueError(
            f"precision {precision!r} is supported on cpu and cuda devices only, got device "
            f"{device}; use 'fp32' on this device")
    return AUTOCAST_DTYPES[precision]


def uses_channels_last(precision: str, device: torch.device | str) -> bool:
    """Return whether model and input use channels_last: True for bf16 on the CPU.

    oneDNN's bf16 convolutions are faster on channels_last tensors than on contiguous ones.
    """
    return precision == PRECISION_BF16 and torch.device(device).type == 'cpu'


def infer_raw(
        model: HetNet, images: torch.Tensor, device: torch.device | str,
        precision: str = PRECISION_FP32) -> tuple[np.ndarray, np.ndarray]:
    """Run the model in eval mode on a batch and return raw scores.

    Args:
        model: a HetNet in eval mode.
        images: float tensor (N, 3, S, S), RGB in [0, 1].
        device: device of the model.
        precision: 'fp32', or 'fp16' or 'bf16' to run the networks under autocast with
            that dtype. With 'bf16' on the CPU the input is converted to channels_last;
            converting the model too (as AnomalyDetector does) makes it faster.

    Returns:
        (pred_score float32 (N,), anomaly_map float32 (N, S, S)), un-normalised.

    Raises:
        ValueError: the precision is unknown or cannot run on `device`; see `autocast_dtype`.
    """
    dtype = autocast_dtype(precision, device)
    device = torch.device(device)
    images = images.to(device)
    if uses_channels_last(precision, device):
        images = images.contiguous(memory_format=torch.channels_last)
    autocast = (contextlib.nullcontext() if dtype is None
                else torch.autocast(device.type, dtype=dtype))
    with torch.inference_mode(), autocast:
        output = model(images)
    scores = output.pred_score.float().cpu().numpy().reshape(-1)
    maps = output.anomaly_map.float().cpu().numpy()[:, 0]
    return scores, maps


class AnomalyDetector(DetectorBase):
    """Detector that scores single RGB images with a loaded PyTorch model and its calibration."""

    runtime = TORCH

    def __init__(
            self, model: HetNet, calibration: Calibration, model_id: str,
            device: torch.device | str = 'cpu', metadata: Optional[dict] = None,
            precision: str = PRECISION_FP32):
        """Wrap a model; prefer `from_checkpoint`.

        Args:
            model: a trained HetNet. It is moved to `device` and put in eval mode in place.
                With precision 'bf16' on the CPU it is also converted to channels_last.
            calibration: threshold and score normalisation for this model.
            model_id: id reported with every prediction.
            device: torch device to run on.
            metadata: checkpoint metadata, kept for reference.
            precision: 'fp32' (default); 'bf16' on a CPU with native oneDNN bf16 or a CUDA
                device with native bf16; 'fp16' on a CUDA device. The calibration was
                made in fp32, so reduced precision shifts scores by the map difference
                that it causes. `check_against_fp32` measures it. With bf16 on the CPU
                (torch 2.14.1, 6 real screw images), maps of models/demo_screw.pt
                (EfficientNet-Lite0 + Swin-T) differed from fp32 by 0.2 % of the map range.

        Raises:
            ValueError: the precision is unknown or cannot run on `device`; the message
                names the precisions that can.
        """
        super().__init__(calibration, model_id, int(model.config.image_size), metadata)
        self.device = torch.device(device)
        autocast_dtype(precision, self.device)
        self.precision = precision
        self.model = model.to(self.device).eval()
        if uses_channels_last(precision, self.device):
            self.model = self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_checkpoint(
            cls, path: pathlib.Path | str, device: torch.device | str = 'cpu',
            precision: str = PRECISION_FP32) -> 'AnomalyDetector':
        """Load a checkpoint written by hetnet-train to run in `precision` (see `__init__`).

        Raises:
            ValueError: the precision is unknown or cannot run on `device`, checked before
                the checkpoint is read.
            CheckpointError: the file is missing, corrupt or incompatible.
        """
        autocast_dtype(precision, device)
        loaded = load_checkpoint(path, device)
        return cls(loaded.model, loaded.calibration, loaded.metadata['model_id'], device, loaded.metadata,
                   precision)

    def infer_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on float32 (N, 3, S, S) RGB in [0, 1]; return raw (scores (N,), maps (N, S, S))."""
        return infer_raw(self.model, torch.from_numpy(images), self.device, self.precision)

    def check_against_fp32(self, images: Optional[np.ndarray] = None) -> PrecisionCheck:
        """Compare this detector's precision with fp32 on images (default: `probe_images`).

        Args:
            images: float32 (N, 3, S, S) RGB in [0, 1].
        """
        images = probe_images(self.image_size) if images is None else images
        reference_scores, reference_maps = infer_raw(
            self.model, torch.from_numpy(images), self.device, PRECISION_FP32)
        scores, maps = self.infer_batch(images)
        return compare_with_fp32(scores, maps, reference_scores, reference_maps, self.calibration)
