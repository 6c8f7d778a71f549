"""Tests of the student: the one-class embedding bottleneck and the reverse decoder."""

import timm
import torch

from hetnet_ros.model.bottleneck import OneClassEmbedding
from hetnet_ros.model.decoder import StudentDecoder


def test_bottleneck_halves_size():
    torch.manual_seed(0)
    bottleneck = OneClassEmbedding(in_channels=96, out_channels=64, num_blocks=3)

    embedding = bottleneck(torch.randn(2, 96, 4, 4))

    assert embedding.shape == (2, 64, 2, 2), f'OCE output shape is {tuple(embedding.shape)}'
    assert len(bottleneck.blocks) == 3, 'num_blocks residual blocks expected'


def test_decoder_mirrors_wide_resnet():
    """WideResNet50-2 levels 1-3 at 256 px: 2048 x 8 x 8 -> 1024@16, 512@32, 256@64."""
    with torch.device('meta'):
        feature_info = timm.create_model('wide_resnet50_2').feature_info
    channels = tuple(info['num_chs'] for info in feature_info if info['reduction'] in (4, 8, 16))
    torch.manual_seed(0)
    decoder = StudentDecoder(channels, in_channels=2 * channels[-1], blocks_per_stage=1).eval()

    with torch.no_grad():
        outputs = decoder(torch.randn(1, 2048, 8, 8))

    shapes = [tuple(o.shape) for o in outputs]
    assert shapes == [(1, 256, 64, 64), (1, 512, 32, 32), (1, 1024, 16, 16)], f'decoder shapes {shapes}'


def test_decoder_outputs_can_be_negative():
    torch.manual_seed(0)
    decoder = StudentDecoder((8, 16), in_channels=32, blocks_per_stage=2)

    outputs = decoder(torch.randn(2, 32, 2, 2))

    assert [tuple(o.shape) for o in outputs] == [(2, 8, 8, 8), (2, 16, 4, 4)], 'decoder shapes'
    assert all((o < 0).any() for o in outputs), 'outputs must not end in ReLU, teacher features can be negative'
