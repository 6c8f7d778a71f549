"""Run a trained HetNet checkpoint with PyTorch on single images: `AnomalyDetector`.

The detector takes RGB uint8 images of any size, resizes them to the model input size
exactly as training did, and returns an anomaly map at the input size together with the
image verdict. Scores are normalised by the checkpoint's calibration, so 0.5 is always
the decision threshold. The pre- and post-processing lives in `hetnet_ros.prediction`
and is shared with the ONNX Runtime detector (`hetnet_ros.onnx_inference`).
"""

import pathlib
from typing import Optional

import numpy as np
import torch

from hetnet_ros.calibration import Calibration
from hetnet_ros.checkpoint import load_checkpoint
from hetnet_ros.model import HetNet
# Re-exported, so that callers keep importing the result types from here.
from hetnet_ros.prediction import (  # noqa: F401
    DetectorBase, Prediction, Region, find_regions, validate_rgb)
from hetnet_ros.runtimes import TORCH


def infer_raw(
        model: HetNet, images: torch.Tensor, device: torch.device | str) -> tuple[np.ndarray, np.ndarray]:
    """Run the model in eval mode on a batch and return raw scores.

    Args:
        model: a HetNet in eval mode.
        images: float tensor (N, 3, S, S), RGB in [0, 1].
        device: device of the model.

    Returns:
        (pred_score float32 (N,), anomaly_map float32 (N, S, S)), un-normalised.
    """
    with torch.inference_mode():
        output = model(images.to(device))
    scores = output.pred_score.float().cpu().numpy().reshape(-1)
    maps = output.anomaly_map.float().cpu().numpy()[:, 0]
    return scores, maps


class AnomalyDetector(DetectorBase):
    """Detector that scores single RGB images with a loaded PyTorch model and its calibration."""

    runtime = TORCH

    def __init__(
            self, model: HetNet, calibration: Calibration, model_id: str,
            device: torch.device | str = 'cpu', metadata: Optional[dict] = None):
        """Wrap a model; prefer `from_checkpoint`.

        Args:
            model: a trained HetNet; it is moved to `device` and put in eval mode.
            calibration: threshold and score normalisation for this model.
            model_id: id reported with every prediction.
            device: torch device to run on.
            metadata: checkpoint metadata, kept for reference.
        """
        super().__init__(calibration, model_id, int(model.config.image_size), metadata)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @classmethod
    def from_checkpoint(
            cls, path: pathlib.Path | str, device: torch.device | str = 'cpu') -> 'AnomalyDetector':
        """Load a checkpoint written by hetnet-train.

        Raises:
            CheckpointError: the file is missing, corrupt or incompatible.
        """
        loaded = load_checkpoint(path, device)
        return cls(loaded.model, loaded.calibration, loaded.metadata['model_id'], device, loaded.metadata)

    def infer_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on float32 (N, 3, S, S) RGB in [0, 1]; return raw (scores (N,), maps (N, S, S))."""
        return infer_raw(self.model, torch.from_numpy(images), self.device)
