"""Flexiv Rizon back-end through the Flexiv RDK Python API, flexivrdk 1.9.

Rizon arms need the flexivrdk 1.9 line (flexivrdk 2.x targets other robots and
changed the primitive API). flexivrdk 1.9 has wheels for Python 3.10 and 3.12
only, so it is imported when an arm connects, never at module import.

The arm is driven in the non-real-time primitive execution mode. Every move is
one MoveL primitive (a straight TCP line in the WORLD frame) with a velocity
and an acceleration limit. A move counts as reached when the primitive state
`reachedTarget` is 1. During a move the back-end polls the connection, the
emergency stop and the fault flag; on any of them it stops the arm and raises.
A fault is cleared only by `clear_fault()`, never on connect or on a move.

NOTE: flexivrdk 1.9.4.1 keeps the Python GIL during its blocking calls (checked
for the Robot constructor: about 3 s without a robot, with every other Python
thread paused), so a node's other callbacks wait while Robot(), Enable(),
SwitchMode(), Stop() or ClearFault() run.
"""

import ipaddress
import logging
import math
import threading
import time
from typing import Optional, Sequence

from hetnet_ros.robots.base import (
    EmergencyStopError,
    InvalidSpeedError,
    MotionStoppedError,
    MotionTimeoutError,
    Pose,
    RobotArm,
    RobotConnectionError,
    RobotError,
    RobotFaultError,
    RobotNotConnectedError,
    validate_timeout,
)
from hetnet_ros.robots.geometry import quaternion_to_rpy
from hetnet_ros.robots.limits import MotionLimits, format_position

logger = logging.getLogger(__name__)

SDK_VERSION_PREFIX = '1.9.'

# Input ranges of the MoveL primitive (Flexiv Primitives reference, MoveL).
MOVEL_VEL_RANGE_M_S = (0.001, 2.2)
MOVEL_ACC_RANGE_M_S2 = (0.1, 3.0)
# Reference frame of MoveL targets: the robot's world origin, i.e. its base frame.
WORLD_FRAME = ('WORLD', 'WORLD_ORIGIN')

# Advice by OperationalStatus name, for an arm that does not become operational.
OPERATIONAL_HINTS = {
    'BOOTING': 'the controller is still booting; wait and retry',
    'ESTOP_NOT_RELEASED': 'release the emergency stop',
    'NOT_ENABLED': 'the enable request was not accepted; check the enabling device and the '
                   'teach pendant',
    'RELEASING_BRAKE': 'the brakes are still releasing; increase connect_timeout_s',
    'MINOR_FAULT': 'check the cause on the teach pendant, then call clear_fault',
    'CRITICAL_FAULT': 'check the cause on the teach pendant; a critical fault may need a power '
                      'cycle',
    'IN_REDUCED_STATE': 'the safety input for reduced state is low or the TCP crossed a safety '
                        'plane; restore it',
    'IN_RECOVERY_STATE': 'joints are outside their limits; run the recovery from the teach '
                         'pendant',
    'IN_MANUAL_MODE': 'switch the robot to Auto (Remote) mode',
}


class FlexivSdkMissingError(RobotError):
    """flexivrdk 1.9 cannot be imported in this Python environment."""


def import_sdk():
    """Import and return flexivrdk, checking that it is the 1.9 line for Rizon arms.

    Raises:
        FlexivSdkMissingError: when the module is missing or has another version.
    """
    import sys

    try:
        import flexivrdk
    except ImportError as error:
        raise FlexivSdkMissingError(
            f"the 'flexiv' robot backend needs the flexivrdk package, which cannot be imported "
            f'here ({error}). Rizon arms need flexivrdk 1.9, which has wheels for Python 3.10 '
            f'and 3.12 only (this is Python {sys.version_info.major}.{sys.version_info.minor}); '
            'run the node in a Python 3.12 environment with `pip install flexivrdk==1.9.4.1` '
            '(`make flexiv-check` builds one in .venv-flexiv)') from error
    version = getattr(flexivrdk, '__version__', 'unknown')
    if not version.startswith(SDK_VERSION_PREFIX):
        raise FlexivSdkMissingError(
            f'flexivrdk {version} is installed, but Rizon arms need the 1.9 line (flexivrdk 2.x '
            'targets other robots and changed the primitive API); install flexivrdk==1.9.4.1')
    return flexivrdk


