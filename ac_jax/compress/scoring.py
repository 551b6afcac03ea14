"""The surrogate's predictions for discrete architectures (re-encoded matrices): what the
candidate table (`candidates.py`) and the acquisition (`refine.acquire`) rank by. The search's
trajectories (`search.py`) never call this; candidates are scored after they are decoded."""

from __future__ import annotations

from functools import cache, partial

import jax
import jax.numpy as jnp

from ac_jax.surrogate.checkpoint import TrainedSurrogate
from ac_jax.surrogate.encoding import encode_traced, encoding_tables
from ac_jax.surrogate.model import Surrogate


@partial(jax.jit, static_argnums=(0,))
def _score(model, variables, feats):
    y = model.apply(variables, feats, method=Surrogate.encode)
    return model.apply(variables, y, method=Surrogate.predict)


@partial(jax.jit, static_argnums=(0,))
def _score_matrices(model, variables, tables, mats):
    return _score(model, variables, encode_traced(mats, tables))


@cache
def _device_encoding_tables():
    return jnp.asarray(encoding_tables())  # copied to the device once, not per scoring call


def _in_padded_batches(fn, inputs, batch: int):
    """`fn` over `inputs` in chunks padded to a power of two (at most `batch` rows), so that
    the number of candidates, which differs from network to network, costs a handful of
    compiles, not one each; returns each of `fn`'s outputs concatenated over the chunks."""
    import numpy as np

    outputs = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        size = min(batch, 1 << max(0, (len(chunk) - 1).bit_length()))
        pad = size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        outputs.append([np.asarray(o)[: size - pad] for o in fn(jnp.asarray(chunk))])
    return tuple(np.concatenate(column) for column in zip(*outputs))


@partial(jax.jit, static_argnums=(0,))
def _score_spread(model, variables, tables, mats):
    y = model.apply(variables, encode_traced(mats, tables), method=Surrogate.encode)
    return model.apply(variables, y, method=Surrogate.predict_spread)


def score_matrices_spread(surrogate: TrainedSurrogate, mats, batch: int = 1024):
    """(mean accuracy, spread over the accuracy heads, normalised params) of integer matrices
    ``[M, T, 5]`` (fields 0..65535); the spread is 0 for a one-head surrogate."""
    import numpy as np

    tables = _device_encoding_tables()
    return _in_padded_batches(
        lambda x: _score_spread(surrogate.model, surrogate.variables, tables, x),
        np.asarray(mats).astype(np.uint16), batch)


def score(surrogate: TrainedSurrogate, feats, batch: int = 1024):
    """Predicted (accuracy, normalised params) of discrete sequences ``[M, T, 6]``, re-encoded."""
    import numpy as np

    return _in_padded_batches(lambda x: _score(surrogate.model, surrogate.variables, x),
                              np.asarray(feats, np.float32), batch)


def score_matrices(surrogate: TrainedSurrogate, mats, batch: int = 1024):
    """`score` of integer matrices ``[M, T, 5]`` with fields in 0..65535 (the search's uint16
    candidates), encoded inside the compiled call (`encoding.encode_traced`, equal to
    `encode_matrices`): the host copies uint16 matrices to the device instead of encoding
    float sequences 2.4x their size."""
    import numpy as np

    mats = np.asarray(mats)
    if mats.dtype != np.uint16 and mats.size and (mats.min() < 0 or mats.max() > 65535):
        raise ValueError("score_matrices reads fields 0..65535; use score(encode_matrices(...))")
    tables = _device_encoding_tables()
    return _in_padded_batches(
        lambda x: _score_matrices(surrogate.model, surrogate.variables, tables, x),
        mats.astype(np.uint16), batch)
