"""Tests of the feature fusion blocks: ALGF, its concatenation ablation, and MHF."""

import torch
import torch.nn.functional as F

from hetnet_ros.model import algf
from hetnet_ros.model.algf import AdaptiveLocalGlobalFusion, ConcatFusion
from hetnet_ros.model.mhf import MultiScaleHybridFusion


def test_algf_output_shape():
    torch.manual_seed(0)
    block = AdaptiveLocalGlobalFusion(local_channels=16, global_channels=24)

    fused = block(torch.randn(2, 16, 8, 8), torch.randn(2, 24, 8, 8))

    assert fused.shape == (2, 16, 8, 8), f'ALGF must keep the local shape, got {tuple(fused.shape)}'
    assert torch.isfinite(fused).all(), 'ALGF output is not finite'


def test_algf_attention_roles(monkeypatch):
    """Query and value are the aligned local features, the key is the aligned global one."""
    torch.manual_seed(0)
    block = AdaptiveLocalGlobalFusion(local_channels=16, global_channels=24).eval()
    calls = []
    attention = F.scaled_dot_product_attention

    def recording_attention(query, key, value, **kwargs):
        calls.append((query, key, value))
        return attention(query, key, value, **kwargs)

    monkeypatch.setattr(algf.F, 'scaled_dot_product_attention', recording_attention)
    local = torch.randn(2, 16, 8, 8)
    global_ = torch.randn(2, 24, 8, 8)
    with torch.no_grad():
        block(local, global_)
        expected_query = block.align_local(local).flatten(2).transpose(1, 2)
        expected_key = block.align_global(global_).flatten(2).transpose(1, 2)

    assert len(calls) == 1, f'expected one attention call, got {len(calls)}'
    query, key, value = calls[0]
    assert query.shape == (2, 64, 16), f'attention must run over H * W = 64 positions, got {tuple(query.shape)}'
    assert value is query, 'value must be the same tensor as the query (local features)'
    assert torch.allclose(query, expected_query), 'query must be the aligned local features'
    assert torch.allclose(key, expected_key), 'key must be the aligned global features'


def test_algf_output_depends_on_global():
    torch.manual_seed(0)
    block = AdaptiveLocalGlobalFusion(local_channels=8, global_channels=12).eval()
    local = torch.randn(1, 8, 4, 4)

    with torch.no_grad():
        first = block(local, torch.randn(1, 12, 4, 4))
        second = block(local, torch.randn(1, 12, 4, 4))

    assert not torch.allclose(first, second), 'changing the global features must change the fused output'


def test_concat_fusion_shape():
    block = ConcatFusion(local_channels=16, global_channels=24)

    fused = block(torch.randn(2, 16, 8, 8), torch.randn(2, 24, 8, 8))

    assert fused.shape == (2, 16, 8, 8), f'concat fusion must output the local shape, got {tuple(fused.shape)}'


def test_mhf_concatenates_at_deepest_size():
    torch.manual_seed(0)
    fusion = MultiScaleHybridFusion((8, 16, 32))
    levels = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]

    prototype = fusion(levels)

    assert prototype.shape == (2, 3 * 32, 4, 4), f'MHF output shape is {tuple(prototype.shape)}'
    assert fusion.out_channels == 96, 'out_channels must be K * C_K'
    assert torch.equal(prototype[:, 64:], levels[2]), 'the deepest level must pass through unchanged'


def test_mhf_stride_two_steps_per_level():
    fusion = MultiScaleHybridFusion((8, 16, 32))

    steps = [len(chain) for chain in fusion.downsample]
    assert steps == [2, 1, 0], f'level 1 needs two stride-2 steps, level 2 one, level 3 none; got {steps}'
    first_conv = fusion.downsample[0][0][0]
    assert first_conv.kernel_size == (3, 3), 'downsampling uses 3x3 convolutions'
    assert first_conv.stride == (2, 2), 'downsampling uses stride 2'
    assert first_conv.out_channels == 16, 'a step from level j outputs the channels of level j + 1'
