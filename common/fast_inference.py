"""A fast CPU inference path for every bundle: one inferer wrapper, switched by ``fast_cpu`` in ``inference.json``.

:class:`FastInferer` wraps the inferer a bundle already uses (``SlidingWindowInferer``, ``SimpleInferer``,
``SliceInferer``) and changes only how each forward pass runs, never what is computed (same windows, same
overlap and blending, same network and weights):

* **bf16 autocast** (``torch.autocast(device_type=<the input's device>, dtype=torch.bfloat16)``): convolutions and
  matrix multiplies run in bfloat16 through oneDNN, which on a CPU with AVX-512 BF16 has about 4.5x the fp32
  matrix-multiply throughput (``make bench`` measures both peaks on the machine it runs on).
  Used only where the device supports bf16 natively (on CUDA: compute capability 8+); ``bf16=False`` keeps the
  pass in float32 (``refnet_synapse`` does, see its README).
* **channels-last windows** (``torch.channels_last`` / ``torch.channels_last_3d``): oneDNN's bf16 convolutions are
  written for channels-last; with contiguous inputs every convolution pays a reorder there and back. The window is
  converted, not the network: the input's format selects the kernels, and leaving the module untouched keeps
  ``network_def`` exportable (TorchScript, ONNX) and its checkpoints unchanged. (Converting the weights as well
  made no measurable difference once freed memory is kept.)
* **freed memory kept** (:func:`common.allocator.retain_freed_memory`, CPU only): glibc would unmap every large
  activation on free and page-fault it in again for the next window. This alone halves an fp32 sliding window
  (the allocator ablation of ``make bench-full``) and it is
  on in every bundle's training too. Process-wide and permanent: the process keeps its peak memory.
  ``retain_memory=False`` opts out.
* **inference mode** (``torch.inference_mode``): no autograd bookkeeping. The result is cloned once on the way out
  so postprocessing (``Invertd``, in-place transforms) may modify it outside inference mode.
* **sliding-window batch on CPU** (``cpu_sw_batch_size``, off unless set): 3D windows run fastest one at a time on
  two cores; ``refnet_synapse`` sets 1 for its Swin UNETR windows (its config keeps 4 for GPUs).
* **float32 outputs**: each window's logits are cast back to float32 before the sliding window blends them, so the
  Gaussian-weighted sum and the thresholds/argmax of postprocessing see full precision.

With ``runtime="openvino"`` (``fast_cpu_runtime`` in ``inference.json``; the default of ``cohra_unet_brats`` and
``mtcm_kd_t1ce_student``) OpenVINO runs the network on CPU instead of the passes above
(:mod:`common.openvino_runtime`); the windows, blending and postprocessing stay. Where OpenVINO is not installed,
cannot convert the network or cannot write its cache, a ``warning:`` line says why and the passes above run it: a
default must not stop a run that PyTorch can do. ``runtime="auto"`` (the default of ``fct_visible_korean``) takes
OpenVINO only where bf16 is native, the one kind of CPU on which it beats the passes above for that network
(:func:`chosen_runtime`).

With ``progress`` (independent of ``enabled``) it shows a bar over the windows of a sliding window, cleared after
each pass; :mod:`common.progress` decides where bars are shown. MONAI's own ``SlidingWindowInferer(progress=True)`` is
not used for it: its bar counts window batches, stays on screen after every pass (one line per case and per TTA
mirroring) and does not know the zoo's quiet rules.

What it buys, with the label maps of both paths compared on phantom-trained weights, is in ``make bench``
(``bench/inference.py``) and in each bundle README's Performance section. Not used: ``torch.compile`` (needs a
C++ toolchain and recompiles per input shape) and ONNX Runtime (an fp32 path for 3D convolutions on CPU), and more
threads than cores. ``tests/zoo/test_bench.py`` checks each bundle's inference config on a tiny input.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.utils import ensure_tuple_rep, fall_back_tuple

from common.allocator import retain_freed_memory
from common.cpu import native_bf16
from common.openvino_runtime import OpenVINONetwork, OpenVINOUnavailableError, weights_digest
from common.progress import progress_bar, progress_enabled
from common.settings import SettingError

__all__ = [
    "RUNTIMES",
    "FastInferer",
    "bf16_supported",
    "channels_last_format",
    "chosen_runtime",
    "sliding_window_count",
]

#: The runtimes of the fast path: PyTorch itself, OpenVINO on CPU (:mod:`common.openvino_runtime`), or ``"auto"``,
#: the one the CPU's kind favours (:func:`chosen_runtime`).
RUNTIMES = ("torch", "openvino", "auto")


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 autocast is worth using on ``device``: native bf16 on CUDA, AVX-512 BF16 / AMX on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return native_bf16()  # oneDNN emulates bf16 on AVX2-only CPUs, far slower than float32 (common.cpu)
    return False


def chosen_runtime(runtime: str) -> str:
    """The runtime that ``runtime`` names here: ``"auto"`` is OpenVINO where bf16 is native (AVX-512 BF16, AMX) and
    PyTorch elsewhere. Measured for FCT on trained weights (README, Performance): OpenVINO's bf16 pass is 2.0x fp32
    eager against PyTorch's 1.24x, but in float32 (an AVX2-only CPU) OpenVINO is slower than PyTorch's passes."""
    if runtime not in RUNTIMES:
        raise SettingError(f"fast_cpu_runtime: expected one of {list(RUNTIMES)}, got {runtime!r}")
    if runtime == "auto":
        return "openvino" if native_bf16() else "torch"
    return runtime


def channels_last_format(ndim: int) -> torch.memory_format | None:
    """The channels-last memory format for a batched tensor of ``ndim`` dimensions (4: 2D images, 5: 3D volumes)."""
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)


def sliding_window_count(inferer: SlidingWindowInferer, inputs: torch.Tensor) -> int:
    """The number of windows ``inferer`` passes through the network for the batch ``inputs`` ``(B, C, *spatial)``:
    MONAI's own window grid (``dense_patch_slices`` with the inferer's overlap), times the batch size."""
    from monai.inferers.utils import _get_scan_interval  # the interval MONAI's sliding window uses

    spatial = tuple(inputs.shape[2:])
    if isinstance(inferer, SliceInferer):  # a 2D window per slice along spatial_dim
        roi = list(ensure_tuple_rep(inferer.orig_roi_size, 2))
        roi.insert(inferer.spatial_dim, 1)
    else:
        roi = inferer.roi_size
    roi = fall_back_tuple(roi, spatial)
    image_size = tuple(max(s, r) for s, r in zip(spatial, roi, strict=True))
    overlap = ensure_tuple_rep(inferer.overlap, len(spatial))
    scan_interval = _get_scan_interval(image_size, roi, len(spatial), overlap)
    return len(dense_patch_slices(image_size, roi, scan_interval)) * int(inputs.shape[0])


class _CountWindows:
    """Calls ``network`` and advances ``bar`` by the windows of each call (the first dimension of its input)."""

    def __init__(self, network: Callable[..., Any], bar: Any) -> None:
        self.network = network
        self.bar = bar

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = self.network(x, *args, **kwargs)
        self.bar.update(int(x.shape[0]))
        return out


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


def _runs_on_openvino(network: Any) -> bool:
    """Whether ``network`` is an OpenVINO stand-in, or a wrapper that calls one as its ``.network`` (the window
    counter, a benchmark's own)."""
    while not isinstance(network, (OpenVINONetwork, torch.nn.Module)) and hasattr(network, "network"):
        network = network.network
    return isinstance(network, OpenVINONetwork)


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
            is fastest on CPU (a Swin UNETR 96^3 window takes about twice as long each when four run at once);
            2D slices gain a little from batches (RefNet: 16 at a time about 10 % faster a volume).
        progress: show a bar over the windows when ``inferer`` is a ``SlidingWindowInferer`` (``SliceInferer``
            included), cleared after each pass; shown only where :func:`common.progress.progress_enabled` allows.
        runtime: ``"torch"`` (the passes above) or ``"openvino"``: on CPU inputs, a torch module is run by OpenVINO
            (:class:`common.openvino_runtime.OpenVINONetwork`, bf16 under the same rule, converted models cached
            on disk; where OpenVINO is missing or cannot convert it, one warning and the torch passes); inputs on
            a GPU keep the torch passes. ``"auto"``: whichever of the two :func:`chosen_runtime` picks for this CPU.
        openvino_cache_dir: where ``"openvino"`` keeps converted models (default
            :func:`common.openvino_runtime.default_cache_dir`).

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
        progress: bool = False,
        runtime: str = "torch",
        openvino_cache_dir: str | None = None,
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
        self.progress = bool(progress)
        self.runtime = chosen_runtime(runtime)  # "torch" or "openvino"
        self.openvino_cache_dir = openvino_cache_dir
        self._openvino: dict[tuple[int, str], Any] = {}  # (id of the network, digest of its weights) -> runtime
        self._torch_only: set[int] = set()  # ids of the networks OpenVINO failed on: PyTorch runs them from then on

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return self._run_counted(inputs, self.runtime_network(inputs, network), *args, **kwargs)
        except OpenVINOUnavailableError as e:
            # OpenVINO is missing or cannot convert this network: the PyTorch passes run it, now and from then on
            self._torch_only.add(id(network))
            name = type(network).__name__
            print(f"warning: {e}; running {name} on PyTorch instead (fast_cpu_runtime torch: without trying OpenVINO)",
                  file=sys.stderr)  # fmt: skip
            return self._run_counted(inputs, network, *args, **kwargs)

    def _run_counted(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._window_bar(inputs) as bar:
            if not bar.disable:
                network = _CountWindows(network, bar)
            return self._run(inputs, network, *args, **kwargs)

    def _window_bar(self, inputs: Any) -> Any:
        shown = (
            self.progress
            and isinstance(self.inferer, SlidingWindowInferer)
            and isinstance(inputs, torch.Tensor)
            and progress_enabled()
        )
        total = sliding_window_count(self.inferer, inputs) if shown else None
        return progress_bar(total=total, desc="windows", unit="window", enabled=shown)

    def runtime_network(self, inputs: Any, network: Callable[..., Any]) -> Callable[..., Any]:
        """``network`` as the runtime runs it on ``inputs``: the module itself, or its OpenVINO stand-in on CPU inputs
        (one per network and weights: a checkpoint loaded into the same module later gets its own)."""
        on_cpu = not isinstance(inputs, torch.Tensor) or inputs.device.type == "cpu"
        if not (self.enabled and self.runtime == "openvino" and on_cpu and isinstance(network, torch.nn.Module)):
            return network
        if id(network) in self._torch_only:
            return network
        key = (id(network), weights_digest(network))
        if key not in self._openvino:
            self._openvino = {k: v for k, v in self._openvino.items() if k[0] != id(network)}  # stale weights
            self._openvino[key] = OpenVINONetwork(network, self.bf16, self.openvino_cache_dir, digest=key[1])
        return self._openvino[key]

    def _run(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
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
        if _runs_on_openvino(network):  # its own precision and memory layout
            with grad_off:
                out = inferer(inputs, network, *args, **kwargs)
            return _outside_inference_mode(out)
        forward = _FastForward(network, self.channels_last)
        with grad_off, torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = inferer(inputs, forward, *args, **kwargs)
        return _outside_inference_mode(out)

    def __repr__(self) -> str:
        return (
            f"FastInferer({self.inferer!r}, enabled={self.enabled}, bf16={self.bf16}, "
            f"channels_last={self.channels_last}, inference_mode={self.inference_mode}, "
            f"retain_memory={self.retain_memory}, cpu_sw_batch_size={self.cpu_sw_batch_size}, "
            f"progress={self.progress}, runtime={self.runtime!r})"
        )
