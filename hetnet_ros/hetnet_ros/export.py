"""Export a HetNet checkpoint to ONNX and check it against PyTorch: `hetnet-export`.

The ONNX graph is the whole inference path of `HetNet` in eval mode: input
normalisation, both teachers, fusion, the student and the anomaly map with its Gaussian
smoothing. It maps `images`, float32 (N, 3, S, S) RGB in [0, 1] with any batch size N,
to the raw `anomaly_map` (N, 1, S, S) and `pred_score` (N,). The metadata_props carry
the calibration and everything else `hetnet_ros.onnx_inference.OnnxAnomalyDetector`
needs, so the export runs without PyTorch and without the checkpoint.

After exporting, the graph runs in ONNX Runtime (CPUExecutionProvider) on the check
images, and the output file is written only when both outputs agree with PyTorch within
the tolerance.

Usage:
    hetnet-export --checkpoint models/screw.pt --output models/screw.onnx \
        --check-images ../shared/data/mvtec_screw/test --max-images 8
"""

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import pathlib
import sys
from typing import Optional, Sequence

import numpy as np
import onnx
import onnxruntime
import torch
from onnxscript import opset18 as onnx_op
from torch import Tensor, nn

import hetnet_ros
from hetnet_ros.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from hetnet_ros.data.mvtec import DatasetError, read_image
from hetnet_ros.inference import infer_raw
from hetnet_ros.model import HetNet
from hetnet_ros.onnx_inference import (
    ANOMALY_MAP_OUTPUT, CPU_PROVIDER, FORMAT_NAME, FORMAT_VERSION, INPUT_NAME, PRED_SCORE_OUTPUT,
    OnnxAnomalyDetector, OnnxModelError, read_export_metadata)
from hetnet_ros.prediction import to_model_input

logger = logging.getLogger(__name__)

# Largest absolute difference between ONNX Runtime and PyTorch accepted for the raw
# anomaly map and the raw pred_score. Both compute in float32 but in a different order:
# ONNX Runtime folds batch norm into convolutions, uses its own convolution, matrix
# product and softmax kernels, and sums in another order, so results differ by rounding.
# Maxima measured with hetnet-export --check-images mvtec_screw/test on a 2-core x86-64
# CPU with AVX-512 (PyTorch 2.14.1, onnxruntime 1.32.0): anomaly_map 3.7e-6 and
# pred_score 2.4e-7 for the 256 px demo model (12 images). WideResNet50-2 and Swin-T
# teachers with random weights at 256 px gave 9.5e-7 and 2.4e-7 (8 images). The default
# is about 25 times the largest of these. For the demo model it is 2e-5 in normalised
# score units, where the decision threshold is 0.5.
DEFAULT_TOLERANCE = 1e-4
# The torch.export-based exporter of PyTorch 2.14 implements opset 18 and newer. It
# converts its output down to older versions, which can fail, so those are rejected.
MIN_OPSET = 18
DEFAULT_MAX_IMAGES = 8
RANDOM_CHECK_IMAGES = 2
RANDOM_SEED = 0
CHECK_BATCH_SIZE = 4
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_MISMATCH = 3


class ExportError(Exception):
    """Error raised when the export fails or its check cannot run."""


class ToleranceExceededError(ExportError):
    """Error raised when ONNX Runtime differs from PyTorch by more than the tolerance."""


@dataclasses.dataclass(frozen=True)
class Verification:
    """Differences between ONNX Runtime and PyTorch on the check images.

    The raw differences are in model score units and are the ones compared with the
    tolerance. The normalised ones are in the units of the published scores, where the
    decision threshold is 0.5.
    """

    source: str  # folder of the check images, or 'random'
    image_count: int
    max_abs_diff_anomaly_map: float
    max_abs_diff_pred_score: float
    max_abs_diff_anomaly_map_normalised: float
    max_abs_diff_pred_score_normalised: float
    verdict_mismatches: int  # images whose verdict (raw score >= threshold) differs
    tolerance: float

    @property
    def passed(self) -> bool:
        """Whether both raw differences are within the tolerance."""
        return max(self.max_abs_diff_anomaly_map, self.max_abs_diff_pred_score) <= self.tolerance


