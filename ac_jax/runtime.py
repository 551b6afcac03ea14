"""Where the repository's files are and how JAX keeps compiled programs: shared by the library
and the scripts in bin/ (which reach it through `ac_jax.cli`)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_path(path: str | os.PathLike) -> Path:
    """Relative paths in configs are relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def enable_compilation_cache(path: str | os.PathLike | None = None,
                             min_compile_seconds: float = 0.5) -> None:
    """Persistent XLA cache: a restarted run reuses the programs it already compiled (those that
    took at least `min_compile_seconds` to compile)."""
    import jax

    path = path or os.environ.get("AC_JAX_COMPILE_CACHE", str(Path.home() / ".cache/ac_jax/xla"))
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
