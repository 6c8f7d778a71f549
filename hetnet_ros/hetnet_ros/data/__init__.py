"""MVTec-layout datasets and the image preprocessing shared by training and inference."""

from hetnet_ros.data.mvtec import DatasetError, MVTecDataset, Sample, find_samples, read_image
from hetnet_ros.data.preprocess import prepare_batch, resize_mask, resize_rgb, to_rgb_uint8

__all__ = [
    'DatasetError', 'MVTecDataset', 'Sample', 'find_samples', 'prepare_batch', 'read_image',
    'resize_mask', 'resize_rgb', 'to_rgb_uint8',
]
