"""Convolution blocks shared by the fusion, bottleneck and decoder modules."""

from torch import Tensor, nn


class ConvBNReLU(nn.Sequential):
    """Convolution, batch normalization and ReLU: (N, C_in, H, W) -> (N, C_out, H / stride, W / stride).

    Padding is kernel_size // 2, so a stride of 1 keeps the spatial size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                      padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualBottleneck(nn.Module):
    """Residual block 1x1 reduce, 3x3 and 1x1 expand, as in ResNet-50: (N, C_in, H, W) -> (N, C_out, H', W').

    With stride 2, the 3x3 convolution halves the spatial size. With `upsample=True`, a 2x2
    transposed convolution in both the main path and the shortcut doubles it instead.
    The shortcut is a projection whenever the shape changes. The inner width is
    max(C_out // 2, 1), as in WideResNet50-2, whose stage widths are half their outputs.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        stride: 1 or 2 (downsampling); ignored when upsample is True.
        upsample: double H and W.
        final_relu: apply ReLU after the residual sum. Decoder outputs leave it off,
            because teacher features (EfficientNet projections, Swin stages) can be negative.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 upsample: bool = False, final_relu: bool = True):
        super().__init__()
        width = max(out_channels // 2, 1)
        if upsample:
            spatial = nn.ConvTranspose2d(width, width, kernel_size=2, stride=2, bias=False)
            shortcut = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)
        else:
            spatial = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
            shortcut = None
            if stride != 1 or in_channels != out_channels:
                shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)

        self.main = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            spatial,
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Identity() if shortcut is None else nn.Sequential(shortcut, nn.BatchNorm2d(out_channels))
        self.final_relu = final_relu

    def forward(self, x: Tensor) -> Tensor:
        out = self.main(x) + self.shortcut(x)
        return out.relu() if self.final_relu else out
