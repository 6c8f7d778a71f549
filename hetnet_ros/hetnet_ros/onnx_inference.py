"""Run a HetNet exported by hetnet-export with ONNX Runtime: `OnnxAnomalyDetector`.

The detector has the interface of `hetnet_ros.inference.AnomalyDetector` and shares its
pre- and post-processing (`hetnet_ros.prediction`). It needs only onnxruntime, NumPy
and OpenCV: this module and the modules it imports never import PyTorch.

An export is one .onnx file. Its graph maps `images`, float32 (N, 3, S, S) RGB in
[0, 1], to the raw `anomaly_map` (N, 1, S, S) and `pred_score` (N,). Its
metadata_props store what the detector needs besides the graph, as strings:

    format, format_version   identify a hetnet_ros export and its layout
    model_id                 id of the checkpoint the export was made from
    image_size               side S of the model input in pixels
    calibration              Calibration.to_dict() as JSON
    config                   HetNetConfig.to_dict() as JSON
    checkpoint_metadata      the checkpoint's metadata as JSON
    package_version          hetnet_ros version that wrote the export
    torch_version            PyTorch version that wrote the export
    created                  time of the export (ISO 8601, UTC)
    opset                    ONNX opset version of the graph
    tolerance                largest absolute difference to PyTorch accepted at export
    verification             JSON of the differences measured at export, and on what
"""

import json
import logging
import pathlib
from typing import Optional, Sequence

import numpy as np
import onnxruntime

import hetnet_ros
from hetnet_ros.calibration import Calibration
from hetnet_ros.prediction import DetectorBase
from hetnet_ros.runtimes import DEVICES, ONNXRUNTIME

logger = logging.getLogger(__name__)

FORMAT_NAME = 'hetnet_ros.onnx'
FORMAT_VERSION = 1

INPUT_NAME = 'images'
ANOMALY_MAP_OUTPUT = 'anomaly_map'
PRED_SCORE_OUTPUT = 'pred_score'
REQUIRED_METADATA = ('format', 'format_version', 'model_id', 'image_size', 'calibration', 'config')
JSON_METADATA = ('calibration', 'config', 'checkpoint_metadata', 'verification')

CPU_PROVIDER = 'CPUExecutionProvider'
CUDA_PROVIDER = 'CUDAExecutionProvider'


class OnnxModelError(Exception):
    """Error raised when an ONNX file is missing, unreadable, or not a hetnet_ros export."""


