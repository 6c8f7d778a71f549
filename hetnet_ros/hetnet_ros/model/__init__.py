"""HetNet anomaly detection model in pure PyTorch (no ROS imports)."""

from hetnet_ros.model.config import HetNetConfig
from hetnet_ros.model.torch_model import HetNet, InferenceBatch, TeacherFeatures

__all__ = ['HetNet', 'HetNetConfig', 'InferenceBatch', 'TeacherFeatures']
