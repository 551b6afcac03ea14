"""2-D convolutions on CPU through oneDNN, called from XLA as FFI custom calls.

XLA:CPU has no fast direct convolution for the seeds-vmapped case: its own convolution becomes a
grouped convolution it runs as a naive loop, and the im2col route (`conv.py`) copies every
activation k*k times and runs the weight gradient as a batched matmul at ~95 GFLOP/s. oneDNN's
direct convolutions (the ones PyTorch uses on CPU) avoid both. `onednn_conv.cc` wraps the forward
convolution and both gradients as XLA FFI handlers; this module compiles it once per source and
jaxlib version (g++, oneDNN from the Debian package `libdnnl-dev`), loads it, registers the
handlers, and exposes `conv2d` with a custom VJP that works under `vmap` (the vmapped seeds become
a leading dimension the kernel loops over) and inside `lax.scan`.

When the library cannot be built (no compiler, no oneDNN), `available()` is False, `reason()` says
why, and `conv.conv2d(impl="auto")` keeps the im2col path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ac_jax.arch.shapes import conv_output_size

SOURCE = Path(__file__).with_name("onednn_conv.cc")
FORWARD, BACKWARD = "ac_jax_onednn_conv_forward", "ac_jax_onednn_conv_backward"

_lock = threading.Lock()
_state: dict = {}  # "ok": bool, "reason": str, "library": ctypes.CDLL


def cache_dir() -> Path:
    """Where the compiled library goes: $AC_JAX_CACHE_DIR, else ~/.cache/ac_jax."""
    root = os.environ.get("AC_JAX_CACHE_DIR") or Path.home() / ".cache" / "ac_jax"
    return Path(root) / "onednn"


def _compile_flags() -> list[str]:
    """Include and link flags for oneDNN: $ONEDNN_ROOT (include/, lib/) or the system's."""
    root = os.environ.get("ONEDNN_ROOT")
    if not root:
        return ["-ldnnl"]
    lib = Path(root) / "lib"
    return [f"-I{Path(root) / 'include'}", f"-L{lib}", f"-Wl,-rpath,{lib}", "-ldnnl"]


def library_path() -> Path:
    """The compiled library for this source, jaxlib and oneDNN location (a hash of all three)."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(jax.ffi.include_dir().encode())
    key.update(jax.__version__.encode())
    key.update(" ".join(_compile_flags()).encode())
    return cache_dir() / f"onednn_conv-{key.hexdigest()[:16]}.so"


def build(force: bool = False) -> Path:
    """Compiles `onednn_conv.cc` into `library_path()` (atomically); returns the path.

    Raises RuntimeError with the compiler's message when it fails."""
    target = library_path()
    if target.exists() and not force:
        return target
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (apt-get install g++)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        scratch = Path(tmp) / target.name
        command = [
            compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
            "-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", str(scratch),
            *_compile_flags(),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                "building the oneDNN convolution failed (needs g++ and `apt-get install "
                f"libdnnl-dev`):\n{done.stderr.strip()[-2000:]}"
            )
        os.replace(scratch, target)  # another process may have built it too: same bytes
    return target


def _load() -> None:
    try:
        library = ctypes.CDLL(str(build()))
        for name, symbol in ((FORWARD, "AcJaxConvForward"), (BACKWARD, "AcJaxConvBackward")):
            handler = jax.ffi.pycapsule(getattr(library, symbol))
            jax.ffi.register_ffi_target(name, handler, platform="cpu")
    except (OSError, RuntimeError, AttributeError) as error:
        _state.update(ok=False, reason=str(error))
        warnings.warn(f"the oneDNN convolution is not available, CPU convolutions fall back to "
                      f"im2col (about 3x slower on CONV-7): {error}", RuntimeWarning, stacklevel=3)
        return
    _state.update(ok=True, reason="", library=library)


def available() -> bool:
    """True when the oneDNN convolution is built and registered (builds it on the first call)."""
    if os.environ.get("AC_JAX_ONEDNN", "1") == "0":
        return False
    with _lock:
        if "ok" not in _state:
            _load()
    return _state["ok"]


def reason() -> str:
    """Why `available()` is False ("" when it is True or was not asked yet)."""
    if os.environ.get("AC_JAX_ONEDNN", "1") == "0":
        return "disabled by AC_JAX_ONEDNN=0"
    return _state.get("reason", "")


ALGORITHMS = {"direct": 0, "auto": 1}


def _attrs(stride: int, padding: int, algorithm: str) -> dict:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown oneDNN algorithm {algorithm!r}; use 'direct' or 'auto'")
    return {"stride": np.int64(stride), "padding": np.int64(padding),
            "algorithm": np.int64(ALGORITHMS[algorithm])}


def _require() -> None:
    if not available():
        raise RuntimeError(f"the oneDNN convolution is not available: {reason()}")


def _forward_call(x, kernel, bias, stride: int, padding: int, algorithm: str):
    _require()
    b, h, w, _ = x.shape
    k, _, _, o = kernel.shape
    out_h, out_w = (conv_output_size(n, k, stride, padding) for n in (h, w))
    out = jax.ShapeDtypeStruct((b, out_h, out_w, o), jnp.float32)
    call = jax.ffi.ffi_call(FORWARD, out, vmap_method="broadcast_all")
    return call(x, kernel, bias, **_attrs(stride, padding, algorithm))


def _backward_call(x, kernel, grad_y, stride: int, padding: int, algorithm: str):
    shapes = (x.shape, kernel.shape, kernel.shape[-1:])  # input, kernel and bias gradients
    outs = tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes)
    call = jax.ffi.ffi_call(BACKWARD, outs, vmap_method="broadcast_all")
    return call(x, kernel, grad_y, **_attrs(stride, padding, algorithm))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def conv2d(x, kernel, bias, stride: int, padding: int, algorithm: str = "auto"):
    """NHWC x HWIO float32 convolution plus bias ``[O]`` by oneDNN (RuntimeError when the
    library is not available; `available()` says beforehand).

    `algorithm`: "direct" (oneDNN's direct convolution, what PyTorch runs on CPU) or "auto"
    (oneDNN picks; for 3x3 stride-1 layers that is Winograd F(4x4, 3x3), about 2x faster on the
    large CONV-7 layers and with float32 rounding differences of ~1e-6 relative)."""
    return _forward_call(x, kernel, bias, stride, padding, algorithm)


def _conv2d_fwd(x, kernel, bias, stride, padding, algorithm):
    return _forward_call(x, kernel, bias, stride, padding, algorithm), (x, kernel)


def _conv2d_bwd(stride, padding, algorithm, residuals, grad_y):
    x, kernel = residuals
    return _backward_call(x, kernel, grad_y.astype(jnp.float32), stride, padding, algorithm)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
