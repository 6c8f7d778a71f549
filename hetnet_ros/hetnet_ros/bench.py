"""Measure HetNet's speed, memory and map accuracy per runtime, next to a peer: `hetnet-bench`.

For one model configuration at one input size the command measures, for every selected
runtime, batch-1 latency (p50 and p95 after warm-up iterations), batch-N throughput,
peak resident memory, and the largest absolute anomaly-map difference to fp32 PyTorch
on real images. In the same run it measures the peer, anomalib's Reverse Distillation
torch model (wide_resnet50_2 encoder with random weights, eval mode), and divides every
p50 by the peer's fastest p50.

Each runtime runs in its own subprocess, so its peak memory is not mixed with that of
another, and a crash or an import error is reported as a skipped configuration with the
reason. The command prints one JSON line per configuration and writes the same lines to
--output.

Times cover the model call only: the input is already a float32 (N, 3, S, S) array, and
image decoding and resizing are not included. Random weights give the same speed as
trained ones, but the maps mean nothing, so the map differences show numerical agreement
between runtimes, not detection accuracy.

Usage:
    hetnet-bench --output bench.jsonl                       # full HetNet, all runtimes
    hetnet-bench --config offline --runtimes torch-eager-fp32,onnxruntime-fp32
    hetnet-bench --config tiny --image-size 64 --iterations 2 --warmup 1 --no-peer
"""

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

import numpy as np

from hetnet_ros.prediction import MAP_TOLERANCE

logger = logging.getLogger(__name__)

TORCH_EAGER_FP32 = 'torch-eager-fp32'
TORCH_BF16_CHANNELS_LAST = 'torch-bf16-channels-last'
TORCH_COMPILE_FP32 = 'torch-compile-fp32'
ONNXRUNTIME_FP32 = 'onnxruntime-fp32'
OPENVINO_FP32 = 'openvino-fp32'
OPENVINO_BF16 = 'openvino-bf16'
# OpenVinoAnomalyDetector, the detector's CPU runtime: converted from the checkpoint, with
# the local teacher and the anomaly map in fp32 also in bf16.
OPENVINO_DETECTOR_FP32 = 'openvino-detector-fp32'
OPENVINO_DETECTOR_BF16 = 'openvino-detector-bf16'
PEER_FP32 = 'peer-rd-fp32'
PEER_BF16_CHANNELS_LAST = 'peer-rd-bf16-channels-last'
PEER_OPENVINO_FP32 = 'peer-rd-openvino-fp32'
PEER_OPENVINO_BF16 = 'peer-rd-openvino-bf16'

HETNET_RUNTIMES = (TORCH_EAGER_FP32, TORCH_BF16_CHANNELS_LAST, TORCH_COMPILE_FP32,
                   ONNXRUNTIME_FP32, OPENVINO_FP32, OPENVINO_BF16, OPENVINO_DETECTOR_FP32,
                   OPENVINO_DETECTOR_BF16)
PEER_RUNTIMES = (PEER_FP32, PEER_BF16_CHANNELS_LAST, PEER_OPENVINO_FP32, PEER_OPENVINO_BF16)
ONNX_RUNTIMES = (ONNXRUNTIME_FP32, OPENVINO_FP32, OPENVINO_BF16)
# Reference whose maps every other configuration of the same model is compared with.
REFERENCE = {**{name: TORCH_EAGER_FP32 for name in HETNET_RUNTIMES},
             **{name: PEER_FP32 for name in PEER_RUNTIMES}}

CONFIGS = ('full', 'offline', 'tiny')
PEER_BACKBONE = 'wide_resnet50_2'
# The layers and map mode of anomalib's Reverse Distillation defaults (anomalib 2.7.0).
PEER_LAYERS = ('layer1', 'layer2', 'layer3')
PEER_MAP_MODE = 'multiply'
SEED = 0
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')
DEFAULT_DATA = pathlib.Path(os.environ.get('HETNET_DATA', '../shared/data')) / 'mvtec_screw' / 'test'

