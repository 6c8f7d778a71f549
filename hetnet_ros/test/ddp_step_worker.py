"""One HetNet training step under torchrun; each rank saves its parameters.

Run by test_train.py with two CPU processes: every rank trains on different
images, so the ranks end with identical weights only if DistributedDataParallel
averaged their gradients.
"""

import pathlib
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from hetnet_ros.model import HetNet, HetNetConfig
from hetnet_ros.train import start_distributed


def main(output_folder: str) -> None:
    context, device = start_distributed(torch.device('cpu'))
    torch.manual_seed(0)
    config = HetNetConfig(
        cnn_teacher='resnet18', cnn_weights='random',
        transformer_teacher='swin_tiny_patch4_window7_224', transformer_weights='random',
        image_size=64, noise='randn')
    model = HetNet(config).to(device)
    model.train()
    initial = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    parallel = DistributedDataParallel(model, broadcast_buffers=False)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=0.005, betas=(0.5, 0.999))

    # Different images on each rank.
    generator = torch.Generator().manual_seed(100 + context.rank)
    images = torch.rand(2, 3, 64, 64, generator=generator)
    loss = parallel(images)['loss']
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    trained = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    torch.save({'initial': initial, 'trained': trained, 'loss': loss.item()},
               pathlib.Path(output_folder) / f'rank{context.rank}.pt')
    torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1])
