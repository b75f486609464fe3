"""Checkpoint formats, loading (never executing code) and saving.

Accepted files:

- the official SAFIRE container ``{"model": state_dict, "epoch": int, ...}`` (``safire.pth``), keys
  with or without the DDP ``module.`` prefix; optimizer/scheduler entries are ignored;
- a bare state dict (``{param_name: tensor}``), with or without ``module.``;
- our format ``{"format": "safire-studio", "format_version": 1, "model": state_dict, "meta": {...}}``
  where ``meta`` holds ``variant``, ``config`` (:class:`SafireConfig` fields), ``model_version``,
  ``provenance`` (how the weights were made), free-form ``metrics`` and optionally ``partition``
  (automatic-mode settings calibrated for these weights).

Every file is read with ``torch.load(..., weights_only=True)``: a checkpoint can never run code.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from .config import SafireConfig

FORMAT_NAME = "safire-studio"
FORMAT_VERSION = 1

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe, or does not match the model."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: plain state dict (no ``module.`` prefix) plus what is known about it."""

    state_dict: Dict[str, torch.Tensor]
    kind: str  # "safire-studio" | "official" | "state_dict"
    meta: Dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None

    @property
    def config(self) -> Optional[SafireConfig]:
        cfg = self.meta.get("config")
        return SafireConfig.from_dict(cfg) if cfg else None

    @property
    def variant(self) -> Optional[str]:
        return self.meta.get("variant")


def _strip_prefix(sd: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            raise CheckpointError(f"state dict key {k!r} is not a string")
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def read_checkpoint(source: Union[PathLike, bytes, io.IOBase]) -> Checkpoint:
    """Read any accepted checkpoint format onto the CPU, without executing code.

    Raises:
        CheckpointError: missing file, not a torch file, a pickle that needs code execution, or an
            unrecognised layout.
    """
    path = None
    if isinstance(source, (str, os.PathLike)):
        path = str(source)
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint not found: {path}")
    elif isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        detail = msg.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if "WeightsUnpickler error:" in msg else msg
        if "Unsupported global" in msg or "GLOBAL" in msg:
            raise CheckpointError(
                f"refusing to load {path or 'checkpoint'}: it needs code execution to unpickle "
                f"(only tensors, numbers, strings, lists and dicts are allowed): {detail}"
            ) from e
        raise CheckpointError(f"cannot read checkpoint {path or ''}: not a torch checkpoint ({detail})") from e
    except Exception as e:  # truncated zip, not a torch file, ...
        raise CheckpointError(f"cannot read checkpoint {path or ''}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path or ''} holds a {type(obj).__name__}, expected a dict")
    if obj.get("format") == FORMAT_NAME:
        if int(obj.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format version {obj.get('format_version')} is newer than this code "
                f"({FORMAT_VERSION}); upgrade safire-studio"
            )
        return Checkpoint(_strip_prefix(obj["model"]), FORMAT_NAME, dict(obj.get("meta") or {}), path)
    if "model" in obj and isinstance(obj["model"], Mapping):
        meta = {"epoch": obj.get("epoch")} if isinstance(obj.get("epoch"), (int, float)) else {}
        return Checkpoint(_strip_prefix(obj["model"]), "official", meta, path)
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Checkpoint(_strip_prefix(obj), "state_dict", {}, path)
    raise CheckpointError(
        f"unrecognised checkpoint layout in {path or 'checkpoint'}: top-level keys "
        f"{sorted(map(str, obj.keys()))[:10]}; expected {{'model': state_dict, ...}} or a state dict"
    )


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load with strict key and shape matching; raise :class:`CheckpointError` naming every problem."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    if missing or unexpected or shapes:
        def fmt(xs):
            return ", ".join(xs[:12]) + (f", ... ({len(xs)} in all)" if len(xs) > 12 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {fmt(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {fmt(shapes)}")
        raise CheckpointError("checkpoint does not match the model; " + "; ".join(parts))
    model.load_state_dict(dict(state_dict), strict=True)


def save_checkpoint(
    model: torch.nn.Module,
    path: PathLike,
    *,
    variant: str,
    config: SafireConfig,
    model_version: str,
    provenance: Optional[Dict[str, Any]] = None,
    metrics: Optional[Dict[str, Any]] = None,
    half: bool = False,
    extra: Optional[Dict[str, Any]] = None,
    partition: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write our format atomically (temporary file in the same folder, then rename).

    ``half=True`` stores floating tensors as float16 (they are cast back to float32 on load); this
    halves the file of the embedded default model. ``partition`` holds calibrated automatic-mode
    settings (see ``safire calibrate``); the partition uses them for these weights.
    """
    sd = model.module.state_dict() if hasattr(model, "module") else model.state_dict()
    sd = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu()) for k, v in sd.items()}
    payload: Dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": sd,
        "meta": {
            "variant": variant,
            "config": config.to_dict(),
            "model_version": model_version,
            "provenance": provenance or {},
            "metrics": metrics or {},
            **({"partition": dict(partition)} if partition else {}),
        },
    }
    if extra:
        payload.update(extra)
    return atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