EXIT_OK = 0
EXIT_FAILED = 1


@dataclasses.dataclass
class Result:
    """Measurements of one runtime configuration; None where it was not measured."""

    runtime: str
    config: str
    image_size: int
    threads: int
    batch: int
    p50_s: Optional[float] = None
    p95_s: Optional[float] = None
    throughput_img_s: Optional[float] = None
    peak_rss_mib: Optional[float] = None  # peak resident memory of the whole process
    rss_delta_mib: Optional[float] = None  # peak minus the resident memory before the model load
    load_s: Optional[float] = None  # model build or load, compilation excluded
    first_call_s: Optional[float] = None  # first batch-1 call, includes torch.compile compilation
    max_abs_map_diff: Optional[float] = None  # raw anomaly-map units, against REFERENCE[runtime]
    reference_map_range: Optional[float] = None  # max - min of the reference maps, raw units
    map_diff_fraction: Optional[float] = None  # max_abs_map_diff / reference_map_range
    fp32_level_maps: Optional[bool] = None  # map_diff_fraction <= prediction.MAP_TOLERANCE
    reference: Optional[str] = None
    ratio_to_peer: Optional[float] = None  # p50_s / fastest peer p50_s
    iterations: int = 0
    skipped: Optional[str] = None  # reason, when the configuration did not run


# Model preparation (parent process).

def build_hetnet_config(name: str, image_size: int):
    """Build the HetNetConfig of a named benchmark configuration.

    'full' is the paper's WideResNet50-2 + Swin-T pair, 'offline' the configuration that
    builds without network access (EfficientNet-Lite0 + Swin-T), and 'tiny' ResNet-18 +
    Swin-T, small enough for a quick check. Teacher weights are random except for the
    packaged EfficientNet-Lite0 weights of 'offline'.
    """
    from hetnet_ros.model import HetNetConfig
    from hetnet_ros.model.config import RANDOM_WEIGHTS

    if name == 'full':
        return HetNetConfig(image_size=image_size, cnn_weights=RANDOM_WEIGHTS,
                            transformer_weights=RANDOM_WEIGHTS)
    if name == 'offline':
        return HetNetConfig.offline_default(image_size=image_size)
    if name == 'tiny':
        return HetNetConfig(
            cnn_teacher='resnet18', cnn_weights=RANDOM_WEIGHTS,
            transformer_teacher='swin_tiny_patch4_window7_224', transformer_weights=RANDOM_WEIGHTS,
            image_size=image_size)
    raise ValueError(f"config must be one of {', '.join(CONFIGS)}, got {name!r}")


def write_checkpoint(config_name: str, image_size: int, path: pathlib.Path) -> None:
    """Build the HetNet of a configuration with seed SEED and save it as a checkpoint.

    The calibration is a placeholder (threshold 1, low 0): the benchmark compares raw maps
    and never uses verdicts.
    """
    import torch

    from hetnet_ros.calibration import METHOD_NORMAL_QUANTILE, Calibration
    from hetnet_ros.checkpoint import save_checkpoint
    from hetnet_ros.model import HetNet

    torch.manual_seed(SEED)
    model = HetNet(build_hetnet_config(config_name, image_size)).eval()
    calibration = Calibration(threshold=1.0, low=0.0, method=METHOD_NORMAL_QUANTILE, normal_count=0)
    save_checkpoint(path, model, calibration, {'benchmark': {'config': config_name, 'seed': SEED}})


