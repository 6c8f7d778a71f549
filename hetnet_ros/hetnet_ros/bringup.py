"""The inspection graph as data: which nodes run, with which parameters and remappings.

`launch/inspect.launch.py` (for `ros2 launch`) and `hetnet-inspect`
(`hetnet_ros.launcher`, for machines without the launch packages) both build
their processes from `inspection_graph()`, so the two cannot drift apart.

Node parameters come from two places. `config/inspect.yaml` contains the
tuning of the cell (speeds, timeouts, settle time), and `GraphOptions`
contains what changes from run to run (checkpoint, image source, records
folder). Options that are left unset keep the value of the file.

With the camera back-end 'realsense2_camera' the graph starts Intel's
`realsense2_camera` driver (package realsense2_camera, a C++ node) in place of
this package's camera node. The driver keeps its usual names (node
/camera/camera, colour image /camera/camera/color/image_raw), and remappings
put its colour image and camera info on the graph's topics. Only `ros2 launch`
can start it.

This module imports no rclpy, so the graph can be checked without ROS.
"""

import dataclasses
import math
import os
import pathlib
import re
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

import yaml

PACKAGE = 'hetnet_ros'

# Name of the inspection node's action; a cell controller calls <namespace>/inspect_part.
INSPECT_ACTION = 'inspect_part'

# Graph name of every topic and service that connects nodes or feeds RViz. Each
# node uses the short relative name on the left and is remapped onto the right.
GRAPH_NAMES = {
    'image': 'camera/image',
    'camera_info': 'camera/camera_info',
    'capture': 'camera/capture',
    'anomaly_map': 'detector/anomaly_map',
    'heatmap': 'detector/heatmap',
    'verdict': 'detector/verdict',
}

# Relative names each node uses (topics and services); the inspection node's own
# outputs (tool_pose, inspection_report, inspect_part) keep their names.
NODE_NAMES_USED = {
    'camera': ('image', 'camera_info', 'capture'),
    'detector': ('image', 'anomaly_map', 'heatmap', 'verdict'),
    'inspection': ('verdict', 'image', 'heatmap', 'capture'),
}

# Camera back-ends: the first two run this package's camera node, the last one
# starts the realsense2_camera driver instead.
REALSENSE2_CAMERA = 'realsense2_camera'
CAMERA_BACKENDS = ('replay', 'realsense', REALSENSE2_CAMERA)

# The realsense2_camera driver publishes its topics under its node name
# (~/color/image_raw), so with node 'camera' in namespace 'camera', as its own
# rs_launch.py starts it, the colour image is /camera/camera/color/image_raw.
REALSENSE2_CAMERA_NODE = 'camera'
REALSENSE2_CAMERA_NAMESPACE = 'camera'
REALSENSE2_CAMERA_TOPICS = {
    'image': 'color/image_raw',
    'camera_info': 'color/camera_info',
}
# QoS: the driver publishes images with its color_qos parameter, SYSTEM_DEFAULT
# unless set (realsense-ros 4.x profile_manager.cpp), which Fast DDS makes
# reliable and transient local. The sensor-data subscriptions of the detector
# and inspection nodes (best effort, volatile) request less than that, so they
# are compatible with it, as with a best-effort publisher.

# Driver parameters used unless a 'realsense2_camera' section of the node
# parameter file sets them: colour only, at the D415's 1280x720 at 30 fps
# colour profile. The driver publishes colour as rgb8, which the detector reads.
# NOTE: written against the realsense-ros 4.x sources and not run here (no driver
# or camera). Older 4.x releases name the profile parameter rgb_camera.profile.
REALSENSE2_CAMERA_PARAMETERS = {
    'camera_name': 'camera',
    'enable_color': True,
    'enable_depth': False,
    'enable_infra1': False,
    'enable_infra2': False,
    'rgb_camera.color_profile': '1280x720x30',
}

