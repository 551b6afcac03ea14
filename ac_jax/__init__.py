"""ac_jax: Architecture Compression (Ashok, arXiv 1902.03326) in JAX/Flax.

The common job needs nothing from deeper modules (README, "Python API"):

    import ac_jax
    arch = ac_jax.load_arch("net.py:Net", input_shape=(28, 28, 1))   # or from_torch(module, ...)
    result = ac_jax.compress(arch, ac_jax.load_surrogate("surrogates/fashion_mnist"),
                             ac_jax.Constraint(target_ratio=8))
    print(ac_jax.to_printout(result.chosen.arch))

Names are imported on first use, so `import ac_jax` stays cheap.
"""

from __future__ import annotations

import importlib

# public name -> module that defines it
_EXPORTS = {
    "Arch": "ac_jax.arch.spec",
    "Constraint": "ac_jax.compress.candidates",
    "SearchConfig": "ac_jax.compress.search",
    "CompressResult": "ac_jax.compress.pipeline",
    "load_arch": "ac_jax.arch.load",
    "to_printout": "ac_jax.arch.export",
    "to_torch_module_source": "ac_jax.arch.export",
    "from_torch": "ac_jax.arch.from_torch",
    "UnsupportedModuleError": "ac_jax.arch.from_torch",
    "load_surrogate": "ac_jax.surrogate.checkpoint",
    "verify": "ac_jax.api",
}
__all__ = sorted([*_EXPORTS, "compress"])


def __getattr__(name: str):
    if name == "compress":  # the callable package (ac_jax/compress/__init__.py)
        return importlib.import_module("ac_jax.compress")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ac_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