def load_images(image_dir: pathlib.Path, count: int, image_size: int) -> np.ndarray:
    """Load `count` real images, spread over the sorted files, as float32 (K, 3, S, S) in [0, 1].

    Raises:
        FileNotFoundError: the folder is missing or contains no images.
    """
    from hetnet_ros.data.mvtec import read_image
    from hetnet_ros.prediction import to_model_input

    files = sorted(
        file for file in image_dir.rglob('*')
        if file.suffix.lower() in IMAGE_SUFFIXES and '_mask' not in file.stem)
    if not files:
        raise FileNotFoundError(
            f'no images under {image_dir}; pass --images-dir with a folder of test images')
    indices = np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)
    return np.concatenate([to_model_input(read_image(files[index]), image_size) for index in indices])


def write_images(image_dir: pathlib.Path, count: int, image_size: int, path: pathlib.Path) -> int:
    """Save the images of `load_images` to `path` (.npy) and return how many were saved.

    Raises:
        FileNotFoundError: the folder is missing or contains no images.
    """
    batch = load_images(image_dir, count, image_size)
    np.save(path, batch)
    return len(batch)


def export_onnx(checkpoint: pathlib.Path, output: pathlib.Path, image_dir: pathlib.Path) -> str:
    """Export the checkpoint with hetnet-export's checked path; return '' or the failure reason."""
    from hetnet_ros.export import ExportError, export_checkpoint

    try:
        export_checkpoint(checkpoint, output, check_images=image_dir, max_images=2)
    except ExportError as error:
        return f'ONNX export failed: {error}'
    return ''


# Runners (worker process). Each returns a function from float32 (N, 3, S, S) to
# float32 anomaly maps (N, S, S).

def make_runner(runtime: str, work_dir: pathlib.Path, threads: int, image_size: int) -> Callable:
    """Load the model of `runtime` and return its batch function.

    Raises:
        RuntimeError: the runtime is not available here; the message is the reason.
    """
    if runtime in (TORCH_EAGER_FP32, TORCH_BF16_CHANNELS_LAST, TORCH_COMPILE_FP32):
        from hetnet_ros.checkpoint import load_checkpoint
        model = load_checkpoint(work_dir / 'hetnet.pt', 'cpu').model.eval()
        return _torch_runner(runtime, model, threads)
    if runtime in (OPENVINO_DETECTOR_FP32, OPENVINO_DETECTOR_BF16):
        return _openvino_detector_runner(work_dir / 'hetnet.pt', threads, runtime == OPENVINO_DETECTOR_BF16)
    if runtime in (PEER_OPENVINO_FP32, PEER_OPENVINO_BF16):
        return _peer_openvino_runner(image_size, threads, runtime == PEER_OPENVINO_BF16, work_dir)
    if runtime in PEER_RUNTIMES:
        return _torch_runner(runtime, _build_peer(image_size), threads)
    if runtime == ONNXRUNTIME_FP32:
        return _onnxruntime_runner(work_dir / 'hetnet.onnx', threads)
    if runtime in (OPENVINO_FP32, OPENVINO_BF16):
        return _openvino_runner(work_dir / 'hetnet.onnx', threads, runtime == OPENVINO_BF16)
    raise ValueError(f'unknown runtime {runtime!r}')


