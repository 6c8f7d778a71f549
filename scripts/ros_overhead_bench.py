#!/usr/bin/env python3
"""Measure the detector node's ROS overhead on a camera-like image stream.

The script starts the real detector node as a subprocess (python -m
hetnet_ros.nodes.detector_node) with the Fast DDS profile that the launch graph uses
(hetnet_ros.bringup.dds_environment). A node in this process publishes rgb8 images
(1280x720 at 30 fps by default) on `image` and subscribes to `verdict`. After a warm-up
that lasts until the first verdict arrives, it measures for --duration-s seconds:

- processed rate: verdicts received per second;
- dropped frames: images sent that got no verdict (the node keeps only the newest image
  while the model runs, so at a model time above the frame period most frames drop);
- latency from the image stamp to the verdict's arrival here (p50/p95);
- model time as the node reports it in the verdict (inference_time_s: resizing, forward
  pass and postprocessing);
- queue time as the node reports it in the verdict (queue_time_s: the wait of the image
  in the node's one-image slot until the worker took it, 0 to one frame period while the
  model is slower than the stream);
- overhead: latency minus model time, which includes the queue time, and overhead
  excluding the queue time (latency minus model time minus queue time), which is left
  for DDS transport both ways, decoding and building and publishing the verdict;
- the node process's resident memory at the start and end of the window.

Each p50/p95 pair is taken over the verdicts of the window separately, so the p50 of
the overhead is not the p50 of the latency minus the p50 of the model time.

It prints one JSON object and writes it to --output when given.

Usage:
    export PYTHONPATH=$PWD/hetnet_ros   # or install hetnet_ros
    python scripts/ros_overhead_bench.py --checkpoint models/demo_screw.pt --duration-s 60
"""

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Optional

import numpy as np

DEFAULT_CHECKPOINT = pathlib.Path(__file__).resolve().parent.parent / 'models' / 'demo_screw.pt'
STOP_TIMEOUT_S = 15.0
DRAIN_S = 3.0


