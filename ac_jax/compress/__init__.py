"""Compression: the embedding search (`search`), exact candidates and picks (`candidates`),
orchestration and outputs (`pipeline`), refinement rounds (`refine`).

The package is also the public `ac_jax.compress` function: ``ac_jax.compress(arch, surrogate,
constraint)`` calls `ac_jax.api.compress`. (A package attribute of `ac_jax` named like a function
would otherwise be replaced by the subpackage the first time anything imports
`ac_jax.compress.pipeline`; a callable package serves both.)
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from ac_jax.api import compress

        return compress(*args, **kwargs)

    def __reduce__(self):  # pickled by name, like any module reference
        import importlib

        return importlib.import_module, (self.__name__,)


sys.modules[__name__].__class__ = _CallablePackage
