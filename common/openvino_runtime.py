"""OpenVINO as the CPU runtime of the fast path (``fast_cpu_runtime: "openvino"`` in a bundle's ``inference.json``).

OpenVINO is the field's CPU inference runtime. On whole BraTS phantom cases it ran COHRA-UNet and the MTCM-KD
student 1.4-2.7x faster than the PyTorch fast path on an Intel Xeon with AMX, 1.2x on an AMD EPYC with AVX-512 BF16
and 1.2x on the emulated AVX2 path, its label maps agreeing with the model zoo's fp32 eager ones at Dice >= 0.996 on
phantom-trained weights (the repository README, Performance), so those two bundles run on it by default.
``fct_visible_korean`` runs on it where bf16 is native (``fast_cpu_runtime: "auto"``: 2.0x fp32 eager on trained
weights there, slower than PyTorch in float32); the RefNet cascade keeps PyTorch.

:class:`OpenVINONetwork` stands in for the torch network inside :class:`common.fast_inference.FastInferer`: the
sliding window, blending and postprocessing stay MONAI's. It converts the network once with dynamic batch and
spatial sizes, traced on a small input (half the first input's size: seconds, where a trace at a 128^3 window took
COHRA-UNet minutes), then per input shape (a window, a batch of slices) fixes that shape on the converted model
(8-15 % faster than running it dynamic) and compiles it for the CPU in bf16 where oneDNN runs bf16 natively
(:func:`common.cpu.native_bf16`), else in float32.

A trace records one path through the network's Python: a branch taken on the small input (COHRA-UNet interpolates
its positional embedding there, since that grid differs from its training grid) is the branch the converted model
takes at every size. So the first time a shape is used, the model fixed to it is compiled in float32 and checked
against the PyTorch network on that input (largest difference at most ``DYNAMIC_TOLERANCE`` of the largest logit);
a shape that fails the check, or a network that cannot be traced at the smaller size (Swin UNETR needs multiples
of 32; remembered in the cache), is converted for that exact shape instead, a static trace that folds the shape
arithmetic into constants. Converted models and each shape's check are kept on disk, keyed by
the network's class, its weights, the shape, the precision and the library versions, so that only the first run on
a machine pays for them: ``$ZOO_OPENVINO_CACHE``, else ``$XDG_CACHE_HOME/monai_zoo/openvino`` (``~/.cache/...``).

OpenVINO runs its own thread pool, which does not survive ``fork``: a process that forks after OpenVINO ran (e.g.
``DataLoader`` workers started later) can crash. A bundle run forks its loader workers before the first window.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from common.cpu import native_bf16
from common.io import atomic_write_json
from common.settings import SettingError

__all__ = ["OpenVINOCacheError", "OpenVINONetwork", "OpenVINOUnavailableError", "default_cache_dir", "weights_digest"]

PINNED = "openvino==2026.4.1"
#: Largest difference, relative to the largest logit, between a dynamically converted model fixed to a shape (float32)
#: and the PyTorch network on the first input of that shape; above it, that shape is converted on its own.
DYNAMIC_TOLERANCE = 1e-3


class OpenVINOUnavailableError(SettingError):
    """``fast_cpu_runtime`` asks for OpenVINO where it is not installed, OpenVINO cannot convert the network, or its
    cache cannot be written. :class:`common.fast_inference.FastInferer` then prints it as a warning and runs the
    network on PyTorch."""


class OpenVINOCacheError(OpenVINOUnavailableError):
    """The converted model could not be written into the cache (a full disk, a read-only folder)."""


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise OpenVINOUnavailableError(
            f"fast_cpu_runtime: 'openvino' needs the openvino package ({PINNED}, in requirements.txt: "
            f"pip install {PINNED})"
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

    def _cache_key(self, *parts: Any) -> Path:
        if self._digest is None:
            self._digest = weights_digest(self.network)
        key = "|".join([self._digest, *map(str, parts), self.ov.__version__, torch.__version__])
        return self.cache_dir / hashlib.sha256(key.encode()).hexdigest()[:24]

    def model_dir(self, shape: tuple[int, ...]) -> Path:
        """The cache folder of the model converted for exactly input ``shape``."""
        return self._cache_key(shape, self.precision)

    def dynamic_model_dir(self, channels: int, spatial_dims: int) -> Path:
        """The cache folder of the model converted with dynamic batch and spatial sizes."""
        return self._cache_key("dynamic", channels, spatial_dims)

    @contextlib.contextmanager
    def _writing_cache(self) -> Iterator[None]:
        """A write into the cache that fails (a full disk, a read-only home) is the runtime unavailable, not the run
        failed: OpenVINO's own writer raises ``RuntimeError`` ("iostream error") where Python raises ``OSError``."""
        try:
            yield
        except (OSError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise OpenVINOCacheError(
                f"fast_cpu_runtime: OpenVINO could not write its converted model into {self.cache_dir} ({first}); "
                "ZOO_OPENVINO_CACHE names another folder"
            ) from e

    def _convert(self, example: torch.Tensor, folder: Path, input_shape: tuple[int, ...]) -> None:
        """Trace the network on ``example``, convert it with ``input_shape`` (-1: dynamic) and save it into
        ``folder`` whole (a temporary folder renamed into place)."""
        try:
            # the tracer warns of every Python branch on a tensor. The dynamic model is checked against PyTorch at
            # each shape before use and a static one is traced at the shape it runs, so the warnings only alarm users
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                model = self.ov.convert_model(self.network, example_input=example, input=[input_shape])
        except Exception as e:  # the converter's own errors are many and long
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise OpenVINOUnavailableError(
                f"fast_cpu_runtime: OpenVINO could not convert {type(self.network).__name__} for input shape "
                f"{list(input_shape)} ({first})"
            ) from e
        with self._writing_cache():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=self.cache_dir))
            try:
                self.ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
                try:
                    os.replace(tmp, folder)
                except OSError:
                    if not (folder / "model.xml").is_file():  # not another process that won the race
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        self.conversions += 1

    def _dynamic_model(self, x: torch.Tensor) -> Any | None:
        """The dynamically converted model fixed to ``x``'s shape, or ``None`` where it cannot be converted or
        differs from the PyTorch network on ``x`` (see the module's docstring)."""
        folder = self.dynamic_model_dir(x.shape[1], x.ndim - 2)
        failed = folder.with_name(folder.name + ".failed")
        if failed.is_file():
            return None
        if not (folder / "model.xml").is_file():
            example = torch.rand(x.shape[0], x.shape[1], *(max(1, s // 2) for s in x.shape[2:]))
            try:
                self._convert(example, folder, (-1, x.shape[1], *([-1] * (x.ndim - 2))))
            except OpenVINOCacheError:
                raise  # the cache, not the network: nothing to remember
            except OpenVINOUnavailableError as e:
                with self._writing_cache():
                    atomic_write_json(failed, {"error": str(e)})
                return None
        model = self.ov.Core().read_model(str(folder / "model.xml"))
        try:
            model.reshape(self.ov.PartialShape(list(x.shape)))
        except RuntimeError:  # e.g. a size fixed by the traced branch (a positional embedding at its training grid)
            return None
        check_file = folder / f"check_{'x'.join(map(str, x.shape))}.json"
        if not check_file.is_file():
            with torch.no_grad():
                expected = self.network(x).float()
            compiled = self.ov.Core().compile_model(model, "CPU", self._config("f32"))
            got = torch.from_numpy(compiled(x.contiguous().numpy())[0].copy())
            del compiled  # its buffers, before the model is compiled again for use
            error = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-6))
            with self._writing_cache():
                atomic_write_json(check_file, {"max_error_relative": error, "ok": error <= DYNAMIC_TOLERANCE})
        return model if json.loads(check_file.read_text())["ok"] else None

    def _config(self, precision: str) -> dict[str, Any]:
        return {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads()}

    def _compile(self, x: torch.Tensor) -> Any:
        static = self.model_dir(tuple(x.shape))
        model = None if (static / "model.xml").is_file() else self._dynamic_model(x)
        if model is None:
            if not (static / "model.xml").is_file():
                self._convert(x, static, tuple(x.shape))
            model = str(static / "model.xml")
        return self.ov.Core().compile_model(model, "CPU", self._config(self.precision))

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs:
            raise TypeError("OpenVINONetwork: the network is called with its input tensor only")
        x = x.as_tensor() if hasattr(x, "as_tensor") else x  # a MetaTensor window: plain data for tracing
        shape = tuple(x.shape)
        if shape not in self._compiled:
            self._compiled[shape] = self._compile(x.float())
        result = self._compiled[shape](x.detach().float().contiguous().numpy())
        return torch.from_numpy(result[0].copy())