def tcp_pose_to_pose(tcp_pose: Sequence[float]) -> Pose:
    """Convert a flexivrdk TCP pose [x, y, z, qw, qx, qy, qz] to a `Pose`."""
    x, y, z, qw, qx, qy, qz = (float(value) for value in tcp_pose)
    return Pose((x, y, z), (qx, qy, qz, qw))


def euler_zyx_degrees(pose: Pose) -> list[float]:
    """Return the orientation of `pose` as a flexivrdk Coord's Euler ZYX [rx, ry, rz] in degrees."""
    return [math.degrees(angle) for angle in quaternion_to_rpy(pose.orientation)]


def validate_network_interfaces(addresses: Sequence[str]) -> list[str]:
    """Return the interface whitelist as a list of IPv4 address strings.

    Raises:
        ValueError: when the list is empty or an entry is not an IPv4 address.
    """
    if isinstance(addresses, str):
        addresses = [addresses]
    addresses = list(addresses or [])
    if not addresses:
        raise ValueError(
            'flexiv_network_interfaces is empty: give the IPv4 address of the network '
            "interface of this computer that is connected to the robot, e.g. ['192.168.2.100']; "
            'an empty list would let the RDK search every interface')
    for address in addresses:
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise ValueError(
                f'flexiv_network_interfaces entry {address!r} is not an IPv4 address; give the '
                'address of this computer on the robot network, e.g. 192.168.2.100') from None
    return addresses


