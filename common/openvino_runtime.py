"""OpenVINO as the CPU runtime of the fast path (``fast_cpu_runtime: "openvino"`` in a bundle's ``inference.json``).

OpenVINO is the field's CPU inference runtime. In a first probe (one window or batch per network, random weights,
2 cores shared with other jobs) it ran COHRA-UNet 2.5x and SegResNet about 1.7x faster than the PyTorch fast path in
bf16 (AVX-512 BF16 + AMX), and in float32 with the kernels restricted to AVX2 COHRA-UNet 1.3x and FCT 2x faster
but SegResNet 15 % slower. Until ``make bench`` has measured it per bundle, whole cases and agreement on trained
weights included, it is a setting, not the default.

:class:`OpenVINONetwork` stands in for the torch network inside :class:`common.fast_inference.FastInferer`: the
sliding window, blending and postprocessing stay MONAI's. Per input shape (a window, a batch of slices) it converts
the network once (``openvino.convert_model`` traces it with that input; minutes for COHRA-UNet at 128^3), fixes the
shape (8-15 % faster than the dynamic one), and compiles it for the CPU in bf16 where oneDNN runs bf16 natively
(:func:`common.cpu.native_bf16`), else in float32. Converted models are kept on disk, keyed by the network's class,
its weights, the shape, the precision and the library versions, so that only the first run on a machine pays for
the conversion: ``$ZOO_OPENVINO_CACHE``, else ``$XDG_CACHE_HOME/monai_zoo/openvino`` (``~/.cache/...``).

OpenVINO runs its own thread pool, which does not survive ``fork``: a process that forks after OpenVINO ran (e.g.
``DataLoader`` workers started later) can crash. A bundle run forks its loader workers before the first window.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from common.cpu import native_bf16
from common.settings import SettingError

__all__ = ["OpenVINONetwork", "OpenVINOUnavailableError", "default_cache_dir", "weights_digest"]

PINNED = "openvino==2026.4.1"


class OpenVINOUnavailableError(SettingError):
    """``fast_cpu_runtime`` asks for OpenVINO where it is not installed, or OpenVINO cannot convert the network; a
    bundle run ends with its message as the ``error:`` line (:mod:`common.errors`)."""


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise OpenVINOUnavailableError(
            f"fast_cpu_runtime: 'openvino' needs the openvino package ({PINNED}, in requirements.txt: "
            f"pip install {PINNED}); or set fast_cpu_runtime to 'torch'"
        ) from e
    return openvino


def default_cache_dir() -> Path:
    """Where converted models are kept: ``$ZOO_OPENVINO_CACHE``, else the user's cache folder."""
    if os.environ.get("ZOO_OPENVINO_CACHE"):
        return Path(os.environ["ZOO_OPENVINO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "monai_zoo" / "openvino"


def weights_digest(network: torch.nn.Module) -> str:
    """A digest of ``network``'s class and weights (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256(f"{type(network).__module__}.{type(network).__qualname__}".encode())
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class OpenVINONetwork:
    """``network`` run by OpenVINO on the CPU: called like the network on a float32 tensor ``(B, C, *spatial)``,
    returns its single output as a float32 tensor.

    Args:
        network: a torch module with one tensor output (in eval mode; its current weights are converted).
        bf16: compile in bf16 where the CPU runs it natively (else float32 everywhere).
        cache_dir: folder of converted models (default :func:`default_cache_dir`).
        digest: :func:`weights_digest` of ``network`` when the caller has it already.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        bf16: bool = True,
        cache_dir: str | os.PathLike | None = None,
        digest: str | None = None,
    ) -> None:
        self.ov = _openvino()
        self.network = network
        self.precision = "bf16" if bf16 and native_bf16() else "f32"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._digest = digest
        self._compiled: dict[tuple[int, ...], Any] = {}
        self.conversions = 0  # conversions this object did (the rest came from the disk cache)

    def model_dir(self, shape: tuple[int, ...]) -> Path:
        """The cache folder of the converted model for input ``shape``."""
        if self._digest is None:
            self._digest = weights_digest(self.network)
        key = "|".join([self._digest, str(shape), self.precision, self.ov.__version__, torch.__version__])
        return self.cache_dir / hashlib.sha256(key.encode()).hexdigest()[:24]

    def _convert(self, x: torch.Tensor, folder: Path) -> None:
        """Convert for ``x``'s shape and save into ``folder`` whole (a temporary folder renamed into place)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            with torch.no_grad():  # a static input shape: 8-15 % faster, and Swin UNETR's shape arithmetic folds away
                model = self.ov.convert_model(self.network, example_input=x, input=[tuple(x.shape)])
        except Exception as e:  # the converter's own errors are many and long
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise OpenVINOUnavailableError(
                f"fast_cpu_runtime: OpenVINO could not convert {type(self.network).__name__} for input shape "
                f"{list(x.shape)} ({first}); set fast_cpu_runtime to 'torch'"
            ) from e
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=self.cache_dir))
        try:
            self.ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "model.xml").is_file():  # not another process that won the race
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.conversions += 1

    def _compile(self, x: torch.Tensor) -> Any:
        folder = self.model_dir(tuple(x.shape))
        if not (folder / "model.xml").is_file():
            self._convert(x, folder)
        config = {"INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        return self.ov.Core().compile_model(str(folder / "model.xml"), "CPU", config)

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs:
            raise TypeError("OpenVINONetwork: the network is called with its input tensor only")
        x = x.as_tensor() if hasattr(x, "as_tensor") else x  # a MetaTensor window: plain data for tracing
        shape = tuple(x.shape)
        if shape not in self._compiled:
            self._compiled[shape] = self._compile(x.float())
        result = self._compiled[shape](x.detach().float().contiguous().numpy())
        return torch.from_numpy(result[0].copy())
