"""The JSON spec of an `Arch`: input shape (H, W, C), classes and ``[t, k, o, s, p]`` rows (or
per-layer objects)."""

from __future__ import annotations

import json
from typing import Any

from ac_jax.arch import shapes
from ac_jax.arch.spec import (
    Arch,
    Layer,
    LayerType,
    avgpool,
    conv,
    dropout,
    linear,
    maxpool,
)

_TYPE_NAMES = {t.name.lower(): t for t in LayerType if t != LayerType.END}
_TYPE_NAMES |= {
    "conv2d": LayerType.CONV,
    "max_pool": LayerType.MAXPOOL,
    "avg_pool": LayerType.AVGPOOL,
    "bn": LayerType.BATCHNORM,
    "fc": LayerType.LINEAR,
}
# Keys of the object form per type: (required, optional with defaults); a pooling stride of
# None means "equal to the kernel", as in PyTorch.
_OBJECT_KEYS: dict[LayerType, tuple[tuple[str, ...], dict[str, Any]]] = {
    LayerType.CONV: (("kernel", "out"), {"stride": 1, "padding": 0}),
    LayerType.MAXPOOL: (("kernel",), {"stride": None, "padding": 0}),
    LayerType.AVGPOOL: (("kernel",), {"stride": None, "padding": 0}),
    LayerType.BATCHNORM: ((), {}),
    LayerType.RELU: ((), {}),
    LayerType.SIGMOID: ((), {}),
    LayerType.DROPOUT: (("rate",), {}),
    LayerType.LINEAR: (("out",), {}),
}
_TOP_LEVEL_KEYS = ("input_shape", "num_classes", "layers")


def _json_row(layer: Layer):
    """A ``[t, k, o, s, p]`` row, or for a Dropout with an exact rate its object form."""
    if layer.rate is not None:
        return {"type": "dropout", "rate": layer.rate}
    return list(layer)


def to_json(arch: Arch) -> str:
    """The JSON spec of a valid `arch`: input shape (H, W, C), classes, ``[t, k, o, s, p]`` rows."""
    shapes.validate(arch)
    rows = ",\n".join(f"    {json.dumps(_json_row(layer))}" for layer in arch.layers)
    return (
        "{\n"
        f'  "input_shape": {json.dumps(list(arch.input_shape))},\n'
        f'  "num_classes": {arch.num_classes},\n'
        f'  "layers": [\n{rows}\n  ]\n'
        "}\n"
    )


def _layer_type(where: str, name: Any) -> LayerType:
    key = name.lower().replace("-", "_") if isinstance(name, str) else None
    if key not in _TYPE_NAMES:
        raise ValueError(f"{where}: unknown layer type {name!r}; known: {', '.join(_TYPE_NAMES)}")
    return _TYPE_NAMES[key]


def _json_int(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {key!r} must be an integer, got {value!r}")
    return value


def _object_layer(where: str, raw: dict[str, Any]) -> Layer:
    t = _layer_type(where, raw.get("type"))
    required, optional = _OBJECT_KEYS[t]
    fields = {k: v for k, v in raw.items() if k != "type"}
    unknown = set(fields) - set(required) - set(optional)
    missing = set(required) - set(fields)
    if unknown or missing:
        allowed = ", ".join((*required, *optional)) or "none"
        raise ValueError(
            f"{where}: {t.name.lower()} layer has unknown {sorted(unknown)} / missing "
            f"{sorted(missing)} keys (keys: {allowed})"
        )
    if t == LayerType.DROPOUT:
        rate = fields["rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise ValueError(f"{where}: dropout 'rate' must be a number, got {rate!r}")
        try:
            return dropout(rate)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    values = {k: fields.get(k, default) for k, default in optional.items()}
    values |= {k: fields[k] for k in required}
    v = {k: None if x is None else _json_int(where, k, x) for k, x in values.items()}
    if t == LayerType.CONV:
        return conv(v["kernel"], v["out"], v["stride"], v["padding"])
    if t == LayerType.MAXPOOL:
        return maxpool(v["kernel"], v["stride"], v["padding"])
    if t == LayerType.AVGPOOL:
        return avgpool(v["kernel"], v["stride"], v["padding"])
    if t == LayerType.LINEAR:
        return linear(v["out"])
    return Layer(t)


def _json_layer(index: int, raw: Any) -> Layer:
    where = f"layer {index}"
    if isinstance(raw, str):
        t = _layer_type(where, raw)
        if _OBJECT_KEYS[t][0]:
            raise ValueError(
                f"{where}: {raw!r} needs parameters {list(_OBJECT_KEYS[t][0])}; write it as an "
                f'object, e.g. {{"type": "{t.name.lower()}", ...}}'
            )
        return Layer(t)
    if isinstance(raw, dict):
        return _object_layer(where, raw)
    if isinstance(raw, (list, tuple)) and len(raw) == 5:
        return Layer(*(_json_int(where, name, v) for name, v in zip("tkosp", raw, strict=True)))
    raise ValueError(f"{where}: expected [t, k, o, s, p], a type name or an object, got {raw!r}")


def json_object(text_or_dict: str | bytes | dict[str, Any]) -> dict[str, Any]:
    data = text_or_dict
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise ValueError(f"invalid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"a JSON spec is an object with keys {_TOP_LEVEL_KEYS}, got {type(data)}")
    return dict(data)


def parse_json(text_or_dict: str | bytes | dict[str, Any]) -> Arch:
    """Reads a JSON spec (text or an already-decoded dict) and validates the architecture.

    ``{"input_shape": [H, W, C], "num_classes": n, "layers": [...]}``; each layer is a
    ``[t, k, o, s, p]`` row, a type name for parameterless layers (``"relu"``) or an object such as
    ``{"type": "conv", "kernel": 3, "out": 32, "stride": 1, "padding": 1}``. `num_classes` may be
    left out (then it is the last Linear's out features). Raises `ValueError` (`InvalidArchError`
    for an architecture that cannot be built).
    """
    data = json_object(text_or_dict)
    unknown = set(data) - set(_TOP_LEVEL_KEYS)
    if unknown or "input_shape" not in data or not isinstance(data.get("layers"), list):
        raise ValueError(
            "a JSON spec needs 'input_shape' and a 'layers' list (optional: 'num_classes'); "
            f"unknown keys: {sorted(unknown)}"
        )
    layers = [_json_layer(index, raw) for index, raw in enumerate(data["layers"])]
    if not layers:
        raise ValueError("a JSON spec needs at least one layer")
    num_classes = _json_int("spec", "num_classes", data.get("num_classes", layers[-1].o))
    arch = Arch(shapes.checked_input_shape(data["input_shape"]), num_classes, tuple(layers))
    return shapes.validate(arch)