# Launch arguments shared by the launch file and the console launcher:
# name -> description. Every default is '', meaning "keep config/inspect.yaml".
GRAPH_ARGUMENTS = {
    'checkpoint': 'HetNet checkpoint file written by hetnet-train (required)',
    'images': 'replay camera source: image folder, image file or MVTec-layout data set root '
              '(its test set is replayed)',
    'poses': 'YAML file of inspection poses (default: config/poses.yaml of the package)',
    'records': 'folder for the records database and images (default: recording disabled)',
    'camera_rate_hz': 'camera publishing rate in Hz; 0 takes one frame per pose through the '
                      'capture service (default from the config file)',
    'camera_backend': "camera back-end: 'replay' or 'realsense' (this package's camera node), "
                      "or 'realsense2_camera' (Intel's driver, ros2 launch only) (default from "
                      'the config file)',
    'robot_backend': "robot back-end, 'sim' or 'flexiv' (Python 3.12 with flexivrdk 1.9; "
                     'serial number and network interfaces from the config file; default from '
                     'the config file)',
    'sim_speed_factor': 'simulated seconds per wall second of the sim robot (default from the '
                        'config file)',
    'device': "detector device, 'auto', 'cpu' or 'cuda' (default from the config file)",
    'namespace': 'ROS namespace of all nodes (default: none)',
    'config': 'node parameter file (default: config/inspect.yaml of the package)',
}


# Fast DDS profile that carries large images through shared memory.
DDS_PROFILE = 'fastdds_large_images.xml'


# A relative ROS 2 namespace: tokens of letters, digits and underscores that do not
# start with a digit, separated by single slashes.
NAMESPACE_PATTERN = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*')


class GraphConfigError(ValueError):
    """The node parameter file or a graph option is invalid."""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph, in the terms of launch_ros.actions.Node.

    `module` is the Python module that runs the node (`python -m module`), or ''
    for a node of another package, which only `ros2 launch` can start.
    """

    package: str
    executable: str
    module: str
    name: str
    namespace: str = ''
    parameters: dict = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()

    @property
    def fully_qualified_name(self) -> str:
        namespace = self.namespace.strip('/')
        return f'/{namespace}/{self.name}' if namespace else f'/{self.name}'

    def parameters_document(self) -> dict:
        """Return the parameters as the content of a ROS 2 parameter file for this node."""
        return {self.fully_qualified_name: {'ros__parameters': dict(self.parameters)}}

    def ros_arguments(self, params_file: Union[str, pathlib.Path]) -> list[str]:
        """Return the `--ros-args` command-line arguments that start this node.

        Args:
            params_file: a file written from `parameters_document()`; a file keeps the
                parameter types exactly, where `-p key:=value` would reparse strings.
        """
        arguments = ['--ros-args', '-r', f'__node:={self.name}']
        if self.namespace:
            arguments += ['-r', f'__ns:={_absolute(self.namespace)}']
        arguments += ['--params-file', str(params_file)]
        for source, target in self.remappings:
            arguments += ['-r', f'{source}:={target}']
        return arguments


@dataclass(frozen=True)
class GraphOptions:
    """Run-specific options of the graph; None or '' keeps the config file's value."""

    checkpoint: str = ''
    images: str = ''
    poses: str = ''
    records: str = ''
    camera_rate_hz: Optional[float] = None
    camera_backend: str = ''
    robot_backend: str = ''
    sim_speed_factor: Optional[float] = None
    device: str = ''
    namespace: str = ''
    config: str = ''

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> 'GraphOptions':
        """Build options from launch-argument strings; unknown names raise GraphConfigError."""
        unknown = set(values) - set(GRAPH_ARGUMENTS)
        if unknown:
            raise GraphConfigError(
                f'unknown graph arguments {sorted(unknown)}; known: {", ".join(GRAPH_ARGUMENTS)}')
        parsed = {}
        for option in dataclasses.fields(cls):
            text = str(values.get(option.name, '')).strip()
            if option.name in ('camera_rate_hz', 'sim_speed_factor'):
                parsed[option.name] = _parse_float(option.name, text) if text else None
            else:
                parsed[option.name] = text
        return cls(**parsed)