def read_rss_mib(pid: int) -> float:
    """Return the resident memory of process `pid` in MiB (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        for line in pathlib.Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
        return float('nan')
    return psutil.Process(pid).memory_info().rss / 2**20


def percentile(values: list[float], q: float) -> Optional[float]:
    """Return the q-th percentile of `values`, or None when there are none."""
    return float(np.percentile(values, q)) if values else None


def start_detector(options: argparse.Namespace, environment: dict[str, str]) -> subprocess.Popen:
    """Start the detector node with the checkpoint; its log goes to --node-log."""
    command = [
        sys.executable, '-m', 'hetnet_ros.nodes.detector_node', '--ros-args',
        '-p', f'checkpoint:={options.checkpoint}', '-p', f'runtime:={options.runtime}',
        '-p', f'publish_heatmap:={str(options.publish_heatmap).lower()}']
    log = open(options.node_log, 'w', encoding='utf-8')  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)


def stop_detector(process: subprocess.Popen) -> int:
    """Stop the node with SIGINT, then SIGKILL after STOP_TIMEOUT_S; return its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def run(options: argparse.Namespace) -> dict:
    """Start the node, stream images, measure and return the summary.

    Raises:
        TimeoutError: no verdict arrived within --startup-timeout-s.
        RuntimeError: the node exited early (its log is in --node-log).
    """
    from hetnet_ros.bringup import dds_environment

    # This process and the node use the same DDS profile, set before rclpy starts.
    os.environ.update(dds_environment(os.environ))
    import rclpy
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from hetnet_ros_msgs.msg import DefectVerdict

    detector = start_detector(options, dict(os.environ))
    rclpy.init()
    node = rclpy.create_node('ros_overhead_bench')
    try:
        image_qos = QoSProfile(depth=1)
        image_qos.reliability = qos_profile_sensor_data.reliability
        image_qos.history = qos_profile_sensor_data.history
        publisher = node.create_publisher(Image, 'image', image_qos)
        # (receive time, stamp, inference_time_s, queue_time_s), times in seconds
        received: list[tuple[float, float, float, float]] = []
        node.create_subscription(
            DefectVerdict, 'verdict',
            lambda verdict: received.append((
                time.time(), verdict.header.stamp.sec + verdict.header.stamp.nanosec * 1e-9,
                float(verdict.inference_time_s), float(verdict.queue_time_s))),
            10)

        message = Image(height=options.height, width=options.width, encoding='rgb8',
                        is_bigendian=0, step=3 * options.width)
        pixels = np.random.default_rng(0).integers(0, 256, (options.height, options.width, 3), np.uint8)
        message.data = pixels.tobytes()
        message.header.frame_id = 'camera_color_optical_frame'

        def publish() -> float:
            now = time.time()
            message.header.stamp.sec = int(now)
            message.header.stamp.nanosec = int((now - int(now)) * 1e9)
            publisher.publish(message)
            return now

        # Warm-up: stream until the first verdict arrives, which includes the node's model load.
        period_s = 1.0 / options.rate_hz
        deadline = time.monotonic() + options.startup_timeout_s
        while not received:
            if detector.poll() is not None:
                raise RuntimeError(f'detector node exited with status {detector.returncode}; '
                                   f'see {options.node_log}')
            if time.monotonic() > deadline:
                raise TimeoutError(f'no verdict within {options.startup_timeout_s} s; '
                                   f'see {options.node_log}')
            publish()
            rclpy.spin_once(node, timeout_sec=period_s)
        for _ in range(int(options.rate_hz * 2)):
            publish()
            rclpy.spin_once(node, timeout_sec=period_s)
        rclpy.spin_once(node, timeout_sec=DRAIN_S)

        # Measurement window at a fixed rate.
        received.clear()
        rss_start_mib = read_rss_mib(detector.pid)
        sent = 0
        start = time.monotonic()
        next_send = start
        while time.monotonic() - start < options.duration_s:
            publish()
            sent += 1
            next_send += period_s
            while (remaining := next_send - time.monotonic()) > 0:
                rclpy.spin_once(node, timeout_sec=remaining)
        window_s = time.monotonic() - start
        drain_end = time.monotonic() + DRAIN_S
        while time.monotonic() < drain_end:
            rclpy.spin_once(node, timeout_sec=0.1)
        rss_end_mib = read_rss_mib(detector.pid)
    finally:
        node.destroy_node()
        rclpy.shutdown()
        exit_status = stop_detector(detector)

    latencies = [receive - stamp for receive, stamp, _, _ in received]
    inference = [inference_s for _, _, inference_s, _ in received]
    queue = [queue_s for _, _, _, queue_s in received]
    overheads = [latency - inference_s for latency, inference_s in zip(latencies, inference)]
    overheads_without_queue = [
        overhead - queue_s for overhead, queue_s in zip(overheads, queue)]
    return {
        'checkpoint': str(options.checkpoint), 'runtime': options.runtime,
        'width': options.width, 'height': options.height, 'rate_hz': options.rate_hz,
        'duration_s': window_s, 'frames_sent': sent, 'verdicts': len(received),
        'frames_dropped': sent - len(received), 'processed_rate_hz': len(received) / window_s,
        'send_rate_hz': sent / window_s,
        'latency_p50_s': percentile(latencies, 50), 'latency_p95_s': percentile(latencies, 95),
        'inference_p50_s': percentile(inference, 50), 'inference_p95_s': percentile(inference, 95),
        'queue_p50_s': percentile(queue, 50), 'queue_p95_s': percentile(queue, 95),
        'overhead_p50_s': percentile(overheads, 50), 'overhead_p95_s': percentile(overheads, 95),
        'overhead_excluding_queue_p50_s': percentile(overheads_without_queue, 50),
        'overhead_excluding_queue_p95_s': percentile(overheads_without_queue, 95),
        'rss_start_mib': rss_start_mib, 'rss_end_mib': rss_end_mib,
        'detector_exit_status': exit_status,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(
        'Stream rgb8 images through the detector node over DDS and measure processed rate, '
        'dropped frames, stamp-to-verdict latency, model and queue time, overhead beyond model '
        'time with and without the queue time, and node memory.'))
    parser.add_argument('--checkpoint', type=pathlib.Path, default=DEFAULT_CHECKPOINT,
                        help=f'checkpoint (.pt) or ONNX export (.onnx) for the node (default {DEFAULT_CHECKPOINT})')
    parser.add_argument('--runtime', default='auto', help="the node's runtime parameter (default 'auto')")
    parser.add_argument('--publish-heatmap', action=argparse.BooleanOptionalAction, default=True,
                        help="the node's publish_heatmap parameter (default true)")
    parser.add_argument('--duration-s', type=float, default=60.0, help='measurement window in seconds (default 60)')
    parser.add_argument('--rate-hz', type=float, default=30.0, help='image rate in Hz (default 30)')
    parser.add_argument('--width', type=int, default=1280, help='image width in pixels (default 1280)')
    parser.add_argument('--height', type=int, default=720, help='image height in pixels (default 720)')
    parser.add_argument('--startup-timeout-s', type=float, default=180.0,
                        help='time for the first verdict to arrive, model load included, in seconds (default 180)')
    parser.add_argument('--node-log', type=pathlib.Path, default=pathlib.Path('/tmp/ros_overhead_detector.log'),
                        help='file for the detector node output (default /tmp/ros_overhead_detector.log)')
    parser.add_argument('--output', type=pathlib.Path, default=None, help='JSON file to write')
    return parser


def main(argv=None) -> int:
    options = build_parser().parse_args(argv)
    if not options.checkpoint.is_file():
        print(f'checkpoint not found: {options.checkpoint}; pass --checkpoint', file=sys.stderr)
        return 1
    try:
        summary = run(options)
    except (RuntimeError, TimeoutError) as error:
        print(f'ros_overhead_bench: failed: {error}', file=sys.stderr)
        return 1
    line = json.dumps(summary)
    print(line)
    if options.output:
        options.output.write_text(line + '\n', encoding='utf-8')
    return 0


if __name__ == '__main__':
    sys.exit(main())