class FlexivArm(RobotArm):
    """Flexiv Rizon arm with the `RobotArm` interface.

    Args:
        serial_number: robot serial number, e.g. 'Rizon4s-123456'.
        network_interfaces: IPv4 addresses of this computer's interfaces that
            the RDK may use to find the robot.
        settle_time_s: time the arm must stand still after a move before `is_settled()`.
        default_linear_acc_m_s2: TCP acceleration of a move that gives none (m/s^2).
        limits: workspace box and caps checked before every move.
        poll_period_s: period of the state checks while waiting for a move.
        sdk: the flexivrdk module, or a stand-in with the same API for tests;
            None imports flexivrdk on `connect()`.
    """

    def __init__(
        self,
        serial_number: str,
        network_interfaces: Sequence[str],
        settle_time_s: float = 0.5,
        default_linear_acc_m_s2: float = 0.5,
        limits: Optional[MotionLimits] = None,
        poll_period_s: float = 0.02,
        sdk=None,
    ) -> None:
        super().__init__(limits)
        if not serial_number or not serial_number.strip():
            raise ValueError(
                "the Flexiv serial number is empty; set it, e.g. 'Rizon4s-123456' (printed on "
                'the robot base and shown in Flexiv Elements)')
        if not math.isfinite(settle_time_s) or settle_time_s < 0.0:
            raise ValueError(f'settle_time_s must be finite and >= 0 seconds, got {settle_time_s}')
        self._serial_number = serial_number.strip()
        self._network_interfaces = validate_network_interfaces(network_interfaces)
        self._settle_time_s = float(settle_time_s)
        self._default_linear_acc_m_s2 = float(default_linear_acc_m_s2)
        self._poll_period_s = validate_timeout(poll_period_s, 'poll_period_s')
        self._sdk = sdk

        self._robot = None
        self._moving = False
        self._still_since = time.monotonic()
        self._stop_requested = threading.Event()

    @property
    def serial_number(self) -> str:
        return self._serial_number

    @property
    def network_interfaces(self) -> list[str]:
        return list(self._network_interfaces)

    # Connection.

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect, enable and switch to primitive execution within `timeout_s`.

        An arm with a fault or a pressed emergency stop stays connected in the
        fault state without being enabled; `clear_fault()` enables it later.

        Raises:
            FlexivSdkMissingError: when flexivrdk 1.9 is not installed.
            RobotConnectionError: naming the serial number and what to check.
        """
        timeout = validate_timeout(timeout_s)
        if self.is_connected:
            return
        self._robot = None
        sdk = self._sdk if self._sdk is not None else import_sdk()
        self._sdk = sdk
        deadline = time.monotonic() + timeout

        # The constructor searches the whitelisted interfaces and fails after its
        # own timeout; it cannot be interrupted (see the module note).
        logger.info('connecting to Flexiv robot %s through %s', self._serial_number,
                    ', '.join(self._network_interfaces))
        try:
            robot = sdk.Robot(self._serial_number, list(self._network_interfaces))
        except ValueError as error:
            raise RobotConnectionError(
                f'invalid Flexiv serial number {self._serial_number!r} ({error}); use the form '
                "'Rizon4s-123456' shown on the robot base and in Flexiv Elements") from error
        except RuntimeError as error:
            raise RobotConnectionError(
                f'failed to connect to Flexiv robot {self._serial_number!r} through network '
                f'interfaces {self._network_interfaces} ({error}). Check that the robot is '
                'powered on with Remote mode (Ethernet) enabled, that the serial number is '
                "right, that flexiv_network_interfaces holds this computer's IPv4 address on "
                'the robot network, and that no firewall blocks the RDK') from error
        self._robot = robot

        try:
            if self._record_fault(robot):
                logger.error('Flexiv robot %s is in a fault state at connect: %s; it stays '
                             'disabled until clear_fault is requested',
                             self._serial_number, self.fault_reason)
                return
            self._make_operational(robot, deadline)
        except RobotError:
            self._robot = None
            raise
        except RuntimeError as error:
            self._robot = None
            raise RobotConnectionError(
                f'Flexiv robot {self._serial_number!r} connected but could not be enabled: '
                f'{error}') from error
        logger.info('Flexiv robot %s connected and operational', self._serial_number)

    def disconnect(self) -> None:
        robot, self._robot = self._robot, None
        if robot is None:
            return
        if self._moving:
            self._stop_robot(robot)
        self._moving = False
        # Dropping the last reference closes the RDK connection.
        del robot
        logger.info('Flexiv robot %s disconnected', self._serial_number)

    @property
    def is_connected(self) -> bool:
        robot = self._robot
        if robot is None:
            return False
        try:
            return bool(robot.connected())
        except RuntimeError:
            return False

    # Motion.

    def move_to(
        self,
        pose: Pose,
        max_linear_vel_m_s: float,
        timeout_s: float,
        wait: bool = True,
        max_linear_acc_m_s2: Optional[float] = None,
    ) -> None:
        target, speed, acceleration = self._check_move(pose, max_linear_vel_m_s,
                                                       max_linear_acc_m_s2)
        _check_range('max_linear_vel_m_s', speed, MOVEL_VEL_RANGE_M_S, 'm/s')
        _check_range('max_linear_acc_m_s2', acceleration, MOVEL_ACC_RANGE_M_S2, 'm/s^2')
        timeout = validate_timeout(timeout_s)

        robot = self._require_robot()
        self._raise_if_fault()
        sdk = self._sdk
        self._stop_requested.clear()
        coord = sdk.Coord(list(target.position), euler_zyx_degrees(target), list(WORLD_FRAME))
        try:
            # Stop() leaves the robot in IDLE, so the mode is checked before every move.
            if robot.mode() != sdk.Mode.NRT_PRIMITIVE_EXECUTION:
                robot.SwitchMode(sdk.Mode.NRT_PRIMITIVE_EXECUTION)
            robot.ExecutePrimitive('MoveL', {'target': coord, 'vel': speed, 'acc': acceleration})
        except (RuntimeError, ValueError) as error:
            self._record_fault(robot)
            raise RobotFaultError(
                f'Flexiv robot {self._serial_number!r} rejected MoveL to '
                f'{format_position(target.position)}: {error}') from error
        self._moving = True
        logger.debug('MoveL to %s at %.3f m/s started', target.position, speed)

        if wait:
            self.wait_for_motion(timeout)

    def wait_for_motion(self, timeout_s: float) -> None:
        timeout = validate_timeout(timeout_s)
        deadline = time.monotonic() + timeout
        robot = self._require_robot()
        while self._moving:
            if self._stop_requested.is_set():
                self._end_motion()
                raise MotionStoppedError('motion was stopped before reaching its target')
            self._check_during_motion(robot)
            if _reached_target(robot.primitive_states()):
                self._end_motion()
                return
            if time.monotonic() >= deadline:
                self._stop_robot(robot)
                self._end_motion()
                raise MotionTimeoutError(
                    f'Flexiv robot {self._serial_number!r} did not reach its target within '
                    f'{timeout:.3f} s; the arm was stopped. Check for an obstacle or a '
                    'reduced-speed state, or increase the timeout')
            time.sleep(self._poll_period_s)

    def is_settled(self) -> bool:
        robot = self._robot
        if robot is None or self._moving:
            return False
        if time.monotonic() - self._still_since < self._settle_time_s:
            return False
        return bool(robot.stopped())

    def wait_settled(self, timeout_s: float) -> None:
        timeout = validate_timeout(timeout_s)
        deadline = time.monotonic() + timeout
        while True:
            robot = self._require_robot()
            self._raise_if_fault()
            if self.is_settled():
                return
            if time.monotonic() >= deadline:
                raise MotionTimeoutError(
                    f'Flexiv robot {self._serial_number!r} did not settle within {timeout:.3f} s '
                    f'(settle time {self._settle_time_s:.3f} s, robot stopped: '
                    f'{bool(robot.stopped())})')
            time.sleep(self._poll_period_s)

    def current_pose(self) -> Pose:
        robot = self._require_robot()
        return tcp_pose_to_pose(robot.states().tcp_pose)

    def stop(self) -> None:
        self._stop_requested.set()
        robot = self._robot
        if robot is None or not self._moving:
            return
        self._stop_robot(robot)
        logger.info('Flexiv robot %s stopped', self._serial_number)

    # Faults.

    @property
    def fault_reason(self) -> Optional[str]:
        """Description of the current fault, after reading the robot's fault and E-stop flags."""
        robot = self._robot
        if robot is not None:
            try:
                self._record_fault(robot)
            except RuntimeError as error:
                logger.warning('cannot read the fault state of Flexiv robot %s: %s',
                               self._serial_number, error)
        return super().fault_reason

    def clear_fault(self, timeout_s: float = 30.0) -> None:
        """Clear the robot's fault with ClearFault(), then enable it again, within `timeout_s`.

        Raises:
            EmergencyStopError: while the emergency stop is pressed.
            RobotFaultError: when the robot keeps its fault.
            RobotConnectionError: when the robot does not become operational.
        """
        timeout = validate_timeout(timeout_s)
        deadline = time.monotonic() + timeout
        robot = self._require_robot()
        if not robot.estop_released():
            raise EmergencyStopError(
                f'cannot clear the fault of Flexiv robot {self._serial_number!r}: the emergency '
                'stop is still pressed; release it, then clear the fault')
        if robot.fault():
            logger.info('clearing the fault of Flexiv robot %s on request', self._serial_number)
            try:
                cleared = robot.ClearFault(max(1, math.ceil(timeout)))
            except RuntimeError as error:
                raise RobotFaultError(
                    f'ClearFault failed on Flexiv robot {self._serial_number!r}: '
                    f'{error}') from error
            if not cleared or robot.fault():
                raise RobotFaultError(
                    f'Flexiv robot {self._serial_number!r} kept its fault after ClearFault '
                    f'({self._describe_fault(robot)}); a critical fault may need a power cycle')

        try:
            self._make_operational(robot, deadline)
        except RuntimeError as error:
            raise RobotFaultError(
                f'Flexiv robot {self._serial_number!r} could not be enabled after clearing '
                f'the fault: {error}') from error
        super().clear_fault(timeout)
        logger.info('Flexiv robot %s fault cleared and operational', self._serial_number)

    # Helpers.

    def _make_operational(self, robot, deadline: float) -> None:
        """Enable the robot, wait until it is operational, switch to primitive execution."""
        robot.Enable()
        while not robot.operational():
            if time.monotonic() >= deadline:
                status = robot.operational_status().name
                hint = OPERATIONAL_HINTS.get(status, 'check the teach pendant')
                raise RobotConnectionError(
                    f'Flexiv robot {self._serial_number!r} did not become operational in time '
                    f'(operational status {status}): {hint}')
            time.sleep(self._poll_period_s)
        robot.SwitchMode(self._sdk.Mode.NRT_PRIMITIVE_EXECUTION)
        self._still_since = time.monotonic()

    def _check_during_motion(self, robot) -> None:
        """Raise, after stopping the arm, when the connection, the E-stop or a fault ends a move."""
        if not robot.connected():
            self._end_motion()
            self._robot = None
            raise RobotConnectionError(
                f'connection to Flexiv robot {self._serial_number!r} was lost during the move; '
                'the controller stops the arm. Check the Ethernet link, then clear the fault to '
                'reconnect')
        if self._record_fault(robot):
            self._stop_robot(robot)
            self._end_motion()
            reason = self.fault_reason
            if not robot.estop_released():
                raise EmergencyStopError(
                    f'emergency stop pressed during the move of Flexiv robot '
                    f'{self._serial_number!r}; release it and clear the fault before moving')
            raise RobotFaultError(f'Flexiv robot {self._serial_number!r} faulted during the '
                                  f'move: {reason}')

    def _record_fault(self, robot) -> bool:
        """Enter the fault state when the robot reports a fault or a pressed E-stop."""
        if not robot.estop_released():
            self._set_fault('emergency stop pressed')
            return True
        if robot.fault():
            self._set_fault(self._describe_fault(robot))
            return True
        return False

    def _describe_fault(self, robot) -> str:
        status = robot.operational_status().name
        description = f'robot reports a fault (operational status {status})'
        errors = [event for event in robot.event_log()
                  if event.level.name in ('ERROR', 'CRITICAL')]
        if errors:
            latest = errors[-1]
            description += f'; last event {latest.id}: {latest.description}'
            if latest.recommended_actions:
                description += f' ({latest.recommended_actions})'
        return description

    def _stop_robot(self, robot) -> None:
        try:
            robot.Stop()
        except RuntimeError as error:
            # A faulted or disconnected controller has already halted the arm.
            logger.error('Stop() failed on Flexiv robot %s: %s', self._serial_number, error)

    def _end_motion(self) -> None:
        self._moving = False
        self._still_since = time.monotonic()

    def _require_robot(self):
        robot = self._robot
        if robot is None:
            raise RobotNotConnectedError(
                f'Flexiv robot {self._serial_number!r} is not connected; call connect() first')
        return robot


def _reached_target(primitive_states) -> bool:
    """True when the MoveL primitive reports `reachedTarget` (1 or True)."""
    return bool(primitive_states.get('reachedTarget', 0))


def _check_range(name: str, value: float, bounds: tuple[float, float], unit: str) -> None:
    low, high = bounds
    if not low <= value <= high:
        raise InvalidSpeedError(
            f'{name} {value:g} {unit} is outside the range [{low:g}, {high:g}] {unit} that the '
            'Flexiv MoveL primitive accepts')