def bf16_unavailable_reason() -> str:
    """Return why bf16 autocast is not measured here, or '' when oneDNN reports native bf16 support."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return 'PyTorch was built without oneDNN (mkldnn)'
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return (f'oneDNN finds no native bf16 support on this CPU '
                f'(capability {torch.backends.cpu.get_cpu_capability()})')
    return ''


def _build_peer(image_size: int):
    import torch
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    torch.manual_seed(SEED)
    model = ReverseDistillationModel(
        backbone=PEER_BACKBONE, input_size=(image_size, image_size), layers=list(PEER_LAYERS),
        anomaly_map_mode=AnomalyMapGenerationMode(PEER_MAP_MODE), pre_trained=False)
    return model.eval()


def _torch_runner(runtime: str, model, threads: int) -> Callable:
    import torch

    torch.set_num_threads(threads)
    bf16 = runtime in (TORCH_BF16_CHANNELS_LAST, PEER_BF16_CHANNELS_LAST)
    if bf16:
        reason = bf16_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        model = model.to(memory_format=torch.channels_last)
    if runtime == TORCH_COMPILE_FP32:
        model = torch.compile(model)

    def run(images: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(images)
        if bf16:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            anomaly_map = model(tensor).anomaly_map
        return anomaly_map.float().numpy()[:, 0]

    return run


def _onnxruntime_runner(path: pathlib.Path, threads: int) -> Callable:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])

    def run(images: np.ndarray) -> np.ndarray:
        (anomaly_map,) = session.run(['anomaly_map'], {'images': images})
        return anomaly_map[:, 0]

    return run


def _openvino_runner(path: pathlib.Path, threads: int, bf16: bool) -> Callable:
    try:
        import openvino
    except ImportError as error:
        raise RuntimeError(f'openvino is not installed ({error}); run make bench-env') from error

    core = openvino.Core()
    properties = {
        'INFERENCE_NUM_THREADS': threads,
        'PERFORMANCE_HINT': 'LATENCY',
        # OpenVINO's CPU plugin runs in bf16 by default on CPUs with bf16 instructions,
        # so fp32 is requested explicitly.
        'INFERENCE_PRECISION_HINT': 'bf16' if bf16 else 'f32',
    }
    compiled = core.compile_model(core.read_model(str(path)), 'CPU', properties)
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> np.ndarray:
        outputs = request.infer({'images': images})
        return np.asarray(outputs[compiled.output('anomaly_map')])[:, 0]

    return run


def _openvino_detector_runner(path: pathlib.Path, threads: int, bf16: bool) -> Callable:
    try:
        from hetnet_ros.openvino_inference import OpenVinoAnomalyDetector
    except ImportError as error:
        raise RuntimeError(f'openvino is not installed ({error})') from error

    detector = OpenVinoAnomalyDetector.from_checkpoint(path, 'bf16' if bf16 else 'fp32', threads)

    def run(images: np.ndarray) -> np.ndarray:
        return detector.infer_batch(images)[1]

    return run


def _peer_openvino_runner(image_size: int, threads: int, bf16: bool, work_dir: pathlib.Path) -> Callable:
    # OpenVINO's PyTorch frontend has no conversion for aten::cosine_similarity (2026.4),
    # which the peer's anomaly map uses, so the peer goes through an ONNX export.
    import torch

    try:
        import openvino
    except ImportError as error:
        raise RuntimeError(f'openvino is not installed ({error}); run make bench-env') from error

    class PeerMap(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model(images).anomaly_map

    example = torch.rand(1, 3, image_size, image_size)
    path = work_dir / f'peer-{os.getpid()}.onnx'
    torch.onnx.export(PeerMap(_build_peer(image_size)), (example,), str(path), dynamo=True)
    converted = openvino.Core().read_model(str(path))
    properties = {'INFERENCE_NUM_THREADS': threads, 'PERFORMANCE_HINT': 'LATENCY',
                  'INFERENCE_PRECISION_HINT': 'bf16' if bf16 else 'f32'}
    compiled = openvino.Core().compile_model(converted, 'CPU', properties)
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> np.ndarray:
        maps = [np.asarray(request.infer([images[index:index + 1]])[compiled.outputs[0]])[:, 0]
                for index in range(len(images))]
        return np.concatenate(maps)

    return run


# Measurement (worker process).

def read_memory_mib(field: str) -> float:
    """Return a memory field of /proc/self/status ('VmRSS' now, 'VmHWM' peak) in MiB.

    VmHWM starts again at exec, unlike getrusage's ru_maxrss, which a child inherits
    from the parent that forked it.
    """
    for line in pathlib.Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1]) / 1024
    return float('nan')


def measure(runtime: str, options: argparse.Namespace) -> Result:
    """Load, time and check one runtime in this process (the worker side of `run_worker`)."""
    work_dir = pathlib.Path(options.work_dir)
    result = Result(runtime=runtime, config=options.config, image_size=options.image_size,
                    threads=options.threads, batch=options.batch, iterations=options.iterations)
    images = np.load(work_dir / 'images.npy')
    baseline_mib = read_memory_mib('VmRSS')

    start = time.perf_counter()
    try:
        run = make_runner(runtime, work_dir, options.threads, options.image_size)
    except (ImportError, RuntimeError) as error:
        result.skipped = f'{type(error).__name__}: {error}'
        return result
    result.load_s = time.perf_counter() - start

    single = np.ascontiguousarray(images[:1])
    start = time.perf_counter()
    run(single)
    result.first_call_s = time.perf_counter() - start
    for _ in range(options.warmup):
        run(single)
    latencies = []
    for _ in range(options.iterations):
        start = time.perf_counter()
        run(single)
        latencies.append(time.perf_counter() - start)
    result.p50_s = float(np.percentile(latencies, 50))
    result.p95_s = float(np.percentile(latencies, 95))

    batch = np.ascontiguousarray(np.resize(images, (options.batch, *images.shape[1:])))
    run(batch)
    start = time.perf_counter()
    for _ in range(options.throughput_iterations):
        run(batch)
    result.throughput_img_s = options.batch * options.throughput_iterations / (time.perf_counter() - start)

    maps = np.concatenate([run(np.ascontiguousarray(images[index:index + 1]))
                           for index in range(len(images))])
    np.save(work_dir / f'maps-{runtime}.npy', maps.astype(np.float32))
    if options.profile_output and runtime == TORCH_EAGER_FP32:
        write_profile(run, single, pathlib.Path(options.profile_output))

    result.peak_rss_mib = read_memory_mib('VmHWM')
    result.rss_delta_mib = result.peak_rss_mib - baseline_mib
    return result


def write_profile(run: Callable, images: np.ndarray, path: pathlib.Path, calls: int = 3) -> None:
    """Profile `calls` calls with torch.profiler and write the top operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(calls):
            run(images)
    table = profiler.key_averages().table(sort_by='self_cpu_time_total', row_limit=20)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'torch.profiler, {calls} calls at batch {len(images)}\n{table}\n')


