"""A fast CPU inference path for every bundle: one inferer wrapper, switched by ``fast_cpu`` in ``inference.json``.

:class:`FastInferer` wraps the inferer a bundle already uses (``SlidingWindowInferer``, ``SimpleInferer``,
``SliceInferer``) and changes only how each forward pass runs, never what is computed (same windows, same
overlap and blending, same network and weights):

* **bf16 autocast** (``torch.autocast(device_type=<the input's device>, dtype=torch.bfloat16)``): convolutions and
  matrix multiplies run in bfloat16 through oneDNN, which on a CPU with AVX-512 BF16 doubles the multiply-add
  throughput; normalisations and reductions stay in float32 (autocast's own op lists). The largest single gain:
  on the 2-core AVX-512 BF16 machine of issue 8, MONAI SegResNet over a full BraTS case went from 34.7 s (fp32
  eager) to 17.4 s; one 128^3 SegResNet window here went from ~12-18 s to ~11-14 s under heavy shared load.
  Used only where the device supports bf16 (on CUDA: compute capability 8+), otherwise the pass stays in float32.
* **channels-last memory format** (``torch.channels_last`` / ``torch.channels_last_3d`` for each window): oneDNN's
  bf16 convolutions are written for channels-last; with contiguous inputs every convolution pays a reorder there
  and back. On top of bf16 it bought another ~1.4x (17.4 s -> 12.1 s above; ~7-9 s per window here). The window
  is converted, not the network's parameters: the input's format is what selects oneDNN's channels-last kernels,
  and leaving the module untouched keeps ``network_def`` exportable (TorchScript, ONNX) and its checkpoints unchanged.
* **inference mode** (``torch.inference_mode``): no autograd bookkeeping (version counters, views); not measured
  separately, expected to be small next to 3D convolutions. The result is cloned once on the way out so
  postprocessing (``Invertd``, in-place transforms) may modify it outside inference mode.
* **freed memory kept for reuse** (:func:`common.allocator.retain_freed_memory`, CPU only): glibc would otherwise
  unmap every large activation on free and page-fault it in again for the next window; keeping it roughly halved
  one bf16 128^3 COHRA-UNet window here (~5.2 s -> ~3.6 s). Process-wide and permanent: the process keeps its peak
  memory. ``retain_memory=False`` leaves the allocator alone.
* **float32 outputs**: each window's logits are cast back to float32 before ``SlidingWindowInferer`` blends them,
  so the Gaussian-weighted sum (up to 8 overlapping windows per voxel at overlap 0.5) and the thresholds/argmax of
  postprocessing see full precision; only the network's internals are bf16.

Not used (not yet measured here; candidates for a later ``make bench`` ablation): larger sliding-window batches
(one 128^3 window is already a large GEMM workload for 2 cores), thread settings beyond torch's default of one
intra-op thread per core, ``torch.compile`` (needs a C++ toolchain and compiles per input shape, which one CPU
case may not amortise) and ONNX Runtime (an fp32 path on CPU for 3D convolutions).

Agreement: ``make bench`` compares the label maps of this path and the fp32 eager path on phantom-trained weights
(Dice per bundle in the benchmark table); ``tests/test_bench.py`` checks each bundle's inference config on a tiny
input.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

from common.allocator import retain_freed_memory

__all__ = ["FastInferer", "bf16_supported", "channels_last_format"]


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 autocast is worth using on ``device``: native bf16 on CUDA, AVX-512 BF16 / AMX on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # oneDNN emulates bf16 on older CPUs, slower than float32; only use it where the hardware does it natively
        if not torch.backends.mkldnn.is_available():
            return False
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def channels_last_format(ndim: int) -> torch.memory_format | None:
    """The channels-last memory format for a batched tensor of ``ndim`` dimensions (4: 2D images, 5: 3D volumes)."""
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)


class _FastForward:
    """Calls ``network`` on a channels-last copy of each input and returns float32 outputs (see module docstring)."""

    def __init__(self, network: Callable[..., Any], channels_last: bool) -> None:
        self.network = network
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        memory_format = channels_last_format(x.dim()) if self.channels_last else None
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        return _to_float32(self.network(x, *args, **kwargs))


def _to_float32(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float().contiguous() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float32(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float32(v) for k, v in out.items()}
    return out


def _outside_inference_mode(out: Any) -> Any:
    """Normal tensors again: inference tensors cannot be modified in place once inference mode is left."""
    if isinstance(out, torch.Tensor):
        return out.clone() if out.is_inference() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_outside_inference_mode(o) for o in out)
    if isinstance(out, dict):
        return {k: _outside_inference_mode(v) for k, v in out.items()}
    return out


class FastInferer(Inferer):
    """Run ``inferer`` with bf16 autocast, channels-last windows, inference mode and reused memory; a no-op when
    not ``enabled``.

    Args:
        inferer: the bundle's inferer, called as ``inferer(inputs, network, *args, **kwargs)``.
        enabled: the bundle's ``fast_cpu`` switch; ``False`` runs ``inferer`` exactly as without the wrapper.
        bf16: use bfloat16 autocast where :func:`bf16_supported` says the input's device does it natively.
        channels_last: give the network channels-last inputs (4D and 5D batches; others pass unchanged).
        inference_mode: run under ``torch.inference_mode`` (else ``torch.no_grad``).
        retain_memory: on CPU, call :func:`common.allocator.retain_freed_memory` before the first pass.
        cpu_sw_batch_size: on CPU, the windows a sliding-window inferer (``SlidingWindowInferer``, ``SliceInferer``)
            passes at once, in place of its own ``sw_batch_size``; ``None`` keeps the inferer's. For 3D windows 1
            is fastest on CPU (Swin UNETR 96^3: ~1.7 s a window one at a time, ~3.4-4.3 s each four at a time,
            issue 8); 2D slices gain from batches (RefNet: 16 at a time 6.6 s, one at a time 7.3 s a volume).

    ``inputs`` is a batch ``(B, C, *spatial)`` on any device; the autocast device type is taken from it, so the
    same config runs on CUDA (bf16 there too on Ampere and newer) and on CPU. Outputs are float32 and are not
    inference tensors.
    """

    def __init__(
        self,
        inferer: Inferer,
        enabled: bool = True,
        bf16: bool = True,
        channels_last: bool = True,
        inference_mode: bool = True,
        retain_memory: bool = True,
        cpu_sw_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if not callable(inferer):
            raise TypeError(f"FastInferer: inferer must be a callable Inferer, got {type(inferer).__name__}.")
        self.inferer = inferer
        self.enabled = bool(enabled)
        self.bf16 = bool(bf16)
        self.channels_last = bool(channels_last)
        self.inference_mode = bool(inference_mode)
        self.retain_memory = bool(retain_memory)
        if cpu_sw_batch_size is not None and int(cpu_sw_batch_size) < 1:
            raise ValueError(f"FastInferer: cpu_sw_batch_size must be >= 1 or None, got {cpu_sw_batch_size}.")
        self.cpu_sw_batch_size = None if cpu_sw_batch_size is None else int(cpu_sw_batch_size)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return self.inferer(inputs, network, *args, **kwargs)
        device = inputs.device if isinstance(inputs, torch.Tensor) else torch.device("cpu")
        use_bf16 = self.bf16 and bf16_supported(device)
        inferer = self.inferer
        if device.type == "cpu":
            if self.retain_memory:
                retain_freed_memory()
            if self.cpu_sw_batch_size is not None and hasattr(inferer, "sw_batch_size"):
                inferer = copy.copy(inferer)  # the bundle's inferer itself keeps its setting (GPU runs, repr)
                inferer.sw_batch_size = self.cpu_sw_batch_size
        grad_off = torch.inference_mode() if self.inference_mode else torch.no_grad()
        forward = _FastForward(network, self.channels_last)
        with grad_off, torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = inferer(inputs, forward, *args, **kwargs)
        return _outside_inference_mode(out)

    def __repr__(self) -> str:
        return (
            f"FastInferer({self.inferer!r}, enabled={self.enabled}, bf16={self.bf16}, "
            f"channels_last={self.channels_last}, inference_mode={self.inference_mode}, "
            f"retain_memory={self.retain_memory}, cpu_sw_batch_size={self.cpu_sw_batch_size})"
        )
