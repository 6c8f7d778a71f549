#!/usr/bin/env python3
"""Measure HetNet on one CUDA GPU in fp32, fp16, bf16, torch.compile and TensorRT, within a time budget.

For one model configuration ('full' by default: WideResNet50-2 + Swin-T with random
weights) at one input size (256 px by default), the script measures per configuration:

- batch-1 latency p50 and p95 over --iterations calls after --warmup calls, each call
  timed between two torch.cuda.synchronize() calls;
- batch-N throughput in images per second (--batch, --throughput-iterations);
- peak GPU memory, torch.cuda.max_memory_allocated of the configuration's own process
  (PyTorch's caching allocator only: memory that TensorRT or ONNX Runtime allocate
  themselves is not counted);
- the largest absolute anomaly-map difference to the fp32 model on --images real
  images, in raw map units and as a fraction of the fp32 map range (max - min).

Configurations, in the order they run: torch-eager-fp32 (the reference),
torch-autocast-fp16, torch-autocast-bf16, peer-rd-fp32, peer-rd-fp16,
torch-compile-fp16 and tensorrt-fp16. The autocast configurations run the networks
under torch.autocast and compute the anomaly map in float32, as
`hetnet_ros.inference.AnomalyDetector` does. TensorRT runs through torch_tensorrt when
it is installed, else through ONNX Runtime's TensorrtExecutionProvider on the
hetnet-export ONNX file. The peer is anomalib's Reverse Distillation torch model
(wide_resnet50_2, random weights), whose map differences are against peer-rd-fp32.

The input batch is on the GPU before the timer starts, so host-to-device copies are not
timed, except with ONNX Runtime, which takes host arrays. Random weights give the same
speed as trained ones, but the maps mean nothing, so the map differences show numerical
agreement between precisions, not detection accuracy.

Each configuration runs in its own subprocess, so memory peaks stay apart and a crash or
a missing package becomes a line with `skipped` set to the reason. The whole run stops
at --budget-s seconds (preparation included): a running configuration is killed and the
remaining ones are skipped with the reason. Every line records the GPU name, the NVIDIA
driver version and the CUDA version of the PyTorch build.

With --device cpu the same code runs on the CPU, so the script can be checked without a
GPU. There only fp32 and bf16 run (bf16 with channels_last, when oneDNN has native bf16
kernels), the fp16 and TensorRT configurations are skipped, and peak resident memory
replaces peak GPU memory.

Exit status: 0 when the run finished (some configurations may be skipped), 1 when the
preparation failed, 2 for invalid options or when no CUDA device is present.

Usage:
    export PYTHONPATH=$PWD/hetnet_ros   # or install hetnet_ros
    python scripts/gpu_bench.py --output gpu_bench.jsonl
    python scripts/gpu_bench.py --device cpu --config tiny --image-size 64 --iterations 2
"""

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import pathlib
import platform
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

import numpy as np

from hetnet_ros import bench

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

