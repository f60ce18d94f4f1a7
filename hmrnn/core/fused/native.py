"""The fused per-step cell: in C++ (``native.cpp``) on CPU, built on first use and cached, and
in Triton (:mod:`.triton_cell`) on CUDA.

:func:`kernels` returns the C++ functions when they can be built (a C++ compiler and ninja, CPU
tensors in float32 or float64), else None, and the loop then runs the torch-operation versions of
:mod:`hmrnn.core.fused.cell` and :mod:`hmrnn.core.fused.ln_cell` (the same equations, about 80
small operations per step instead of 2-4 calls). The first build takes 25-40 s on two
cores; it is reported on stderr with its time and kept in torch's extension cache
(``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), so later processes load
it in a fraction of a second.

``HMRNN_NATIVE=0`` turns the C++ cell off (the torch-operation loop runs); a build that fails is
logged once as a warning, with the reason, and not tried again in that process.

:func:`triton_kernels` returns the Triton module where Triton imports (it ships with PyTorch's
CUDA wheels); ``HMRNN_TRITON=0`` turns it off. On a machine without a GPU the Triton kernels run
in Triton's interpreter, for tests only (``HMLSTM.native = "triton"``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native.cpp")

BUILD_NOTICE_S = 3.0
"""A build or load that took longer than this compiled: it is reported on stderr."""

_module: ModuleType | None = None
_tried = False
build_seconds: float | None = None
"""How long this process took to build or load the extension (None: not yet, or not built)."""


def enabled() -> bool:
    """Whether the C++ cell may be used (``HMRNN_NATIVE`` is not 0)."""
    return os.environ.get("HMRNN_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _flags() -> list[str]:
    """Compiler flags: optimised, for this CPU's vector instructions (AVX-512 where torch finds
    it: 1.2x faster cells here than AVX2 alone)."""
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-march=native")
        if torch.backends.cpu.get_cpu_capability() == "AVX512":
            flags.append("-mprefer-vector-width=512")
    return flags


def _cpu() -> bytes:
    """What identifies this CPU's instruction set (its flags), for the cache key: a cache shared
    by machines with other CPUs must not hand them a build they cannot run."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            for line in f:
                if line.startswith((b"flags", b"Features")):
                    return line
    except OSError:
        pass
    return platform.processor().encode()


def _name(flags: list[str]) -> str:
    """The extension's name: torch's cache keeps one build per name."""
    key = SOURCE.read_bytes() + " ".join(flags).encode() + _cpu() + torch.__version__.encode()
    return f"hmrnn_cell_{hashlib.sha1(key).hexdigest()[:12]}"


@contextlib.contextmanager
def _own_ninja() -> Iterator[None]:
    """PATH with this interpreter's scripts folder first while building, where pip installed
    ninja (a dependency): torch runs whichever ``ninja`` PATH finds, and ninja versions record
    their commands differently, so a run from an activated virtualenv (its ninja) and one of
    ``.venv/bin/python`` with the system's ninja first each rebuilt the other's build (found
    with the sweep runner, whose runs put the virtualenv on PATH: 25-60 s a run)."""
    scripts = Path(sys.executable).parent
    path = os.environ.get("PATH", "")
    if not (scripts / "ninja").is_file():
        yield
        return
    os.environ["PATH"] = os.pathsep.join([str(scripts), path])
    try:
        yield
    finally:
        os.environ["PATH"] = path


def kernels() -> ModuleType | None:
    """The built extension, building it on the first call; None where it cannot be built or is
    turned off."""
    global _module, _tried, build_seconds
    if not enabled():
        return None
    if _module is not None or _tried:
        return _module
    _tried = True
    flags = _flags()
    start = time.perf_counter()
    try:
        from torch.utils.cpp_extension import load

        log.info("loading the fused C++ cell (built on first use: 25-40 s here, then cached)")
        with _own_ninja():
            _module = load(
                name=_name(flags),
                sources=[str(SOURCE)],
                extra_cflags=flags,
                verbose=False,
            )
    except Exception as error:  # no compiler, no ninja, headers missing: the torch loop runs
        log.warning(
            "the fused C++ cell could not be built (%s); the loop runs torch operations "
            "instead (slower). Install a C++ compiler and ninja, or set HMRNN_NATIVE=0 to "
            "silence this.",
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
        )
        return None
    build_seconds = time.perf_counter() - start
    log.info("fused C++ cell ready in %.1f s", build_seconds)
    if build_seconds > BUILD_NOTICE_S:  # it compiled (a cached build loads in a fraction of it)
        print(
            f"hmrnn: built the fused C++ cell in {build_seconds:.0f} s, once: it is kept in "
            f"{Path(_module.__file__).parent} for later runs",
            file=sys.stderr,
            flush=True,
        )
    return _module


def loaded() -> ModuleType:
    """The extension, once :func:`kernels` has built it (the loop's per-step calls; no checks)."""
    assert _module is not None, "native.kernels() must have built the C++ cell first"
    return _module


def usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the C++ cell serves tensors of this device and dtype (building it if needed)."""
    if device.type != "cpu" or dtype not in (torch.float32, torch.float64):
        return False
    return kernels() is not None


_triton: ModuleType | None = None
_triton_tried = False


def triton_enabled() -> bool:
    """Whether the Triton cell may be used (``HMRNN_TRITON`` is not 0)."""
    return os.environ.get("HMRNN_TRITON", "1").strip().lower() not in ("0", "false", "no", "off")


def triton_kernels() -> ModuleType | None:
    """The Triton cell (:mod:`hmrnn.core.fused.triton_cell`), or None where Triton does not
    import or is turned off (logged once)."""
    global _triton, _triton_tried
    if not triton_enabled():
        return None
    if _triton is not None or _triton_tried:
        return _triton
    _triton_tried = True
    try:
        from hmrnn.core.fused import triton_cell
    except ImportError as error:
        log.warning(
            "Triton is not available (%s); on the GPU the loop runs torch operations instead "
            "(slower). Install PyTorch's CUDA build, which brings Triton, or `pip install "
            "triton`.",
            error,
        )
        return None
    _triton = triton_cell
    return _triton


def triton_usable(device: torch.device, dtype: torch.dtype, required: bool = False) -> bool:
    """Whether the Triton cell serves tensors of this device and dtype: CUDA tensors, or with
    ``required`` (``native = "triton"``) CPU tensors in Triton's interpreter; float32 or float64.
    ``required`` and not usable is an error, not a fallback."""
    ok_device = device.type == "cuda" or (required and device.type == "cpu")
    ok = ok_device and dtype in (torch.float32, torch.float64) and triton_kernels() is not None
    if ok and device.type == "cpu" and not _triton.interpreted():  # type: ignore[union-attr]
        ok = False
    if required and not ok:
        raise RuntimeError(
            f"native='triton' cannot run here ({device.type} tensors of {dtype}): the Triton "
            "cell needs Triton installed and float32/float64 CUDA tensors (or, without a GPU, "
            "TRITON_INTERPRET=1 set before Triton is first imported in the process); use "
            "native=True instead"
        )
    return ok


def main() -> None:
    """``python -m hmrnn.core.fused``: build (or load) the C++ cell and say how long it
    took and where it is kept, or why it cannot be built."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    module = kernels()
    if module is None:
        reason = "HMRNN_NATIVE=0" if not enabled() else "the build failed (see above)"
        print(f"the C++ cell is not used ({reason}); the loop runs torch operations")
        raise SystemExit(1)
    print(f"C++ cell {module.__name__}: ready in {build_seconds:.1f} s, kept in {module.__file__}")
