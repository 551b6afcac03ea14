"""The harness's inputs, checked: the --target (a parameter count, a ratio or an architecture)
and the fields of the compressor's report.json that the comparison table uses."""

from __future__ import annotations

import json
import re
from pathlib import Path

_SUFFIXES = {"": 1, "k": 1_000, "m": 1_000_000}


def parse_param_count(text: str, teacher_params: int) -> int | None:
    """A parameter count from "70000", "70_000", "70k", "1.2M" or "10x"; None if not a count."""
    s = text.strip().lower().replace("_", "").replace(",", "")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(x|k|m|)", s)
    if match is None:
        return None
    value, suffix = float(match.group(1)), match.group(2)
    if suffix == "x":
        if value <= 1:
            raise ValueError(f"a compression ratio must be above 1, got {text!r}")
        return int(teacher_params // value)
    return int(round(value * _SUFFIXES[suffix]))


def parse_target(text: str, teacher, input_shape, num_classes):
    """(target parameter count, target Arch or None) from --target; `ValueError` if bad."""
    from ac_jax.arch.load import load_arch

    count = parse_param_count(text, teacher.num_params)
    arch = None
    if count is None:
        arch = load_arch(text, input_shape, num_classes)
        count = arch.num_params
    return check_target(count, teacher), arch


def check_target(count: int, teacher) -> int:
    if count < 1:
        raise ValueError(f"the target must have at least one parameter, got {count}")
    if count >= teacher.num_params:
        raise ValueError(
            f"the target ({count:,} parameters) is not smaller than the teacher "
            f"({teacher.num_params:,}): nothing to compress"
        )
    return count


def _get(report: dict, dotted: str, path: Path):
    value = report
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"{path}: the report has no {dotted!r}")
        value = value[part]
    return value


def read_report(path: str, input_shape, num_classes) -> dict:
    """The fields of the compressor's report.json that the table uses, checked."""
    from ac_jax.arch.json_spec import parse_json

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no such report file: {p}")
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{p}: not a JSON report ({err})") from None
    if not isinstance(report, dict):
        raise ValueError(f"{p}: a report is a JSON object")
    out = {
        "original_params": _get(report, "original.num_params", p),
        "chosen_params": _get(report, "chosen.num_params", p),
        "wall_seconds": _get(report, "wall_seconds", p),
        # Optional: the architectures the compressor trained (archset excluded); "—" if absent.
        "archs_trained": report.get("archs_trained"),
    }
    for key, field in (("original_params", "original.num_params"),
                       ("chosen_params", "chosen.num_params")):
        if isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 1:
            raise ValueError(f"{p}: {field} must be a positive integer, got {out[key]!r}")
    trained = out["archs_trained"]
    if trained is not None and (isinstance(trained, bool) or not isinstance(trained, int)
                                or trained < 0):
        raise ValueError(f"{p}: archs_trained must be a non-negative integer, got {trained!r}")
    seconds = out["wall_seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError(f"{p}: wall_seconds must be a non-negative number, got {seconds!r}")
    spec = _get(report, "chosen.spec", p)
    try:
        arch = parse_json(spec)
    except ValueError as err:
        raise ValueError(f"{p}: chosen.spec is not a valid architecture: {err}") from None
    if arch.input_shape != tuple(input_shape) or arch.num_classes != num_classes:
        raise ValueError(
            f"{p}: the chosen architecture is for input {arch.input_shape} / {arch.num_classes} "
            f"classes, the dataset has {tuple(input_shape)} / {num_classes}"
        )
    out["arch"] = arch
    out["surrogate"] = report.get("surrogate")
    verify = report.get("verify")
    if verify is not None and not isinstance(verify, dict):
        raise ValueError(f"{p}: verify must be an object or null")
    out["original_accuracy"] = verify.get("original_accuracy") if verify else None
    out["compressed_accuracy"] = verify.get("compressed_accuracy") if verify else None
    return out


def archset_spend(report: dict) -> int:
    """Architectures the ac_jax result cost: its surrogate's archset plus any refinement runs."""
    folder = report.get("surrogate")
    meta_path = Path(folder) / "surrogate.json" if folder else None
    if meta_path is None or not meta_path.is_file():
        raise ValueError("--random-archs archset needs the --ac-report's surrogate folder "
                         f"(its surrogate.json); the report names {folder!r}")
    records = json.loads(meta_path.read_text(encoding="utf-8"))["task"]["num_records"]
    return int(records) + int(report.get("archs_trained") or 0)
