"""How much arithmetic a training step does and how much the device could do: FLOPs counted by torch's
``FlopCounterMode``, and the dense peak of the precision that ran, from NVIDIA's datasheets for the GPUs in
``PEAKS`` and measured by a large matrix product everywhere else (the CPU's only peak). ``measure`` divides one by
the other into each line's model FLOPs utilisation (MFU)."""

import functools
import time
from typing import Callable, Optional, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense peak TFLOP/s per precision. The datasheets give the tensor-core figures "with sparsity" (2:4 structured),
# twice the dense ones, which are halved here; FP32 is the CUDA cores' (no sparsity).
#   H100 SXM and H100 PCIe: NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100): FP32 67 / 51,
#       TF32 989* / 756*, BF16 and FP16 1,979* / 1,513* (* with sparsity).
#   H200 (SXM): NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200): FP32 67, TF32 989*,
#       BF16 and FP16 1,979*.
#   A100 (40 and 80 GB, SXM4 and PCIe alike): NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100):
#       FP32 19.5, TF32 156 (312*), BF16 and FP16 312 (624*).
PEAKS = {
    "H100 SXM": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5},
    "H200": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
}
# torch.cuda.get_device_name() -> PEAKS' part, the first match wins. The SXM H100 names itself by its memory
# ("NVIDIA H100 80GB HBM3"); the NVL parts (other clocks and power) are not in the table, so they are measured.
PARTS = (("H100 PCIe", "H100 PCIe"), ("H100 NVL", None), ("H100", "H100 SXM"), ("H200 NVL", None),
         ("H200", "H200"), ("A100", "A100"))
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# the side of the matrices whose product measures the peak: near the peak on each device, small with --quick
MATMUL_SIZE = {"cpu": 4096, "cuda": 8192, "quick": 1024}


def count_flops(step: Callable[[], object]) -> int:
    """The FLOPs ``step()`` runs in this thread as ``FlopCounterMode`` counts them: matrix products and
    convolutions, forward and backward (elementwise work is not counted, as in the usual model-FLOPs count)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def part_of(device_name: str) -> Optional[str]:
    """The ``PEAKS`` part of a GPU named ``device_name`` (``torch.cuda.get_device_name``), or None."""
    return next((part for pattern, part in PARTS if pattern in device_name), None)


def table_peak(device_name: str, precision: str) -> Optional[Tuple[float, str]]:
    """``(dense peak TFLOP/s, its source)`` of ``precision`` (fp32, tf32, bf16, fp16) on a GPU named
    ``device_name``, e.g. ``(989.5, "table: H100 SXM bf16")``; None for a GPU the table does not hold."""
    part = part_of(device_name)
    return None if part is None else (PEAKS[part][precision], f"table: {part} {precision}")


def precision_of(precision: str, device: torch.device) -> str:
    """The precision a step of ``hardware.precision`` ``precision`` ran its products in: fp32 on CUDA is tf32 where
    cuDNN runs fp32 convolutions, most of these networks' FLOPs, on the TF32 tensor cores (torch's default)."""
    if precision == "fp32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return precision


def matmul_tflops(device: torch.device, precision: str, size: int, clock=time.perf_counter, reps: int = 5) -> float:
    """TFLOP/s of the fastest of ``reps`` products of two ``size`` x ``size`` matrices in ``precision`` on ``device``
    (on the CPU with torch's current intra-op threads), timed with ``clock`` after one untimed product."""
    a, b = (torch.randn(size, size, device=device, dtype=DTYPES[precision]) for _ in range(2))
    matmul_precision = torch.get_float32_matmul_precision()
    # fp32 products run on the TF32 tensor cores where the line's precision is tf32
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        seconds = []
        for _ in range(reps + 1):
            synchronize(device)
            start = clock()
            a @ b
            synchronize(device)
            seconds.append(clock() - start)
    finally:
        torch.set_float32_matmul_precision(matmul_precision)
    return 2 * size ** 3 / min(seconds[1:]) / 1e12


@functools.cache
def measured_peak(device: torch.device, precision: str, cores: int, size: int, clock) -> float:
    """``matmul_tflops``, once per process for each precision and core count (the CPU's intra-op threads)."""
    if device.type == "cpu":
        torch.set_num_threads(cores)
    return matmul_tflops(device, precision, size, clock)


def peak(device: torch.device, precision: str, cores: int, size: int, clock) -> tuple:
    """``(peak TFLOP/s, its source, the measured matmul TFLOP/s)`` of ``precision`` on ``device`` for a line on
    ``cores`` CPU cores: the datasheet's for a GPU ``PEAKS`` holds, else a ``size`` x ``size`` matrix product's in
    the line's ``clock``."""
    if device.type == "cuda":
        measured = measured_peak(device, precision, 1, size, clock)  # the CPU's threads play no part
        listed = table_peak(torch.cuda.get_device_name(device), precision)
        return (*(listed or (measured, f"measured: {size}x{size} {precision} matmul")), measured)
    measured = measured_peak(device, precision, cores, size, clock)
    return measured, f"measured: {size}x{size} {precision} matmul, {cores} core{'s' if cores > 1 else ''}", measured


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
