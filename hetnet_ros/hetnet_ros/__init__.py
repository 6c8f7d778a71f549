"""HetNet anomaly detection for robotic surface inspection on ROS 2."""

__version__ = '0.1.0'