# Orchestration (parent process).

def run_worker(runtime: str, options: argparse.Namespace, work_dir: pathlib.Path) -> Result:
    """Run `measure` for one runtime in a subprocess and return its Result.

    A worker that fails, is killed or exceeds --timeout-s gives a skipped Result with
    the reason and the last lines of its error output.
    """
    command = [
        sys.executable, '-m', 'hetnet_ros.bench', '--worker', runtime, '--work-dir', str(work_dir),
        '--config', options.config, '--image-size', str(options.image_size),
        '--threads', str(options.threads), '--batch', str(options.batch),
        '--iterations', str(options.iterations), '--warmup', str(options.warmup),
        '--throughput-iterations', str(options.throughput_iterations)]
    if options.profile_output:
        command += ['--profile-output', str(options.profile_output)]
    environment = dict(os.environ, OMP_NUM_THREADS=str(options.threads))
    skipped = Result(runtime=runtime, config=options.config, image_size=options.image_size,
                     threads=options.threads, batch=options.batch)
    try:
        completed = subprocess.run(command, capture_output=True, text=True, env=environment,
                                   timeout=options.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        skipped.skipped = f'timed out after {options.timeout_s} s (--timeout-s)'
        return skipped
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        tail = ' | '.join(completed.stderr.strip().splitlines()[-3:])
        skipped.skipped = f'worker exited with status {completed.returncode}: {tail}'
        return skipped
    return Result(**json.loads(lines[-1]))


def compare_maps(results: Sequence[Result], work_dir: pathlib.Path) -> None:
    """Fill max_abs_map_diff of each measured result from the saved maps of its reference."""
    for result in results:
        if result.skipped:
            continue
        reference = REFERENCE[result.runtime]
        reference_path = work_dir / f'maps-{reference}.npy'
        if not reference_path.is_file():
            continue
        maps = np.load(work_dir / f'maps-{result.runtime}.npy').astype(np.float64)
        reference_maps = np.load(reference_path).astype(np.float64)
        result.reference = reference
        result.max_abs_map_diff = float(np.max(np.abs(maps - reference_maps)))
        result.reference_map_range = float(reference_maps.max() - reference_maps.min())
        if result.reference_map_range > 0:
            result.map_diff_fraction = result.max_abs_map_diff / result.reference_map_range
            result.fp32_level_maps = result.map_diff_fraction <= MAP_TOLERANCE


def fill_peer_ratios(results: Sequence[Result]) -> None:
    """Fill ratio_to_peer of each measured result with its p50 over the fastest peer p50."""
    peer_p50 = [result.p50_s for result in results if result.runtime in PEER_RUNTIMES and result.p50_s]
    if not peer_p50:
        return
    for result in results:
        if result.p50_s:
            result.ratio_to_peer = result.p50_s / min(peer_p50)


def prepare(options: argparse.Namespace, runtimes: Sequence[str], work_dir: pathlib.Path) -> dict[str, str]:
    """Write the checkpoint, the images and the ONNX export the workers need.

    Returns:
        {runtime: reason} for runtimes that cannot run because a preparation step failed.
    """
    count = write_images(options.images_dir, options.images, options.image_size, work_dir / 'images.npy')
    logger.info('saved %d real images from %s at %d px', count, options.images_dir, options.image_size)
    if not any(runtime in HETNET_RUNTIMES for runtime in runtimes):
        return {}
    write_checkpoint(options.config, options.image_size, work_dir / 'hetnet.pt')
    if not any(runtime in ONNX_RUNTIMES for runtime in runtimes):
        return {}
    reason = export_onnx(work_dir / 'hetnet.pt', work_dir / 'hetnet.onnx', options.images_dir)
    return {runtime: reason for runtime in ONNX_RUNTIMES} if reason else {}


def run_benchmark(options: argparse.Namespace, runtimes: Sequence[str]) -> list[Result]:
    """Prepare the models, run every runtime in its own worker and fill the comparisons."""
    with tempfile.TemporaryDirectory(prefix='hetnet-bench-') as directory:
        work_dir = pathlib.Path(directory)
        failed = prepare(options, runtimes, work_dir)
        results = []
        for runtime in runtimes:
            if runtime in failed:
                results.append(Result(runtime=runtime, config=options.config, image_size=options.image_size,
                                      threads=options.threads, batch=options.batch, skipped=failed[runtime]))
                continue
            logger.info('measuring %s', runtime)
            result = run_worker(runtime, options, work_dir)
            logger.info('%s: %s', runtime, result.skipped or f'p50 {result.p50_s:.4f} s')
            results.append(result)
        compare_maps(results, work_dir)
    fill_peer_ratios(results)
    return results


def parse_runtimes(text: str, with_peer: bool) -> list[str]:
    """Split a comma-separated runtime list, check the names and put references first."""
    known = HETNET_RUNTIMES + PEER_RUNTIMES
    names = list(known) if text == 'all' else [name.strip() for name in text.split(',') if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown runtimes {unknown}; choose from {', '.join(known)} or 'all'")
    if not with_peer:
        names = [name for name in names if name not in PEER_RUNTIMES]
        if not names:
            raise ValueError('--no-peer leaves no runtime to measure; drop --no-peer or add '
                             'HetNet runtimes to --runtimes')
    # The references run first so that later map comparisons find their maps.
    return sorted(dict.fromkeys(names), key=lambda name: (name not in REFERENCE.values(), known.index(name)))


def check_options(options: argparse.Namespace) -> None:
    """Raise ValueError naming the first invalid option and its valid range."""
    for name, minimum in (('iterations', 1), ('warmup', 0), ('batch', 1),
                          ('throughput_iterations', 1), ('images', 1), ('threads', 1)):
        value = getattr(options, name)
        if value < minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")
    try:
        build_hetnet_config(options.config, options.image_size)
    except ValueError as error:
        raise ValueError(f'invalid --image-size {options.image_size}: {error}') from error
    if options.timeout_s <= 0:
        raise ValueError(f'--timeout-s must be positive, got {options.timeout_s}')
    if not options.images_dir.is_dir():
        raise ValueError(f'--images-dir {options.images_dir} is not a folder; pass a folder of '
                         'test images or set HETNET_DATA')


def build_parser() -> argparse.ArgumentParser:
    """Build the `hetnet-bench` argument parser."""
    parser = argparse.ArgumentParser(
        prog='hetnet-bench',
        description=(
            'Measure HetNet latency (batch 1, p50/p95), throughput (batch N), peak memory and '
            'anomaly-map difference to fp32 PyTorch per runtime, next to anomalib Reverse '
            'Distillation in the same run. Prints one JSON line per configuration.'))
    parser.add_argument('--config', choices=CONFIGS, default='full',
                        help="model: 'full' (WideResNet50-2 + Swin-T, random weights; default), "
                             "'offline' (EfficientNet-Lite0 + Swin-T) or 'tiny' (ResNet-18 + Swin-T)")
    parser.add_argument('--image-size', type=int, default=256, help='input side in pixels (default 256)')
    parser.add_argument('--runtimes', default='all',
                        help=f"comma-separated runtimes, or 'all' (default): "
                             f"{', '.join(HETNET_RUNTIMES + PEER_RUNTIMES)}")
    parser.add_argument('--no-peer', action='store_true', help='leave out the anomalib peer')
    parser.add_argument('--threads', type=int, default=2,
                        help='CPU threads per runtime (torch, ONNX Runtime intra-op, OpenVINO; default 2)')
    parser.add_argument('--warmup', type=int, default=3, help='batch-1 warm-up calls (default 3)')
    parser.add_argument('--iterations', type=int, default=20, help='timed batch-1 calls (default 20)')
    parser.add_argument('--batch', type=int, default=4, help='batch size N for throughput (default 4)')
    parser.add_argument('--throughput-iterations', type=int, default=3,
                        help='timed batch-N calls (default 3)')
    parser.add_argument('--images', type=int, default=4,
                        help='real images for the map comparison (default 4)')
    parser.add_argument('--images-dir', type=pathlib.Path, default=DEFAULT_DATA,
                        help=f'folder of real test images (default {DEFAULT_DATA})')
    parser.add_argument('--timeout-s', type=float, default=1800,
                        help='limit per runtime in seconds, compilation included (default 1800)')
    parser.add_argument('--profile-output', type=pathlib.Path, default=None,
                        help='write a torch.profiler table of torch-eager-fp32 at batch 1 here')
    parser.add_argument('--output', type=pathlib.Path, default=None, help='JSONL file to write')
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--work-dir', default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `hetnet-bench`; return the exit status."""
    options = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s', stream=sys.stderr)
    if options.worker:
        print(json.dumps(dataclasses.asdict(measure(options.worker, options))), flush=True)
        return EXIT_OK

    try:
        check_options(options)
        runtimes = parse_runtimes(options.runtimes, not options.no_peer)
    except ValueError as error:
        print(f'hetnet-bench: {error}', file=sys.stderr)
        return 2
    try:
        results = run_benchmark(options, runtimes)
    except (FileNotFoundError, OSError, ValueError) as error:
        print(f'hetnet-bench: failed: {error}', file=sys.stderr)
        return EXIT_FAILED

    lines = [json.dumps(dataclasses.asdict(result)) for result in results]
    for line in lines:
        print(line, flush=True)
    if options.output:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
