from glob import glob

from setuptools import find_packages, setup

package_name = 'hetnet_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + package_name + '/rviz', glob('rviz/*.rviz')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='hetnet_ros maintainers',
    maintainer_email='maintainers@hetnet-ros.invalid',
    description='HetNet anomaly detection for robotic surface inspection on ROS 2.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            # ROS 2 nodes.
            'camera_node = hetnet_ros.nodes.camera_node:main',
            'detector_node = hetnet_ros.nodes.detector_node:main',
            'inspection_node = hetnet_ros.nodes.inspection_node:main',
            # Commands.
            'hetnet-train = hetnet_ros.train:main',
            'hetnet-eval = hetnet_ros.evaluate:main',
            'hetnet-inspect = hetnet_ros.launcher:main',
            'hetnet-export = hetnet_ros.export:main',
            'hetnet-records = hetnet_ros.records_cli:main',
            'hetnet-bench = hetnet_ros.bench:main',
        ],
    },
)