HETNET = 'hetnet'
PEER = 'peer-rd'
EAGER = 'eager'
COMPILE = 'compile'
TENSORRT = 'tensorrt'
TENSORRT_PROVIDER = 'TensorrtExecutionProvider'
WORKER_RESULT_PREFIX = 'GPU_BENCH_RESULT '


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One measured combination of model, execution engine and precision."""

    name: str
    model: str  # HETNET or PEER
    engine: str  # EAGER, COMPILE or TENSORRT
    precision: str  # one of hetnet_ros.prediction.PRECISIONS
    reference: str  # configuration whose maps this one is compared with; itself for a reference


CONFIGURATIONS = (
    Configuration('torch-eager-fp32', HETNET, EAGER, 'fp32', 'torch-eager-fp32'),
    Configuration('torch-autocast-fp16', HETNET, EAGER, 'fp16', 'torch-eager-fp32'),
    Configuration('torch-autocast-bf16', HETNET, EAGER, 'bf16', 'torch-eager-fp32'),
    Configuration('peer-rd-fp32', PEER, EAGER, 'fp32', 'peer-rd-fp32'),
    Configuration('peer-rd-fp16', PEER, EAGER, 'fp16', 'peer-rd-fp32'),
    Configuration('torch-compile-fp16', HETNET, COMPILE, 'fp16', 'torch-eager-fp32'),
    Configuration('tensorrt-fp16', HETNET, TENSORRT, 'fp16', 'torch-eager-fp32'),
)
CONFIGURATIONS_BY_NAME = {configuration.name: configuration for configuration in CONFIGURATIONS}


@dataclasses.dataclass
class Result:
    """Measurements of one configuration; None where it was not measured."""

    configuration: str
    model: str
    precision: str
    config: str  # hetnet_ros.bench configuration name of the HetNet ('full', 'offline', 'tiny')
    image_size: int
    batch: int
    iterations: int
    device: str
    device_name: str
    driver_version: Optional[str]  # NVIDIA driver; None on the CPU or when no tool reports it
    cuda_version: Optional[str]  # CUDA version PyTorch was built with (torch.version.cuda)
    torch_version: str
    p50_s: Optional[float] = None  # batch-1 latency
    p95_s: Optional[float] = None
    throughput_img_s: Optional[float] = None  # at batch `batch`
    peak_gpu_mib: Optional[float] = None  # torch.cuda.max_memory_allocated of the worker process
    peak_rss_mib: Optional[float] = None  # peak resident memory of the worker process (CPU runs)
    load_s: Optional[float] = None  # model load and preparation, torch_tensorrt's engine build included
    first_call_s: Optional[float] = None  # first batch-1 call, torch.compile and ONNX Runtime builds included
    max_abs_map_diff: Optional[float] = None  # raw anomaly-map units, against `reference`
    reference_map_range: Optional[float] = None  # max - min of the reference maps, raw units
    map_diff_fraction: Optional[float] = None  # max_abs_map_diff / reference_map_range
    reference: Optional[str] = None
    note: Optional[str] = None  # what the numbers include or leave out for this configuration
    skipped: Optional[str] = None  # reason, when the configuration did not run or did not finish


# Device description (parent process).

def describe_device(device: str) -> dict:
    """Return the device_name, driver_version, cuda_version and torch_version fields."""
    import torch

    if device == 'cpu':
        return {'device_name': _cpu_name(), 'driver_version': None, 'cuda_version': torch.version.cuda,
                'torch_version': torch.__version__}
    return {'device_name': torch.cuda.get_device_name(device), 'driver_version': _nvidia_driver_version(),
            'cuda_version': torch.version.cuda, 'torch_version': torch.__version__}


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine()


def _nvidia_driver_version() -> Optional[str]:
    """Return the NVIDIA driver version from NVML (nvidia-ml-py) or nvidia-smi, or None."""
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        except pynvml.NVMLError:
            pass
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        completed = subprocess.run(
            ['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
            capture_output=True, text=True, timeout=30, check=True)
        return completed.stdout.strip().splitlines()[0]
    return None


def unavailable_reason(configuration: Configuration, device: str) -> str:
    """Return why a configuration cannot run on `device` without starting it, or ''."""
    from hetnet_ros.inference import autocast_dtype

    if configuration.engine == TENSORRT and device == 'cpu':
        return 'TensorRT needs a CUDA device'
    if configuration.model == PEER and importlib.util.find_spec('anomalib') is None:
        return 'anomalib is not installed; run make bench-env'
    try:
        autocast_dtype(configuration.precision, device)
    except ValueError as error:
        return str(error)
    return ''


# Runners (worker process). Each takes a float32 (N, 3, S, S) tensor on the device and
# returns the (N, 1, S, S) anomaly maps as a tensor.

def make_runner(configuration: Configuration, options: argparse.Namespace) -> tuple[Callable, str]:
    """Load the model of a configuration; return its batch function and a note for the result.

    Raises:
        ImportError, RuntimeError, ValueError: the configuration cannot run here; the
            message is the reason.
    """
    import torch

    device = torch.device(options.device)
    work_dir = pathlib.Path(options.work_dir)

    def load_model():
        if configuration.model == PEER:
            return bench._build_peer(options.image_size).to(device)
        from hetnet_ros.checkpoint import load_checkpoint
        return load_checkpoint(work_dir / 'hetnet.pt', device).model.eval()

    if configuration.engine == TENSORRT:
        return _tensorrt_runner(load_model, device, options)
    note = ''
    if device.type == 'cuda' and configuration.precision == 'fp32':
        note = (f'TF32 settings: torch.backends.cudnn.allow_tf32 (convolutions) is '
                f'{torch.backends.cudnn.allow_tf32}, torch.backends.cuda.matmul.allow_tf32 '
                f'(matmuls) is {torch.backends.cuda.matmul.allow_tf32}')
    run = _torch_runner(load_model(), device, configuration.precision, configuration.engine == COMPILE)
    return run, note


def _torch_runner(model, device, precision: str, compile_model: bool) -> Callable:
    import torch

    from hetnet_ros.inference import autocast_dtype, uses_channels_last

    dtype = autocast_dtype(precision, device)
    channels_last = uses_channels_last(precision, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)

    def run(images):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
        with torch.inference_mode(), autocast:
            return model(images).anomaly_map

    return run


def _tensorrt_runner(load_model: Callable, device, options: argparse.Namespace) -> tuple[Callable, str]:
    try:
        import torch_tensorrt
    except ImportError as error:
        torch_tensorrt_missing = f'torch_tensorrt is not importable ({error})'
    else:
        return _torch_tensorrt_runner(torch_tensorrt, load_model(), device, options)
    return _onnxruntime_tensorrt_runner(device, options, torch_tensorrt_missing)


def _torch_tensorrt_runner(
        torch_tensorrt, model, device, options: argparse.Namespace) -> tuple[Callable, str]:
    import torch

    from hetnet_ros.export import InferenceGraph

    size = options.image_size
    shape = {'min_shape': (1, 3, size, size), 'opt_shape': (1, 3, size, size),
             'max_shape': (options.batch, 3, size, size)}
    try:
        compiled = torch_tensorrt.compile(
            InferenceGraph(model).eval(), ir='dynamo',
            inputs=[torch_tensorrt.Input(**shape, dtype=torch.float32)],
            enabled_precisions={torch.float16})
    # torch_tensorrt raises many error types while it converts the graph, and any of
    # them means that this configuration cannot run here.
    except Exception as error:  # noqa: BLE001
        summary = ' '.join(str(error).strip().splitlines()[:3])
        raise RuntimeError(
            f'torch_tensorrt {torch_tensorrt.__version__} failed to compile HetNet: '
            f'{type(error).__name__}: {summary}') from error

    def run(images):
        with torch.inference_mode():
            anomaly_map, _ = compiled(images)
        return anomaly_map

    note = (f'torch_tensorrt {torch_tensorrt.__version__}, fp16 layers enabled; the TensorRT build '
            'happens in load_s; peak_gpu_mib leaves out memory that TensorRT allocates itself')
    return run, note


def _onnxruntime_tensorrt_runner(
        device, options: argparse.Namespace, torch_tensorrt_missing: str) -> tuple[Callable, str]:
    import torch

    try:
        import onnxruntime
    except ImportError as error:
        raise RuntimeError(
            f'{torch_tensorrt_missing}, and onnxruntime is not importable ({error})') from error
    providers = onnxruntime.get_available_providers()
    if TENSORRT_PROVIDER not in providers:
        raise RuntimeError(
            f'{torch_tensorrt_missing}, and ONNX Runtime {onnxruntime.__version__} has no '
            f'{TENSORRT_PROVIDER} (available: {", ".join(providers)}); install torch-tensorrt or '
            'onnxruntime-gpu with TensorRT')

    work_dir = pathlib.Path(options.work_dir)
    onnx_path = work_dir / 'hetnet.onnx'
    reason = bench.export_onnx(work_dir / 'hetnet.pt', onnx_path, pathlib.Path(options.images_dir))
    if reason:
        raise RuntimeError(reason)
    size = options.image_size
    device_id = device.index if device.index is not None else torch.cuda.current_device()
    tensorrt_options = {
        'device_id': device_id,
        'trt_fp16_enable': True,
        'trt_profile_min_shapes': f'images:1x3x{size}x{size}',
        'trt_profile_opt_shapes': f'images:1x3x{size}x{size}',
        'trt_profile_max_shapes': f'images:{options.batch}x3x{size}x{size}',
    }
    session = onnxruntime.InferenceSession(
        str(onnx_path), providers=[(TENSORRT_PROVIDER, tensorrt_options),
                                   ('CUDAExecutionProvider', {'device_id': device_id})])
    if session.get_providers()[0] != TENSORRT_PROVIDER:
        raise RuntimeError(
            f'ONNX Runtime did not enable {TENSORRT_PROVIDER}; it uses {session.get_providers()}')

    def run(images):
        (anomaly_map,) = session.run(['anomaly_map'], {'images': images.cpu().numpy()})
        return torch.from_numpy(anomaly_map)

    note = (f'ONNX Runtime {onnxruntime.__version__} {TENSORRT_PROVIDER} with fp16 on the '
            'hetnet-export ONNX file; times include host-device copies; the engine build happens '
            'in the first call; peak_gpu_mib leaves out memory that ONNX Runtime allocates')
    return run, note


# Measurement (worker process).

def measure(configuration: Configuration, options: argparse.Namespace) -> dict:
    """Load, time and check one configuration in this process; return the measured fields."""
    import torch

    device = torch.device(options.device)
    if device.type == 'cuda' and device.index is not None:
        torch.cuda.set_device(device)

    def synchronize() -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    def timed_call(images) -> float:
        synchronize()
        start = time.perf_counter()
        run(images)
        synchronize()
        return time.perf_counter() - start

    work_dir = pathlib.Path(options.work_dir)
    images = torch.from_numpy(np.load(work_dir / 'images.npy')).to(device)
    start = time.perf_counter()
    try:
        run, note = make_runner(configuration, options)
    except (ImportError, RuntimeError, ValueError) as error:
        return {'skipped': f'{type(error).__name__}: {error}'}
    measured = {'load_s': time.perf_counter() - start, 'note': note or None}

    single = images[:1].contiguous()
    measured['first_call_s'] = timed_call(single)
    for _ in range(options.warmup):
        timed_call(single)
    latencies = [timed_call(single) for _ in range(options.iterations)]
    measured['p50_s'] = float(np.percentile(latencies, 50))
    measured['p95_s'] = float(np.percentile(latencies, 95))

    repeats = -(-options.batch // len(images))
    batch = images.repeat(repeats, 1, 1, 1)[:options.batch].contiguous()
    timed_call(batch)
    elapsed = sum(timed_call(batch) for _ in range(options.throughput_iterations))
    measured['throughput_img_s'] = options.batch * options.throughput_iterations / elapsed

    maps = [run(images[index:index + 1].contiguous()).float().cpu().numpy()[:, 0]
            for index in range(len(images))]
    np.save(work_dir / f'maps-{configuration.name}.npy', np.concatenate(maps))

    if device.type == 'cuda':
        measured['peak_gpu_mib'] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    measured['peak_rss_mib'] = bench.read_memory_mib('VmHWM')
    return measured


# Orchestration (parent process).

def run_worker(configuration: Configuration, options: argparse.Namespace, work_dir: pathlib.Path,
               timeout_s: float) -> dict:
    """Run `measure` for one configuration in a subprocess; return its fields or the skip reason.

    The worker runs in its own process group, so that at the timeout the group (the
    worker and, for example, torch.compile's compiler processes) is killed together.
    """
    command = [
        sys.executable, str(pathlib.Path(__file__).resolve()), '--worker', configuration.name,
        '--work-dir', str(work_dir), '--device', options.device, '--config', options.config,
        '--image-size', str(options.image_size), '--batch', str(options.batch),
        '--iterations', str(options.iterations), '--warmup', str(options.warmup),
        '--throughput-iterations', str(options.throughput_iterations),
        '--images-dir', str(options.images_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {'skipped': f'stopped after {timeout_s:.0f} s, when the time budget of '
                           f'{options.budget_s:g} s (--budget-s) ran out'}

    results = [line[len(WORKER_RESULT_PREFIX):] for line in stdout.splitlines()
               if line.startswith(WORKER_RESULT_PREFIX)]
    if process.returncode != 0 or not results:
        tail = ' | '.join(stderr.strip().splitlines()[-3:])
        return {'skipped': f'worker exited with status {process.returncode}: {tail}'}
    return json.loads(results[-1])


def compare_maps(result: Result, configuration: Configuration, work_dir: pathlib.Path) -> None:
    """Fill the map differences of a measured result from the saved maps of its reference."""
    reference_path = work_dir / f'maps-{configuration.reference}.npy'
    maps_path = work_dir / f'maps-{configuration.name}.npy'
    if result.skipped or not reference_path.is_file() or not maps_path.is_file():
        return
    reference = np.load(reference_path).astype(np.float64)
    difference = float(np.max(np.abs(np.load(maps_path).astype(np.float64) - reference)))
    reference_range = float(reference.max() - reference.min())
    result.reference = configuration.reference
    result.max_abs_map_diff = difference
    result.reference_map_range = reference_range
    result.map_diff_fraction = difference / reference_range if reference_range > 0 else None


def select_configurations(with_peer: bool) -> list[Configuration]:
    """Return the configurations to run, in order: references before what is compared with them."""
    return [configuration for configuration in CONFIGURATIONS if with_peer or configuration.model != PEER]


def prepare(
        options: argparse.Namespace, configurations: Sequence[Configuration], work_dir: pathlib.Path) -> None:
    """Write the real images and, when a HetNet configuration runs, the checkpoint."""
    count = bench.write_images(
        options.images_dir, options.images, options.image_size, work_dir / 'images.npy')
    print(f'gpu_bench: saved {count} real images from {options.images_dir} at {options.image_size} px',
          file=sys.stderr)
    if any(configuration.model == HETNET for configuration in configurations):
        bench.write_checkpoint(options.config, options.image_size, work_dir / 'hetnet.pt')


def run_benchmark(options: argparse.Namespace, device_fields: dict, started: float) -> list[Result]:
    """Prepare the inputs, then measure each configuration in a worker until the budget is used up."""
    configurations = select_configurations(not options.no_peer)
    results = []
    output = options.output.open('w', encoding='utf-8') if options.output else None
    try:
        with tempfile.TemporaryDirectory(prefix='gpu-bench-') as directory:
            work_dir = pathlib.Path(directory)
            prepare(options, configurations, work_dir)
            for configuration in configurations:
                result = Result(
                    configuration=configuration.name, model=configuration.model,
                    precision=configuration.precision, config=options.config,
                    image_size=options.image_size, batch=options.batch, iterations=options.iterations,
                    device=options.device, **device_fields)
                elapsed = time.perf_counter() - started
                reason = unavailable_reason(configuration, options.device)
                if reason:
                    result.skipped = reason
                elif elapsed >= options.budget_s:
                    result.skipped = (f'not started: the time budget of {options.budget_s:g} s '
                                      f'(--budget-s) ran out after {elapsed:.0f} s')
                else:
                    print(f'gpu_bench: measuring {configuration.name}', file=sys.stderr)
                    fields = run_worker(configuration, options, work_dir, options.budget_s - elapsed)
                    result = dataclasses.replace(result, **fields)
                    compare_maps(result, configuration, work_dir)
                line = json.dumps(dataclasses.asdict(result))
                print(line, flush=True)
                if output:
                    output.write(line + '\n')
                    output.flush()
                results.append(result)
    finally:
        if output:
            output.close()
    return results


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    parser = argparse.ArgumentParser(
        description='Measure HetNet batch-1 latency, batch-N throughput, peak GPU memory and '
                    'anomaly-map difference to fp32 in fp32, fp16, bf16, torch.compile and TensorRT '
                    'on one CUDA GPU, next to anomalib Reverse Distillation. Prints one JSON line '
                    'per configuration.')
    parser.add_argument('--device', default='cuda',
                        help="'cuda', 'cuda:N', or 'cpu' to check the script without a GPU (default cuda)")
    parser.add_argument('--config', choices=bench.CONFIGS, default='full',
                        help="HetNet: 'full' (WideResNet50-2 + Swin-T, random weights; default), "
                             "'offline' (EfficientNet-Lite0 + Swin-T) or 'tiny' (ResNet-18 + Swin-T)")
    parser.add_argument('--image-size', type=int, default=256, help='input side in pixels (default 256)')
    parser.add_argument('--batch', type=int, default=16, help='batch size N for throughput (default 16)')
    parser.add_argument('--warmup', type=int, default=5, help='untimed batch-1 calls (default 5)')
    parser.add_argument('--iterations', type=int, default=30, help='timed batch-1 calls (default 30)')
    parser.add_argument('--throughput-iterations', type=int, default=5,
                        help='timed batch-N calls (default 5)')
    parser.add_argument('--images', type=int, default=4,
                        help='real images for the map comparison (default 4)')
    parser.add_argument('--images-dir', type=pathlib.Path, default=bench.DEFAULT_DATA,
                        help=f'folder of real test images (default {bench.DEFAULT_DATA})')
    parser.add_argument('--budget-s', type=float, default=300.0,
                        help='time limit of the whole run in seconds, preparation included; '
                             'configurations that do not fit are skipped (default 300)')
    parser.add_argument('--no-peer', action='store_true', help='leave out the anomalib peer')
    parser.add_argument('--output', type=pathlib.Path, default=None, help='JSON lines file to write')
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--work-dir', default=None, help=argparse.SUPPRESS)
    return parser


def check_options(options: argparse.Namespace) -> str:
    """Return what is wrong with the options, or ''."""
    for name in ('batch', 'iterations', 'throughput_iterations', 'images'):
        if getattr(options, name) < 1:
            return f'--{name.replace("_", "-")} must be at least 1, got {getattr(options, name)}'
    if options.warmup < 0:
        return f'--warmup must be 0 or more, got {options.warmup}'
    if options.budget_s <= 0:
        return f'--budget-s must be positive, got {options.budget_s}'
    device = options.device
    if device != 'cpu' and device != 'cuda' and not (device.startswith('cuda:') and device[5:].isdigit()):
        return f"--device must be 'cuda', 'cuda:N' or 'cpu', got {device!r}"
    return ''


def check_cuda(device: str) -> str:
    """Return why the CUDA device cannot be used, or '' (also for 'cpu')."""
    import torch

    if device == 'cpu':
        return ''
    if not torch.cuda.is_available():
        return (f'no CUDA device found: torch.cuda.is_available() is False (PyTorch {torch.__version__}, '
                f'built with CUDA {torch.version.cuda}); run this on a machine with an NVIDIA GPU, or '
                'pass --device cpu to check the script on the CPU (fp32 and bf16 only)')
    index = int(device.split(':')[1]) if ':' in device else 0
    if index >= torch.cuda.device_count():
        return (f'CUDA device {device} not found: PyTorch finds {torch.cuda.device_count()} device(s); '
                f'pass --device cuda:0 to cuda:{torch.cuda.device_count() - 1}')
    return ''


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    started = time.perf_counter()
    options = build_parser().parse_args(argv)
    if options.worker:
        configuration = CONFIGURATIONS_BY_NAME[options.worker]
        print(WORKER_RESULT_PREFIX + json.dumps(measure(configuration, options)), flush=True)
        return EXIT_OK

    problem = check_options(options) or check_cuda(options.device)
    if problem:
        print(f'gpu_bench: {problem}', file=sys.stderr)
        return EXIT_USAGE
    try:
        run_benchmark(options, describe_device(options.device), started)
    except (FileNotFoundError, OSError, ValueError) as error:
        print(f'gpu_bench: failed: {error}', file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
