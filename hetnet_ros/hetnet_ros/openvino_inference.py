"""Run a HetNet checkpoint with OpenVINO on the CPU: `OpenVinoAnomalyDetector`.

At load time the checkpoint's PyTorch modules are converted with `openvino.convert_model`
into two OpenVINO models, and the anomaly map is computed by the checkpoint's own
PyTorch `AnomalyMapGenerator`:

    teacher part   images -> local teacher levels (the CNN teacher)     always float32
    student part   images, local levels -> student levels               float32 or bf16
                   (Transformer teacher, fusion, MHF, OCE bottleneck, decoder)
    anomaly map    local levels, student levels -> anomaly map          PyTorch, float32

The split exists for bf16. The local teacher's levels enter the anomaly map directly,
as 1 - cos(teacher, student), so rounding them to bf16 moves the map. Measured with the
demo checkpoint (EfficientNet-Lite0 + Swin-T) on 16 real screw test images against fp32
PyTorch, the whole model in bf16 changed the map by up to 8.7 % of its range. With the
local teacher and the anomaly map in fp32, the change was at most 0.2 %. The student
part contains about 70 % of the operations of WideResNet50-2 + Swin-T HetNet at 256 px,
ALGF attention included, so it gets most of the bf16 speed-up.

Both OpenVINO models are compiled for batch 1 with static shapes; `infer_batch` runs
larger batches image by image. An instance is not thread-safe: it keeps one infer
request per part.
"""

import copy
import logging
import pathlib
import time
import warnings
from typing import List, Optional

import numpy as np
import openvino
import torch
from torch import Tensor, nn

from hetnet_ros.calibration import Calibration
from hetnet_ros.checkpoint import load_checkpoint
from hetnet_ros.model import HetNet
from hetnet_ros.prediction import (
    PRECISION_BF16, PRECISION_FP32, DetectorBase, PrecisionCheck, compare_with_fp32, probe_images)
from hetnet_ros.runtimes import OPENVINO

logger = logging.getLogger(__name__)

PRECISIONS = (PRECISION_FP32, PRECISION_BF16)
_INFERENCE_PRECISION_HINT = {PRECISION_FP32: 'f32', PRECISION_BF16: 'bf16'}

class OpenVinoModelError(Exception):
    """Error raised when a checkpoint cannot be converted or compiled with OpenVINO."""


def cpu_supports_bf16(core: Optional[openvino.Core] = None) -> bool:
    """Return whether OpenVINO's CPU plugin reports native bf16 support on this CPU."""
    core = core or openvino.Core()
    return 'BF16' in core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')


class _TeacherPart(nn.Module):
    """images -> tuple of local teacher levels."""

    def __init__(self, model: HetNet):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple:
        return tuple(self.model.extract_teacher_features(images, include_global=False).local)


class _StudentPart(nn.Module):
    """(images, *local levels) -> tuple of student levels.

    It runs a copy of the decoder whose 2x2 stride-2 transposed convolutions are
    rewritten as `_PixelShuffleUpsample`, which computes the same values. OpenVINO
    2026.4 runs transposed convolutions in fp32 also under a bf16 precision hint, and
    the rewrite made the student part of full HetNet about 7 ms faster in bf16.
    """

    def __init__(self, model: HetNet):
        super().__init__()
        self.model = model
        self.decoder = _rewrite_transposed_convolutions(copy.deepcopy(model.decoder))

    def forward(self, images: Tensor, *local: Tensor) -> tuple:
        model = self.model
        local = list(local)
        global_ = None
        if model.fusion is not None:
            normalized = (images - model.normalization_mean) / model.normalization_std
            global_ = model.extract_global_features(normalized, local)
        hybrid = model.fuse(local, global_)
        return tuple(self.decoder(model.bottleneck(model.mhf(hybrid))))


class _PixelShuffleUpsample(nn.Module):
    """A 2x2 stride-2 transposed convolution computed as a 1x1 convolution and a pixel shuffle.

    Without overlap between output windows, output pixel (2i + a, 2j + b) is a linear map
    of input pixel (i, j) with the kernel tap (a, b). The 1x1 convolution computes all four
    taps as 4 * C_out channels, ordered as PixelShuffle expects (channel c * 4 + a * 2 + b).
    """

    def __init__(self, transposed: nn.ConvTranspose2d):
        super().__init__()
        in_channels, out_channels = transposed.weight.shape[:2]
        self.conv = nn.Conv2d(in_channels, 4 * out_channels, kernel_size=1,
                              bias=transposed.bias is not None)
        with torch.no_grad():
            # (C_in, C_out, 2, 2) -> (C_out, 2, 2, C_in) -> (4 * C_out, C_in, 1, 1)
            weight = transposed.weight.permute(1, 2, 3, 0).reshape(4 * out_channels, in_channels, 1, 1)
            self.conv.weight.copy_(weight)
            if transposed.bias is not None:
                self.conv.bias.copy_(transposed.bias.repeat_interleave(4))
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.conv(x))


