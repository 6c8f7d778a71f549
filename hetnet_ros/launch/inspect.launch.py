"""Launch the hetnet_ros inspection graph: camera, detector and inspection nodes.

    ros2 launch hetnet_ros inspect.launch.py checkpoint:=/models/screw.pt images:=/data/screw

The nodes, their parameters and remappings come from hetnet_ros.bringup, which
the console launcher hetnet-inspect reads too. This file only turns launch
arguments into bringup options and bringup's node list into launch actions.

camera_backend:=realsense2_camera starts Intel's realsense2_camera driver in
place of the camera node, with its colour image remapped onto camera/image.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from hetnet_ros.bringup import (
    GRAPH_ARGUMENTS, GraphOptions, dds_environment, inspection_graph, package_rviz_path)


def create_graph_nodes(context):
    """Resolve the launch arguments and return one Node action per node of the graph."""
    values = {name: LaunchConfiguration(name).perform(context) for name in GRAPH_ARGUMENTS}
    return [
        Node(
            package=spec.package,
            executable=spec.executable,
            name=spec.name,
            namespace=spec.namespace,
            parameters=[spec.parameters],
            remappings=list(spec.remappings),
            output='screen',
        )
        for spec in inspection_graph(GraphOptions.from_strings(values))
    ]


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument(name, default_value='', description=description)
        for name, description in GRAPH_ARGUMENTS.items()
    ]
    arguments.append(DeclareLaunchArgument(
        'rviz', default_value='false', description='also start RViz with rviz/inspect.rviz'))

    rviz = Node(
        package='rviz2',
        executable='rviz2',
        arguments=['-d', str(package_rviz_path())],
        condition=IfCondition(LaunchConfiguration('rviz')),
        output='screen',
    )
    dds_variables = [
        SetEnvironmentVariable(name, value) for name, value in dds_environment(os.environ).items()
    ]
    return LaunchDescription([
        *arguments, *dds_variables, OpaqueFunction(function=create_graph_nodes), rviz])
