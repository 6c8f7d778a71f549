"""HetNet: heterogeneous-teacher reverse distillation with noise-fused collaborative students.

Data flow for a batch of (N, 3, S, S) RGB images in [0, 1]:

1. The frozen teachers extract the local (CNN) and global (Transformer) features per level.
   The Transformer maps are bilinearly resized to the CNN map size of the same level.
2. ALGF fuses both per level into o_k, and MHF concatenates the levels into the prototype o.
3. The student (OCE bottleneck and decoder) reconstructs the teacher's local features from o (SR).
4. In training, LMGN noise is added to the local features before ALGF, giving o'. The same
   student then denoises o' (SD), and the loss is L_KD(SR) + alpha * L_Recon(SD).
5. In inference, the anomaly map is the smoothed sum of the per-level cosine distances
   between the teacher's local features and SR(o), and the image score is its maximum.
"""

import itertools
import logging
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from hetnet_ros.model.algf import AdaptiveLocalGlobalFusion, ConcatFusion
from hetnet_ros.model.anomaly_map import AnomalyMapGenerator
from hetnet_ros.model.bottleneck import OneClassEmbedding
from hetnet_ros.model.config import RANDOM_WEIGHTS, HetNetConfig
from hetnet_ros.model.decoder import StudentDecoder
from hetnet_ros.model.lmgn import LocalGaussianNoise
from hetnet_ros.model.loss import HetNetLoss
from hetnet_ros.model.mhf import MultiScaleHybridFusion
from hetnet_ros.model.teachers import TimmTeacher

_LOGGER = logging.getLogger(__name__)


class InferenceBatch(NamedTuple):
    """Raw (not normalised) HetNet output for a batch of N images of side S.

    Attributes:
        pred_score: (N,) image anomaly scores, the maximum of each anomaly map.
        anomaly_map: (N, 1, S, S) Gaussian-smoothed sum over levels of 1 - cosine similarity.
    """

    pred_score: Tensor
    anomaly_map: Tensor


class TeacherFeatures(NamedTuple):
    """Teacher features per level, shallow to deep.

    Attributes:
        local: list of (N, C_k, H_k, W_k), the distillation targets. These are the CNN
            features, or the Transformer features when teacher_mode is 'transformer'.
        global_: list of (N, T_k, H_k, W_k) Transformer features resized to the local map
            size when teacher_mode is 'both'. None in the other modes and when the
            Transformer was skipped (include_global=False).
    """

    local: List[Tensor]
    global_: Optional[List[Tensor]]