def package_file_path(*parts: str) -> pathlib.Path:
    """Return the path of a data file of the package, e.g. ('config', 'poses.yaml').

    A source checkout's file wins over an installed share folder, so that running
    from the source tree uses the files being edited.
    """
    source_tree = pathlib.Path(__file__).resolve().parents[1].joinpath(*parts)
    if source_tree.exists():
        return source_tree
    try:
        from ament_index_python.packages import (
            PackageNotFoundError, get_package_share_directory)
    except ImportError:
        return source_tree
    try:
        return pathlib.Path(get_package_share_directory(PACKAGE)).joinpath(*parts)
    except PackageNotFoundError:
        return source_tree


def package_config_path(name: str) -> pathlib.Path:
    return package_file_path('config', name)


def package_rviz_path() -> pathlib.Path:
    return package_file_path('rviz', 'inspect.rviz')


def dds_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Return the environment variables the nodes need on top of `environ`.

    Fast DDS drops best-effort images of several megabytes between processes
    with its default transports (see config/fastdds_large_images.xml), so the
    graph's processes get that profile unless the user chose a profile or
    another RMW implementation.
    """
    if environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp') != 'rmw_fastrtps_cpp':
        return {}
    if environ.get('FASTRTPS_DEFAULT_PROFILES_FILE') or environ.get('FASTDDS_DEFAULT_PROFILES_FILE'):
        return {}
    return {'FASTRTPS_DEFAULT_PROFILES_FILE': str(package_config_path(DDS_PROFILE))}


def load_node_parameters(path: Union[str, pathlib.Path]) -> dict[str, dict]:
    """Read a ROS 2 parameter file and return {node name: {parameter: value}}."""
    path = pathlib.Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding='utf-8')) or {}
    except OSError as error:
        raise GraphConfigError(f'cannot read node parameter file {path}: {error}') from None
    except yaml.YAMLError as error:
        raise GraphConfigError(f'node parameter file {path} is not valid YAML: {error}') from None
    if not isinstance(document, dict):
        raise GraphConfigError(f'node parameter file {path} must map node names to parameters')

    parameters = {}
    for node_name, section in document.items():
        if not isinstance(section, dict) or not isinstance(section.get('ros__parameters'), dict):
            raise GraphConfigError(
                f'node parameter file {path}: section {node_name!r} needs a '
                '"ros__parameters" mapping')
        parameters[str(node_name).strip('/')] = dict(section['ros__parameters'])
    return parameters


def inspection_graph(options: GraphOptions) -> list[NodeSpec]:
    """Return the camera, detector and inspection nodes for the given options.

    Raises:
        GraphConfigError: when the checkpoint is missing, or the parameter file is invalid.
    """
    if not options.checkpoint:
        raise GraphConfigError(
            'no checkpoint given; pass the checkpoint file written by hetnet-train')
    config_file = options.config or package_config_path('inspect.yaml')
    config = load_node_parameters(config_file)
    missing = [name for name in NODE_NAMES_USED if name not in config]
    if missing:
        raise GraphConfigError(f'node parameter file {config_file} has no section for {missing}')

    camera = dict(config['camera'])
    _set_if_given(camera, 'backend', options.camera_backend)
    _set_if_given(camera, 'source', _absolute_path(options.images))
    _set_if_given(camera, 'rate_hz', options.camera_rate_hz)
    if camera.get('rate_hz') is not None:
        camera['rate_hz'] = float(camera['rate_hz'])
    camera_backend = camera.get('backend', 'replay')
    if camera_backend not in CAMERA_BACKENDS:
        raise GraphConfigError(
            f'invalid camera back-end {camera_backend!r}; expected one of '
            f'{", ".join(CAMERA_BACKENDS)}')

    detector = dict(config['detector'])
    detector['checkpoint'] = _absolute_path(options.checkpoint)
    _set_if_given(detector, 'device', options.device)

    inspection = dict(config['inspection'])
    _set_if_given(inspection, 'poses_file', _absolute_path(options.poses))
    _set_if_given(inspection, 'records_dir', _absolute_path(options.records))
    _set_if_given(inspection, 'robot_backend', options.robot_backend)
    _set_if_given(inspection, 'sim_speed_factor', options.sim_speed_factor)
    # A camera node without a rate publishes only on request, so the inspection
    # node calls its capture service after settling at each pose. The driver
    # always streams and has no capture service.
    on_request = camera_backend != REALSENSE2_CAMERA and not camera.get('rate_hz')
    inspection['capture_service'] = 'capture' if on_request else ''

    namespace = options.namespace.strip('/')
    if namespace and not NAMESPACE_PATTERN.fullmatch(namespace):
        raise GraphConfigError(
            f'namespace {options.namespace!r} is not a valid ROS name: use letters, digits and '
            "underscores, tokens separated by '/', none starting with a digit, e.g. 'cell_1'")
    if camera_backend == REALSENSE2_CAMERA:
        driver_parameters = {**REALSENSE2_CAMERA_PARAMETERS, **config.get(REALSENSE2_CAMERA, {})}
        camera_spec = realsense2_camera_spec(driver_parameters, namespace)
    else:
        camera_spec = _node_spec('camera', 'camera_node', camera, namespace)
    return [
        camera_spec,
        _node_spec('detector', 'detector_node', detector, namespace),
        _node_spec('inspection', 'inspection_node', inspection, namespace),
    ]


def realsense2_camera_spec(parameters: dict, namespace: str = '') -> NodeSpec:
    """Return the realsense2_camera driver node with its colour topics remapped onto the graph.

    The rules match the driver's fully qualified topic names, for example
    /camera/camera/color/image_raw -> /camera/image, because the driver runs in a
    namespace of its own, where the graph's relative names would resolve elsewhere.
    """
    driver_namespace = '/'.join(part for part in (namespace, REALSENSE2_CAMERA_NAMESPACE) if part)
    driver_prefix = f'{_absolute(driver_namespace)}/{REALSENSE2_CAMERA_NODE}'
    remappings = tuple(
        (f'{driver_prefix}/{driver_topic}', _graph_topic(namespace, GRAPH_NAMES[name]))
        for name, driver_topic in REALSENSE2_CAMERA_TOPICS.items())
    return NodeSpec(
        package=REALSENSE2_CAMERA,
        executable='realsense2_camera_node',
        module='',
        name=REALSENSE2_CAMERA_NODE,
        namespace=driver_namespace,
        parameters=dict(parameters),
        remappings=remappings)


def action_name(namespace: str = '') -> str:
    """Return the fully qualified name of the inspect_part action in a namespace."""
    namespace = namespace.strip('/')
    return f'/{namespace}/{INSPECT_ACTION}' if namespace else f'/{INSPECT_ACTION}'


def _node_spec(name: str, executable: str, parameters: dict, namespace: str) -> NodeSpec:
    remappings = tuple((used, GRAPH_NAMES[used]) for used in NODE_NAMES_USED[name])
    return NodeSpec(
        package=PACKAGE,
        executable=executable,
        module=f'{PACKAGE}.nodes.{executable}',
        name=name,
        namespace=namespace,
        parameters=parameters,
        remappings=remappings)


def _set_if_given(parameters: dict, key: str, value) -> None:
    if value is not None and value != '':
        parameters[key] = value


def _absolute_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)) if path else ''


def _absolute(namespace: str) -> str:
    return '/' + namespace.strip('/')


def _graph_topic(namespace: str, name: str) -> str:
    """Return the fully qualified name of a graph name in the graph's namespace."""
    return _absolute('/'.join(part for part in (namespace.strip('/'), name) if part))


def _parse_float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise GraphConfigError(f'{name} must be a number, got {text!r}') from None
    if not math.isfinite(value):
        raise GraphConfigError(f'{name} must be a finite number, got {text!r}')
    return value
