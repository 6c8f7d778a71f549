"""Student decoder: the teacher's levels rebuilt in reverse order from the OCE embedding."""

from typing import List, Sequence

from torch import Tensor, nn

from hetnet_ros.model.blocks import ResidualBottleneck


class StudentDecoder(nn.Module):
    """Decoder that mirrors the teacher in reverse, generic over timm backbones.

    One stage per level, deepest first. Each stage doubles the spatial size with an
    upsampling residual block and outputs C_k channels, followed by
    (blocks_per_stage - 1) residual blocks. For WideResNet50-2 levels 1-3 at 256 px, the
    stages produce 1024 x 16 x 16, 512 x 32 x 32 and 256 x 64 x 64. The stage outputs
    skip the final ReLU, so they can match teacher features with negative values.

    Args:
        channels: C_k of each level, shallow to deep (the teacher's timm feature_info).
        in_channels: channels of the embedding, one stride below the deepest level.
        blocks_per_stage: residual blocks per stage, the upsampling block included.

    Shapes:
        input: (N, in_channels, H_K / 2, W_K / 2).
        output: list of (N, C_k, H_k, W_k), shallow to deep, with H_k = H_K * 2 ** (K - k).
    """

    def __init__(self, channels: Sequence[int], in_channels: int, blocks_per_stage: int = 2):
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f'blocks_per_stage must be >= 1, got {blocks_per_stage}')
        self.channels = tuple(channels)
        stages = []
        stage_in = in_channels
        for out_channels in reversed(self.channels):
            blocks = [ResidualBottleneck(stage_in, out_channels, upsample=True,
                                         final_relu=blocks_per_stage > 1)]
            for index in range(1, blocks_per_stage):
                blocks.append(ResidualBottleneck(out_channels, out_channels,
                                                 final_relu=index < blocks_per_stage - 1))
            stages.append(nn.Sequential(*blocks))
            stage_in = out_channels
        # stages[0] produces the deepest level.
        self.stages = nn.ModuleList(stages)

    def forward(self, embedding: Tensor) -> List[Tensor]:
        """Decode (N, in_channels, h, w) -> list of (N, C_k, H_k, W_k), shallow to deep."""
        outputs = []
        x = embedding
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]