def select_providers(device: str = 'auto') -> tuple[list[str], str]:
    """Choose ONNX Runtime execution providers for a device request.

    Args:
        device: 'cpu', 'cuda', or 'auto' (CUDA when this onnxruntime build has it).

    Returns:
        (providers in order of preference, reason for the choice).

    Raises:
        ValueError: an unknown device, or 'cuda' with an onnxruntime build without CUDA.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    available = onnxruntime.get_available_providers()
    has_cuda = CUDA_PROVIDER in available
    if device == 'cuda' and not has_cuda:
        raise ValueError(
            f"device 'cuda' was requested but onnxruntime {onnxruntime.__version__} offers only "
            f"{', '.join(available)}; install onnxruntime-gpu or set device to 'cpu' or 'auto'")
    if device == 'cpu':
        return [CPU_PROVIDER], "device 'cpu' requested"
    if has_cuda:
        return [CUDA_PROVIDER, CPU_PROVIDER], f"device {device!r} and {CUDA_PROVIDER} is available"
    return [CPU_PROVIDER], f"device 'auto' and this onnxruntime build has no {CUDA_PROVIDER}"


def read_export_metadata(session: onnxruntime.InferenceSession, path: pathlib.Path) -> dict:
    """Read and check the metadata_props of a hetnet_ros export, JSON values decoded.

    Raises:
        OnnxModelError: the model is not a hetnet_ros export, is from a newer format
            version, or has missing or malformed entries.
    """
    stored = dict(session.get_modelmeta().custom_metadata_map)
    if stored.get('format') != FORMAT_NAME:
        raise OnnxModelError(
            f'{path} is an ONNX model but not a hetnet_ros export (metadata format is '
            f'{stored.get("format")!r}, expected {FORMAT_NAME!r}); export the checkpoint with '
            'hetnet-export')
    missing = [key for key in REQUIRED_METADATA if key not in stored]
    if missing:
        raise OnnxModelError(
            f'ONNX export {path} lacks the metadata entries {missing}; export the checkpoint again '
            'with hetnet-export')

    metadata: dict = dict(stored)
    try:
        version = int(stored['format_version'])
        metadata['format_version'] = version
        metadata['image_size'] = int(stored['image_size'])
        if 'opset' in stored:
            metadata['opset'] = int(stored['opset'])
        if 'tolerance' in stored:
            metadata['tolerance'] = float(stored['tolerance'])
        for key in JSON_METADATA:
            if key in stored:
                metadata[key] = json.loads(stored[key])
    except ValueError as error:
        raise OnnxModelError(
            f'ONNX export {path} has malformed metadata ({error}); export the checkpoint again '
            'with hetnet-export') from error
    if version > FORMAT_VERSION:
        raise OnnxModelError(
            f'ONNX export {path} has format version {version}, but hetnet_ros '
            f'{hetnet_ros.__version__} reads versions up to {FORMAT_VERSION}; upgrade hetnet_ros')
    return metadata


class OnnxAnomalyDetector(DetectorBase):
    """An exported HetNet in an ONNX Runtime session, ready to score single RGB images.

    Attributes:
        session: the onnxruntime.InferenceSession that runs the graph.
        device: 'cuda' when the session runs on CUDAExecutionProvider, else 'cpu'.
        export_metadata: all metadata_props of the export, JSON values decoded.
    """

    runtime = ONNXRUNTIME

    def __init__(self, session: onnxruntime.InferenceSession, export_metadata: dict):
        """Wrap a session and the metadata read by `read_export_metadata`; prefer `from_file`."""
        calibration = Calibration.from_dict(export_metadata['calibration'])
        super().__init__(
            calibration, export_metadata['model_id'], export_metadata['image_size'],
            export_metadata.get('checkpoint_metadata'))
        self.session = session
        self.export_metadata = export_metadata
        self.device = 'cuda' if session.get_providers()[0] == CUDA_PROVIDER else 'cpu'

    @classmethod
    def from_file(
            cls, path: pathlib.Path | str,
            providers: Optional[Sequence[str]] = None) -> 'OnnxAnomalyDetector':
        """Load an ONNX file written by hetnet-export.

        Args:
            path: the .onnx file.
            providers: ONNX Runtime execution providers in order of preference; None uses
                `select_providers('auto')`.

        Raises:
            OnnxModelError: the file is missing or unreadable, is not a hetnet_ros export,
                or its graph does not have the expected input and outputs.
        """
        path = pathlib.Path(path)
        if not path.is_file():
            raise OnnxModelError(
                f'ONNX file not found: {path}; pass the .onnx file written by hetnet-export')
        if providers is None:
            providers, _ = select_providers('auto')
        try:
            session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        # onnxruntime raises its own exception types, derived from Exception only
        # (InvalidProtobuf, Fail, NoSuchFile, EPFail and more), for any unreadable model.
        except Exception as error:  # noqa: BLE001
            raise OnnxModelError(
                f'failed to load ONNX file {path} with providers {list(providers)}: '
                f'{type(error).__name__}: {error}') from error

        metadata = read_export_metadata(session, path)
        _check_signature(session, path, metadata['image_size'])
        try:
            detector = cls(session, metadata)
        except (KeyError, TypeError, ValueError) as error:
            raise OnnxModelError(
                f'ONNX export {path} has a calibration this version of hetnet_ros '
                f'({hetnet_ros.__version__}) cannot use: {error}') from error
        logger.info('loaded ONNX export %s (model %s, providers %s)',
                    path, detector.model_id, session.get_providers())
        return detector

    def infer_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the graph on float32 (N, 3, S, S) RGB in [0, 1]; return raw (scores (N,), maps (N, S, S)).

        Raises:
            RuntimeError: ONNX Runtime failed to run the graph, for example out of memory.
        """
        feed = {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)}
        try:
            anomaly_map, pred_score = self.session.run([ANOMALY_MAP_OUTPUT, PRED_SCORE_OUTPUT], feed)
        # onnxruntime's run errors derive from Exception only, so they are re-raised as the
        # RuntimeError that callers of predict expect.
        except Exception as error:  # noqa: BLE001
            raise RuntimeError(
                f'ONNX Runtime failed to run model {self.model_id} on input {images.shape}: '
                f'{type(error).__name__}: {error}') from error
        return pred_score.astype(np.float32).reshape(-1), anomaly_map.astype(np.float32)[:, 0]


def _check_signature(session: onnxruntime.InferenceSession, path: pathlib.Path, image_size: int) -> None:
    """Raise OnnxModelError unless the graph has the input and outputs that hetnet-export writes."""
    inputs = session.get_inputs()
    outputs = {output.name for output in session.get_outputs()}
    expected_outputs = {ANOMALY_MAP_OUTPUT, PRED_SCORE_OUTPUT}
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or not expected_outputs <= outputs:
        raise OnnxModelError(
            f'ONNX export {path} has inputs {[item.name for item in inputs]} and outputs '
            f'{sorted(outputs)}, expected input {INPUT_NAME!r} and outputs {sorted(expected_outputs)}; '
            'export the checkpoint again with hetnet-export')
    if list(inputs[0].shape[1:]) != [3, image_size, image_size]:
        raise OnnxModelError(
            f'ONNX export {path} takes input shape {inputs[0].shape}, but its metadata gives '
            f'image_size {image_size}; export the checkpoint again with hetnet-export')