class InferenceGraph(nn.Module):
    """HetNet's eval forward with plain tensor outputs, the module that is exported.

    Args:
        model: a HetNet in eval mode.
    """

    def __init__(self, model: HetNet):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Score images: (N, 3, S, S) RGB in [0, 1] -> (anomaly_map (N, 1, S, S), pred_score (N,))."""
        output = self.model(images)
        return output.anomaly_map, output.pred_score


def translate_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                       scale=None, enable_gqa=False):
    """Translate scaled_dot_product_attention to ONNX for 3-D and 4-D inputs.

    ALGF attends over (N, H * W, C) tensors without a mask, but onnxscript 0.7's own
    translation accepts only 4-D (N, heads, L, E) inputs. 3-D inputs therefore become
    softmax(query @ key^T * scale) @ value here, and 4-D inputs (for example those of a
    Transformer teacher with fused attention) keep onnxscript's translation.
    """
    if len(query.shape) == 4:
        from onnxscript.function_libs.torch_lib.ops.nn import aten_scaled_dot_product_attention
        return aten_scaled_dot_product_attention(
            query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    if attn_mask is not None or is_causal or dropout_p != 0.0 or enable_gqa:
        raise NotImplementedError(
            f'scaled_dot_product_attention on {len(query.shape)}-D inputs can be exported only '
            'without mask, causal masking, dropout or grouped query attention, as ALGF uses it')
    rank = len(query.shape)
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    key_transposed = onnx_op.Transpose(key, perm=list(range(rank - 2)) + [rank - 1, rank - 2])
    scores = onnx_op.Mul(onnx_op.MatMul(query, key_transposed), onnx_op.CastLike(scale, query))
    return onnx_op.MatMul(onnx_op.Softmax(scores, axis=-1), value)


def export_graph(model: HetNet, opset: Optional[int] = None) -> onnx.ModelProto:
    """Export the inference path of `model` (on the CPU, in eval mode) to an ONNX model.

    Args:
        model: the HetNet to export.
        opset: ONNX opset version, at least MIN_OPSET; None uses the exporter's default.

    Raises:
        ExportError: the exporter failed; the message carries its first lines.
    """
    size = model.config.image_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(RANDOM_SEED))
    batch = torch.export.Dim('batch', min=1)
    try:
        program = torch.onnx.export(
            InferenceGraph(model.cpu()).eval(), (example,), dynamo=True, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[ANOMALY_MAP_OUTPUT, PRED_SCORE_OUTPUT],
            dynamic_shapes={'images': {0: batch}}, external_data=False,
            custom_translation_table={
                torch.ops.aten.scaled_dot_product_attention.default: translate_attention})
    # torch.onnx raises its own error types and also RuntimeError, AssertionError and
    # others from torch.export, so any failure is reported as an export failure.
    except Exception as error:  # noqa: BLE001
        logger.debug('torch.onnx.export failed', exc_info=True)
        summary = ' '.join(str(error).strip().splitlines()[:3])
        raise ExportError(
            f'torch.onnx.export failed for the HetNet with teacher_mode '
            f'{model.config.teacher_mode!r} at {size} px: {type(error).__name__}: {summary}') from error
    return program.model_proto


def set_metadata(proto: onnx.ModelProto, values: dict[str, object]) -> None:
    """Set metadata_props entries; dicts and lists are stored as JSON, other values as str."""
    existing = {entry.key: entry for entry in proto.metadata_props}
    for key, value in values.items():
        text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
        if key in existing:
            existing[key].value = text
        else:
            proto.metadata_props.add(key=key, value=text)


def export_metadata(loaded: LoadedCheckpoint, tolerance: float, opset: int) -> dict[str, object]:
    """Build the metadata_props of an export; `onnx_inference` describes each key."""
    return {
        'format': FORMAT_NAME,
        'format_version': FORMAT_VERSION,
        'model_id': loaded.metadata['model_id'],
        'image_size': loaded.config.image_size,
        'calibration': loaded.calibration.to_dict(),
        'config': loaded.config.to_dict(),
        'checkpoint_metadata': loaded.metadata,
        'package_version': hetnet_ros.__version__,
        'torch_version': str(torch.__version__),
        'opset': opset,
        'tolerance': repr(float(tolerance)),
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    }


def find_check_images(directory: pathlib.Path, max_images: int) -> list[pathlib.Path]:
    """List up to `max_images` image files under `directory`, spread evenly over the sorted list.

    Spreading them picks images from every subfolder of an MVTec test folder (good and
    each defect type) instead of only the first one.

    Raises:
        ExportError: the folder is missing or contains no image files.
    """
    if not directory.is_dir():
        raise ExportError(f'check image folder not found: {directory}; pass a folder of images')
    files = sorted(
        path for path in directory.rglob('*')
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and '_mask' not in path.stem)
    if not files:
        raise ExportError(
            f'no image files ({", ".join(IMAGE_SUFFIXES)}) under {directory}; pass a folder of '
            'images, for example a data set test folder')
    if len(files) <= max_images:
        return files
    indices = np.linspace(0, len(files) - 1, max_images).round().astype(int)
    return [files[index] for index in indices]


def load_check_batch(files: Optional[Sequence[pathlib.Path]], image_size: int) -> np.ndarray:
    """Build the float32 (N, 3, S, S) check input.

    Real images are resized as the detectors do. Without files the input is
    RANDOM_CHECK_IMAGES uniform random images with a fixed seed.

    Raises:
        ExportError: an image cannot be read.
    """
    if files is None:
        generator = np.random.default_rng(RANDOM_SEED)
        return generator.random((RANDOM_CHECK_IMAGES, 3, image_size, image_size), dtype=np.float32)
    batches = []
    for path in files:
        try:
            batches.append(to_model_input(read_image(path), image_size))
        except DatasetError as error:
            raise ExportError(f'failed to read check image: {error}') from error
    return np.concatenate(batches)


def verify(detector: OnnxAnomalyDetector, model: HetNet, images: np.ndarray, source: str,
           tolerance: float) -> Verification:
    """Run ONNX Runtime and PyTorch on the same images and measure their differences.

    Args:
        detector: the export loaded in ONNX Runtime.
        model: the HetNet it was exported from, on the CPU in eval mode.
        images: float32 (N, 3, S, S) RGB in [0, 1]; they run in batches of CHECK_BATCH_SIZE,
            which also checks the dynamic batch size.
        source: where the images come from, for the report.
        tolerance: largest accepted raw absolute difference.
    """
    onnx_scores, onnx_maps, torch_scores, torch_maps = [], [], [], []
    for start in range(0, len(images), CHECK_BATCH_SIZE):
        batch = images[start:start + CHECK_BATCH_SIZE]
        scores, maps = detector.infer_batch(batch)
        onnx_scores.append(scores)
        onnx_maps.append(maps)
        scores, maps = infer_raw(model, torch.from_numpy(batch), 'cpu')
        torch_scores.append(scores)
        torch_maps.append(maps)
    onnx_score, onnx_map = np.concatenate(onnx_scores), np.concatenate(onnx_maps)
    torch_score, torch_map = np.concatenate(torch_scores), np.concatenate(torch_maps)

    calibration = detector.calibration
    threshold = calibration.threshold
    return Verification(
        source=source, image_count=len(images),
        max_abs_diff_anomaly_map=_max_abs_diff(onnx_map, torch_map),
        max_abs_diff_pred_score=_max_abs_diff(onnx_score, torch_score),
        max_abs_diff_anomaly_map_normalised=_max_abs_diff(
            calibration.normalize(onnx_map), calibration.normalize(torch_map)),
        max_abs_diff_pred_score_normalised=_max_abs_diff(
            calibration.normalize(onnx_score), calibration.normalize(torch_score)),
        verdict_mismatches=int(np.sum((onnx_score >= threshold) != (torch_score >= threshold))),
        tolerance=float(tolerance))


def export_checkpoint(
        checkpoint: pathlib.Path, output: pathlib.Path, opset: Optional[int] = None,
        check_images: Optional[pathlib.Path] = None, max_images: int = DEFAULT_MAX_IMAGES,
        tolerance: float = DEFAULT_TOLERANCE) -> Verification:
    """Export a checkpoint, check it in ONNX Runtime, and write it to `output`.

    The file is written only when the check passes, through a temporary file in the
    same folder and a rename, so `output` never contains a partial or unchecked export.

    Returns:
        The measured differences (also stored in the export's metadata).

    Raises:
        CheckpointError: the checkpoint is missing, corrupt or incompatible.
        ExportError: the export failed or the check images cannot be read.
        ToleranceExceededError: ONNX Runtime differs from PyTorch by more than `tolerance`
            (the message gives both differences).
        OSError: the output cannot be written.
    """
    # Checking the image folder first reports a bad one before loading and exporting the
    # model, which can take minutes.
    files = None if check_images is None else find_check_images(check_images, max_images)
    source = 'random' if check_images is None else str(check_images)
    loaded = load_checkpoint(checkpoint, 'cpu')
    model_id = loaded.metadata['model_id']
    images = load_check_batch(files, loaded.config.image_size)
    logger.info('exporting model %s (%s teachers, %d px) from %s',
                model_id, loaded.config.teacher_mode, loaded.config.image_size, checkpoint)
    proto = export_graph(loaded.model, opset)
    written_opset = next(entry.version for entry in proto.opset_import if entry.domain in ('', 'ai.onnx'))
    set_metadata(proto, export_metadata(loaded, tolerance, written_opset))
    proto.doc_string = (
        f'HetNet anomaly detector {model_id} exported by hetnet_ros {hetnet_ros.__version__}: '
        f'{INPUT_NAME} float32 (N, 3, S, S) RGB in [0, 1] -> raw {ANOMALY_MAP_OUTPUT} '
        f'(N, 1, S, S) and {PRED_SCORE_OUTPUT} (N,).')

    try:
        session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=[CPU_PROVIDER])
    # onnxruntime's errors derive from Exception only (InvalidGraph, Fail, NotImplemented).
    except Exception as error:  # noqa: BLE001
        raise ExportError(
            f'ONNX Runtime {onnxruntime.__version__} failed to load the exported graph: '
            f'{type(error).__name__}: {error}') from error
    detector = OnnxAnomalyDetector(session, read_export_metadata(session, output))
    verification = verify(detector, loaded.model, images, source, tolerance)
    _log_verification(verification)
    if not verification.passed:
        raise ToleranceExceededError(
            f'ONNX Runtime differs from PyTorch by more than the tolerance {tolerance:g} on '
            f'{verification.image_count} images from {source} (anomaly_map '
            f'{verification.max_abs_diff_anomaly_map:.3g}, pred_score '
            f'{verification.max_abs_diff_pred_score:.3g}); {output} was not written. Try '
            'another --opset or onnxruntime version, or pass a larger --tolerance if these '
            'differences are acceptable')

    set_metadata(proto, {'verification': dataclasses.asdict(verification)})
    _write_atomically(proto, output)
    logger.info('wrote %s (opset %d, model %s)', output, written_opset, model_id)
    return verification


def _max_abs_diff(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.max(np.abs(first.astype(np.float64) - second.astype(np.float64))))


def _log_verification(verification: Verification) -> None:
    logger.info(
        'ONNX Runtime vs PyTorch on %d images from %s: max abs difference anomaly_map %.3g, '
        'pred_score %.3g (raw units, tolerance %g); normalised anomaly_map %.3g, pred_score %.3g; '
        '%d verdicts differ',
        verification.image_count, verification.source, verification.max_abs_diff_anomaly_map,
        verification.max_abs_diff_pred_score, verification.tolerance,
        verification.max_abs_diff_anomaly_map_normalised,
        verification.max_abs_diff_pred_score_normalised, verification.verdict_mismatches)


def _write_atomically(proto: onnx.ModelProto, output: pathlib.Path) -> None:
    # NOTE: the weights are stored inside the .onnx file, which protobuf limits to 2 GB.
    temporary = output.with_name(f'.{output.name}.{os.getpid()}.tmp')
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(proto, temporary)
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)


def build_parser() -> argparse.ArgumentParser:
    """Build the `hetnet-export` argument parser."""
    parser = argparse.ArgumentParser(
        prog='hetnet-export',
        description=(
            'Export a HetNet checkpoint to one ONNX file (teachers, fusion, student, anomaly '
            'map with Gaussian smoothing, calibration in the metadata), run it in ONNX '
            'Runtime and PyTorch on the same images, and write it only when both agree '
            'within --tolerance. The detector node runs the file with ONNX Runtime, '
            'without PyTorch.'),
        epilog=(
            f'Exit status: {EXIT_OK} written and checked; {EXIT_FAILED} failed (missing '
            f'checkpoint, unreadable images, export error); 2 invalid arguments; '
            f'{EXIT_MISMATCH} ONNX Runtime differs from PyTorch by more than --tolerance '
            '(nothing written).'))
    parser.add_argument('--checkpoint', type=pathlib.Path, required=True,
                        help='checkpoint (.pt) written by hetnet-train')
    parser.add_argument('--output', type=pathlib.Path, required=True,
                        help='ONNX file to write, for example model.onnx')
    parser.add_argument('--opset', type=int, default=None,
                        help=f'ONNX opset version, at least {MIN_OPSET} '
                             "(default: the PyTorch exporter's default)")
    parser.add_argument('--check-images', type=pathlib.Path, default=None, metavar='DIR',
                        help='folder of real images (searched recursively, *_mask files skipped) '
                             'to compare ONNX Runtime with PyTorch on (default: '
                             f'{RANDOM_CHECK_IMAGES} random images)')
    parser.add_argument('--max-images', type=int, default=DEFAULT_MAX_IMAGES,
                        help='number of check images, spread evenly over the sorted files '
                             '(default: %(default)s)')
    parser.add_argument('--tolerance', type=float, default=DEFAULT_TOLERANCE,
                        help='largest accepted absolute difference between ONNX Runtime and '
                             'PyTorch, for the raw anomaly_map and the raw pred_score, in model '
                             'score units (default: %(default)g). Both run in float32, but ONNX '
                             'Runtime fuses and reorders the arithmetic (batch norm folded into '
                             'convolutions, other convolution, matrix product and reduction '
                             'kernels), so results differ by float32 rounding; differences '
                             'measured on real images at 256 px were below 4e-6')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `hetnet-export`; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.opset is not None and args.opset < MIN_OPSET:
        parser.error(f'--opset must be at least {MIN_OPSET}, got {args.opset}')
    if args.max_images < 1:
        parser.error(f'--max-images must be at least 1, got {args.max_images}')
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0.0):
        parser.error(f'--tolerance must be a finite number >= 0, got {args.tolerance}')
    # INFO for this package only, because the ONNX optimiser logs one line per merged
    # constant. `logger` is named __main__ under `python -m hetnet_ros.export`.
    logging.basicConfig(level=logging.WARNING, format='%(message)s', stream=sys.stdout)
    logging.getLogger('hetnet_ros').setLevel(logging.INFO)
    logger.setLevel(logging.INFO)

    try:
        export_checkpoint(args.checkpoint, args.output, args.opset, args.check_images,
                          args.max_images, args.tolerance)
    except ToleranceExceededError as error:
        logger.error('hetnet-export failed: %s', error)
        return EXIT_MISMATCH
    except (CheckpointError, ExportError, OnnxModelError, OSError) as error:
        logger.error('hetnet-export failed: %s', error)
        return EXIT_FAILED
    except RuntimeError as error:
        # PyTorch and the ONNX detector raise RuntimeError for device faults such as out of memory.
        logger.debug('hetnet-export failed', exc_info=True)
        logger.error('hetnet-export failed: %s', error)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
