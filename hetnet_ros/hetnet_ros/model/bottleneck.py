"""One-class embedding (OCE) bottleneck between the fused teacher features and the student decoder."""

from torch import Tensor, nn

from hetnet_ros.model.blocks import ResidualBottleneck


class OneClassEmbedding(nn.Module):
    """Compress the multi-scale prototype into a compact embedding, as in reverse distillation.

    The first residual block halves the spatial size with a stride-2 3x3 convolution, and
    the remaining blocks keep it. With K levels of deepest width C_K, the output has
    2 * C_K channels, one stride below the deepest level: 2048 at 8 x 8 for
    WideResNet50-2 levels 1-3 at 256 px, as in RD4AD.

    Args:
        in_channels: channels of the MHF output, K * C_K.
        out_channels: embedding channels, 2 * C_K in HetNet.
        num_blocks: residual blocks, >= 1.

    Shapes:
        input: (N, in_channels, H, W), H and W even.
        output: (N, out_channels, H / 2, W / 2).
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f'num_blocks must be >= 1, got {num_blocks}')
        blocks = [ResidualBottleneck(in_channels, out_channels, stride=2)]
        blocks += [ResidualBottleneck(out_channels, out_channels) for _ in range(num_blocks - 1)]
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = out_channels

    def forward(self, prototype: Tensor) -> Tensor:
        """Embed (N, in_channels, H, W) -> (N, out_channels, H / 2, W / 2)."""
        return self.blocks(prototype)