class HetNet(nn.Module):
    """HetNet anomaly detector.

    In train mode, `forward(images)` returns the same loss dict as `training_loss`, so a
    DistributedDataParallel wrapper can synchronise gradients. In eval mode it returns an
    `InferenceBatch` and uses no randomness. The teachers stay frozen in eval mode.

    teacher_mode 'cnn' is plain reverse distillation: the CNN features go straight to
    MHF. teacher_mode 'transformer' uses the Transformer features in the local role: they
    go straight to MHF, receive the LMGN noise, and are what the student reconstructs.

    Args:
        config: model settings; HetNetConfig() by default.
        load_teacher_weights: False builds the teachers with random weights, ignoring
            cnn_weights and transformer_weights. Use it to rebuild a model whose state
            dict, teachers included, comes from a checkpoint, so that no download or
            weight file is needed.

    Raises:
        ValueError: an input image batch has the wrong shape or dtype (in every method
            that takes images).
    """

    def __init__(self, config: Optional[HetNetConfig] = None, load_teacher_weights: bool = True):
        super().__init__()
        config = HetNetConfig() if config is None else config
        if not isinstance(config, HetNetConfig):
            raise TypeError(f'config must be a HetNetConfig, got {type(config).__name__}')
        self.config = config

        self.cnn_teacher: Optional[TimmTeacher] = None
        self.transformer_teacher: Optional[TimmTeacher] = None
        if config.uses_cnn:
            weights = config.cnn_weights if load_teacher_weights else RANDOM_WEIGHTS
            self.cnn_teacher = TimmTeacher(
                config.cnn_teacher, weights, config.levels, config.image_size, role='cnn_teacher')
        if config.uses_transformer:
            weights = config.transformer_weights if load_teacher_weights else RANDOM_WEIGHTS
            self.transformer_teacher = TimmTeacher(
                config.transformer_teacher, weights, config.levels, config.image_size,
                role='transformer_teacher')
        local_teacher = self.cnn_teacher if self.cnn_teacher is not None else self.transformer_teacher
        self.local_channels = local_teacher.channels

        self.fusion: Optional[nn.ModuleList] = None
        if config.teacher_mode == 'both':
            block = AdaptiveLocalGlobalFusion if config.use_algf else ConcatFusion
            self.fusion = nn.ModuleList(
                block(local, global_)
                for local, global_ in zip(self.cnn_teacher.channels, self.transformer_teacher.channels))
        self.mhf = MultiScaleHybridFusion(self.local_channels)
        self.bottleneck = OneClassEmbedding(
            self.mhf.out_channels, 2 * self.local_channels[-1], config.bottleneck_blocks)
        self.decoder = StudentDecoder(self.local_channels, self.bottleneck.out_channels, config.decoder_blocks)

        self.lmgn = LocalGaussianNoise(
            config.noise, config.noise_scale_max, config.noise_centered, config.noise_ridge,
            config.noise_size)
        self.loss = HetNetLoss(config.alpha, config.loss_cosine)
        self.anomaly_map_generator = AnomalyMapGenerator(config.image_size, config.sigma)
        self.register_buffer(
            'normalization_mean', torch.tensor(config.normalization_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer(
            'normalization_std', torch.tensor(config.normalization_std).view(1, 3, 1, 1), persistent=False)

        trainable = sum(p.numel() for p in self.trainable_parameters())
        _LOGGER.info('built HetNet (teacher_mode=%s, local channels %s, %.1f M trainable parameters)',
                     config.teacher_mode, self.local_channels, trainable / 1e6)

    @property
    def noise_statistics_fitted(self) -> bool:
        """Whether LMGN statistics exist (needed for training with noise 'mgd')."""
        return self.lmgn.is_fitted

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Iterate over the fusion, bottleneck and decoder parameters; the teachers are frozen."""
        modules = [self.mhf, self.bottleneck, self.decoder]
        if self.fusion is not None:
            modules.insert(0, self.fusion)
        return itertools.chain.from_iterable(module.parameters() for module in modules)

    def train(self, mode: bool = True) -> 'HetNet':
        """Set train or eval mode; the teachers stay in eval mode either way."""
        super().train(mode)
        for teacher in (self.cnn_teacher, self.transformer_teacher):
            if teacher is not None:
                teacher.eval()
        return self

    def forward(self, images: Tensor) -> Union[InferenceBatch, Dict[str, Tensor]]:
        """Score images (eval mode) or compute the training loss (train mode).

        Args:
            images: (N, 3, S, S) float RGB in [0, 1], S = config.image_size.

        Returns:
            Eval mode: InferenceBatch(pred_score (N,), anomaly_map (N, 1, S, S)).
            Train mode: the dict of `training_loss`.
        """
        if self.training:
            return self.training_loss(images)
        teacher = self.extract_teacher_features(images)
        student = self.decode(self.fuse(teacher.local, teacher.global_))
        anomaly_map = self.compute_anomaly_map(teacher.local, student, images.device.type)
        pred_score = anomaly_map.amax(dim=(1, 2, 3))
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

    def compute_anomaly_map(
            self, teacher_levels: List[Tensor], student_levels: List[Tensor], device_type: str) -> Tensor:
        """Compute the (N, 1, S, S) anomaly map in float32, also under autocast.

        Under fp16 or bf16 autocast the features come in the reduced dtype, and autocast
        would also run the blur convolution in it. The features are therefore cast to
        float32 and autocast is disabled, so reduced precision affects only the networks,
        not the cosine distances, the upsampling or the blur. Without autocast the
        generator runs on the features as they are, so the ONNX export, which traces
        without autocast, contains no extra casts.
        """
        if not torch.is_autocast_enabled(device_type):
            return self.anomaly_map_generator(teacher_levels, student_levels)
        with torch.autocast(device_type, enabled=False):
            return self.anomaly_map_generator(_to_float32(teacher_levels), _to_float32(student_levels))

    def training_loss(self, images: Tensor) -> Dict[str, Tensor]:
        """Compute the collaborative distillation loss of a batch.

        Args:
            images: (N, 3, S, S) float RGB in [0, 1].

        Returns:
            {'loss': L_KD + alpha * L_Recon, 'loss_kd': L_KD, 'loss_recon': L_Recon}, scalar
            tensors. With noise 'none' the denoising pass is skipped and loss_recon is 0.

        Raises:
            RuntimeError: noise is 'mgd' and `fit_noise_statistics` has not run.
        """
        teacher = self.extract_teacher_features(images)
        clean_student = self.decode(self.fuse(teacher.local, teacher.global_))

        noisy_student = None
        if self.config.noise != 'none':
            noisy_local = self.lmgn(teacher.local)
            noisy_student = self.decode(self.fuse(noisy_local, teacher.global_))

        return self.loss(teacher.local, clean_student, noisy_student)

    @torch.no_grad()
    def extract_teacher_features(self, images: Tensor, include_global: bool = True) -> TeacherFeatures:
        """Run the frozen teachers on (N, 3, S, S) RGB images in [0, 1].

        include_global=False skips the Transformer when teacher_mode is 'both' and returns
        global_ None, which is all that the LMGN statistics need.
        """
        self._check_images(images)
        normalized = (images - self.normalization_mean) / self.normalization_std

        if self.cnn_teacher is None:
            return TeacherFeatures(local=self._run_local_teacher(self.transformer_teacher, normalized),
                                   global_=None)

        local_features = self._run_local_teacher(self.cnn_teacher, normalized)
        global_features = None
        if self.transformer_teacher is not None and include_global:
            global_features = self.extract_global_features(normalized, local_features)
        return TeacherFeatures(local=local_features, global_=global_features)

    @staticmethod
    def _run_local_teacher(teacher: TimmTeacher, normalized: Tensor) -> List[Tensor]:
        """Run the local teacher in float32, also under fp16 or bf16 autocast.

        Its levels enter the anomaly map directly, as 1 - cos(teacher, student), so their
        rounding moves the map. With the demo checkpoint (EfficientNet-Lite0 + Swin-T, 256
        px) on real screw images, bf16 autocast changed the map by up to 9.7 % of its range
        with this teacher in bf16, and by 0.2 % with it in float32.
        """
        device_type = normalized.device.type
        if not torch.is_autocast_enabled(device_type):
            return teacher(normalized)
        with torch.autocast(device_type, enabled=False):
            return teacher(normalized.float())

    @torch.no_grad()
    def extract_global_features(self, normalized: Tensor, local_features: List[Tensor]) -> List[Tensor]:
        """Run the Transformer teacher and resize each level to the size of its CNN level.

        Args:
            normalized: (N, 3, S, S) images already normalised with the teachers' mean and std.
            local_features: the CNN teacher's levels, list of (N, C_k, H_k, W_k).

        Returns:
            List of (N, T_k, H_k, W_k), bilinearly resized where the sizes differ.
        """
        global_features = self.transformer_teacher(normalized)
        return [
            F.interpolate(g, size=l.shape[-2:], mode='bilinear', align_corners=False)
            if g.shape[-2:] != l.shape[-2:] else g
            for g, l in zip(global_features, local_features)
        ]

    def fuse(self, local: List[Tensor], global_: Optional[List[Tensor]]) -> List[Tensor]:
        """Build the per-level hybrid features o_k: list of (N, C_k, H_k, W_k).

        With teacher_mode 'cnn' or 'transformer' there is nothing to fuse and `local`
        is returned as it is.
        """
        if self.fusion is None:
            return list(local)
        if global_ is None:
            raise ValueError("teacher_mode 'both' needs the Transformer features to fuse; got None")
        return [block(l, g) for block, l, g in zip(self.fusion, local, global_)]

    def decode(self, hybrid_levels: List[Tensor]) -> List[Tensor]:
        """Run the student: MHF, OCE bottleneck and decoder, list of o_k -> list of (N, C_k, H_k, W_k)."""
        return self.decoder(self.bottleneck(self.mhf(hybrid_levels)))

    @torch.no_grad()
    def fit_noise_statistics(self, batches: Iterable[Tensor], progress: bool = True) -> None:
        """Estimate the LMGN statistics in one streaming pass over the training images.

        Only noise 'mgd' needs statistics; for 'randn' and 'none' this returns without
        reading `batches`. The statistics are not in the state dict, so call this again
        before resuming training from a checkpoint.

        Args:
            batches: iterable of (B, 3, S, S) float RGB tensors in [0, 1]; they are moved
                to the model's device.
            progress: show a tqdm progress bar.
        """
        if self.config.noise != 'mgd':
            _LOGGER.info("noise %r needs no LMGN statistics; skipped the pass", self.config.noise)
            return
        total = len(batches) if hasattr(batches, '__len__') else None
        device = self.normalization_mean.device
        progress_bar = tqdm(batches, total=total, desc='LMGN statistics', unit='batch', disable=not progress)

        def local_features() -> Iterator[List[Tensor]]:
            for images in progress_bar:
                if not isinstance(images, Tensor):
                    raise TypeError(
                        f'fit_noise_statistics expects image tensors, got {type(images).__name__}; '
                        'pass for example (batch[0] for batch in loader)')
                yield self.extract_teacher_features(images.to(device), include_global=False).local

        try:
            self.lmgn.fit(local_features())
        finally:
            progress_bar.close()

        # DistributedDataParallel reads this attribute when it wraps the model. Without it,
        # DDP would broadcast the statistics (up to gigabytes) from rank 0 on every forward.
        self._ddp_params_and_buffers_to_ignore = [
            name for name, _ in self.named_buffers() if name.startswith('lmgn.')]

    def _check_images(self, images: Tensor) -> None:
        size = self.config.image_size
        expected = f'(N, 3, {size}, {size})'
        if not isinstance(images, Tensor):
            raise ValueError(f'images must be a torch.Tensor of shape {expected}, got {type(images).__name__}')
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
            raise ValueError(
                f'images must have shape {expected} (RGB in [0, 1], resized to image_size), '
                f'got {tuple(images.shape)}')
        if not images.is_floating_point():
            raise ValueError(
                f'images must be a float tensor with RGB values in [0, 1], got dtype {images.dtype}')


def _to_float32(levels: List[Tensor]) -> List[Tensor]:
    return [level if level.dtype == torch.float32 else level.float() for level in levels]