def _rewrite_transposed_convolutions(module: nn.Module) -> nn.Module:
    """Replace every 2x2 stride-2 unpadded transposed convolution in `module`, in place."""
    for name, child in module.named_children():
        if (isinstance(child, nn.ConvTranspose2d) and child.kernel_size == (2, 2)
                and child.stride == (2, 2) and child.padding == (0, 0)
                and child.output_padding == (0, 0) and child.dilation == (1, 1)
                and child.groups == 1):
            setattr(module, name, _PixelShuffleUpsample(child))
        else:
            _rewrite_transposed_convolutions(child)
    return module


class OpenVinoAnomalyDetector(DetectorBase):
    """A HetNet checkpoint converted to OpenVINO, ready to score single RGB images.

    Attributes:
        precision: 'fp32', or 'bf16' for the student part (see the module docstring).
        device: always 'cpu'.
    """

    runtime = OPENVINO

    def __init__(self, model: HetNet, calibration: Calibration, model_id: str,
                 precision: str = PRECISION_FP32, threads: Optional[int] = None,
                 metadata: Optional[dict] = None, compile_properties: Optional[dict] = None):
        """Convert and compile a model; prefer `from_checkpoint`.

        Args:
            model: a trained HetNet on the CPU.
            calibration: threshold and score normalisation of the model.
            model_id: id reported with every prediction.
            precision: 'fp32' or 'bf16'.
            threads: CPU threads per inference; None lets OpenVINO use all cores.
            metadata: checkpoint metadata, kept for reference.
            compile_properties: more OpenVINO CPU properties for both parts, for example
                {'PERF_COUNT': True} for `profiling_info`.

        Raises:
            ValueError: an unknown precision, or bf16 on a CPU without native bf16.
            OpenVinoModelError: conversion or compilation failed.
        """
        if precision not in PRECISIONS:
            raise ValueError(
                f"precision for runtime 'openvino' must be one of {', '.join(PRECISIONS)}, "
                f"got {precision!r}; fp16 runs on CUDA devices with runtime 'torch'")
        core = openvino.Core()
        if precision == PRECISION_BF16 and not cpu_supports_bf16(core):
            raise ValueError(
                "precision 'bf16' was requested, but OpenVINO finds no native bf16 support on "
                "this CPU; set precision to 'fp32' or 'auto'")
        super().__init__(calibration, model_id, int(model.config.image_size), metadata)
        self.precision = precision
        self.device = 'cpu'
        self._model = model.to('cpu').eval()

        started = time.monotonic()
        example = torch.from_numpy(probe_images(self.image_size, 1))
        # no_grad, not inference_mode: tracing rejects inference-mode tensors as inputs.
        with torch.no_grad():
            local = _TeacherPart(self._model)(example)
        extra = compile_properties or {}
        teacher = self._compile(core, _TeacherPart(self._model), (example,), PRECISION_FP32, threads, extra)
        student = self._compile(core, _StudentPart(self._model), (example, *local), precision, threads,
                                extra)
        self._teacher_request = teacher.create_infer_request()
        self._student_request = student.create_infer_request()
        self._teacher_outputs = list(teacher.outputs)
        self._student_outputs = list(student.outputs)
        logger.info('converted model %s to OpenVINO %s (student part in %s) in %.1f s',
                    model_id, openvino.__version__, precision, time.monotonic() - started)

    @classmethod
    def from_checkpoint(cls, path: pathlib.Path | str, precision: str = PRECISION_FP32,
                        threads: Optional[int] = None) -> 'OpenVinoAnomalyDetector':
        """Load a checkpoint written by hetnet-train and convert it.

        Raises:
            CheckpointError: the file is missing, corrupt or incompatible.
            ValueError, OpenVinoModelError: see `__init__`.
        """
        loaded = load_checkpoint(path, 'cpu')
        return cls(loaded.model, loaded.calibration, loaded.metadata['model_id'], precision,
                   threads, loaded.metadata)

    def check_against_fp32(self, images: Optional[np.ndarray] = None) -> PrecisionCheck:
        """Compare this detector with the fp32 PyTorch model on images (default: probe images).

        Args:
            images: float32 (N, 3, S, S) RGB in [0, 1].
        """
        images = probe_images(self.image_size) if images is None else images
        with torch.inference_mode():
            reference = self._model(torch.from_numpy(images))
        reference_maps = reference.anomaly_map.numpy()[:, 0]
        reference_scores = reference.pred_score.numpy()
        scores, maps = self.infer_batch(images)
        return compare_with_fp32(scores, maps, reference_scores, reference_maps, self.calibration)

    def infer_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on float32 (N, 3, S, S) RGB in [0, 1]; return raw (scores (N,), maps (N, S, S)).

        Raises:
            RuntimeError: OpenVINO failed to run a part, for example on a wrong input shape.
        """
        scores, maps = [], []
        for index in range(len(images)):
            image = np.ascontiguousarray(images[index:index + 1], dtype=np.float32)
            anomaly_map = self._infer_one(image)
            maps.append(anomaly_map)
            scores.append(anomaly_map.max())
        return np.asarray(scores, dtype=np.float32), np.stack(maps).astype(np.float32, copy=False)

    def profiling_info(self) -> dict[str, list]:
        """Return OpenVINO's per-operation profiling of the last call, per part.

        The detector must have been built with compile_properties {'PERF_COUNT': True};
        otherwise the lists are empty.
        """
        return {'teacher part': list(self._teacher_request.get_profiling_info()),
                'student part': list(self._student_request.get_profiling_info())}

    def _infer_one(self, image: np.ndarray) -> np.ndarray:
        try:
            # Shared inputs and outputs avoid copying 7 MB of levels per part and call.
            teacher = self._teacher_request.infer([image], share_inputs=True, share_outputs=True)
            local = [teacher[output] for output in self._teacher_outputs]
            student = self._student_request.infer(
                [image, *local], share_inputs=True, share_outputs=True)
            student_levels = [student[output] for output in self._student_outputs]
        # OpenVINO raises RuntimeError or its own exception types for inference errors.
        except Exception as error:  # noqa: BLE001
            raise RuntimeError(
                f'OpenVINO failed to run model {self.model_id} on input {image.shape}: '
                f'{type(error).__name__}: {error}') from error
        with torch.inference_mode():
            anomaly_map = self._model.anomaly_map_generator(
                _tensors(local), _tensors(student_levels))
        return anomaly_map.numpy()[0, 0]

    @staticmethod
    def _compile(core: openvino.Core, module: nn.Module, example: tuple, precision: str,
                 threads: Optional[int], extra_properties: dict) -> openvino.CompiledModel:
        try:
            with warnings.catch_warnings():
                # Tracing warns about the shape checks in the model's Python code. The
                # shapes are fixed at batch 1 and image_size, so the checks are constant.
                warnings.simplefilter('ignore', torch.jit.TracerWarning)
                # torch 2.14 also marks torch.jit.trace, which OpenVINO 2026.4 calls, deprecated.
                warnings.filterwarnings('ignore', category=FutureWarning, module='torch.jit')
                converted = openvino.convert_model(module, example_input=example)
            converted.reshape({port: openvino.PartialShape(list(tensor.shape))
                               for port, tensor in zip(converted.inputs, example)})
            properties = {
                'PERFORMANCE_HINT': 'LATENCY',
                # The CPU plugin runs in bf16 by default on CPUs with bf16 instructions,
                # so the precision is always set.
                'INFERENCE_PRECISION_HINT': _INFERENCE_PRECISION_HINT[precision],
            }
            if threads:
                properties['INFERENCE_NUM_THREADS'] = int(threads)
            properties.update(extra_properties)
            return core.compile_model(converted, 'CPU', properties)
        # Conversion raises OpConversionFailure and other frontend errors, all derived
        # from Exception only.
        except Exception as error:  # noqa: BLE001
            raise OpenVinoModelError(
                f'OpenVINO {openvino.__version__} failed to convert or compile '
                f'{type(module).__name__.strip("_")}: {type(error).__name__}: {error}; '
                "run the model with runtime 'torch' or 'onnxruntime' instead") from error


def _tensors(arrays: List[np.ndarray]) -> List[Tensor]:
    # OpenVINO's output arrays are views of request buffers, which the next inference of
    # the same request overwrites. The caller consumes them before that, so no copy is made.
    return [torch.from_numpy(array) for array in arrays]
