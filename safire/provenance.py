"""Provenance of a prediction: which bytes, which weights, which settings, which code, how long.

One record format (``schema: "safire-provenance/1"``) is written by ``safire predict`` (in
``NAME.json``), by the ML backend (``ml_backend.predictions.attach_provenance``) and by anything
else that pre-annotates (call :func:`build_provenance`). ``docs/provenance.md`` lists the fields
and where each one survives in Label Studio and in an exported dataset.

The hashes are plain SHA-256 in lower-case hex, as ``sha256sum`` prints them:

- ``image_sha256``: of the image file's bytes exactly as read or downloaded (before decoding, EXIF
  rotation or any conversion), so ``sha256sum photo.jpg`` gives the same value;
- ``weights_sha256``: of the weights file the model was loaded from (``None`` for random weights).

No I/O besides reading the weights file once per (path, size, mtime); no HTTP.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Dict, Mapping, Optional, Tuple, Union

SCHEMA = "safire-provenance/1"

__all__ = [
    "SCHEMA",
    "build_provenance",
    "check_image",
    "library_versions",
    "preprocessing",
    "provenance_summary",
    "sha256_bytes",
    "sha256_file",
    "weights_info",
]

_WEIGHTS_LOCK = threading.Lock()
_WEIGHTS_CACHE: Dict[Tuple[str, int, int], str] = {}


def sha256_bytes(data: Union[bytes, bytearray, memoryview]) -> str:
    """Lower-case hex SHA-256 of ``data`` (what ``sha256sum`` prints for a file of these bytes)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    """Lower-case hex SHA-256 of a file, read in 1 MiB chunks. Cached per (real path, size,
    modification time), so a served model hashes its weights once."""
    real = os.path.realpath(os.fspath(path))
    st = os.stat(real)
    key = (real, int(st.st_size), int(st.st_mtime_ns))
    with _WEIGHTS_LOCK:
        cached = _WEIGHTS_CACHE.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    digest = h.hexdigest()
    with _WEIGHTS_LOCK:
        if len(_WEIGHTS_CACHE) > 256:
            _WEIGHTS_CACHE.clear()
        _WEIGHTS_CACHE[key] = digest
    return digest


def weights_info(model: Any, path: Optional[Union[str, os.PathLike]] = None) -> Dict[str, Any]:
    """``{"weights_sha256", "weights_file"}`` of the file ``model`` was loaded from.

    ``path`` overrides ``model.meta["checkpoint"]`` (what :func:`safire.build.build_safire` records).
    ``weights_file`` is the file's base name only (no directories leave the machine); both are
    ``None`` for a model with random weights or a file that no longer exists.
    """
    meta = getattr(model, "meta", None) or {}
    p = path if path is not None else meta.get("checkpoint")
    if not p:
        return {"weights_sha256": None, "weights_file": None}
    try:
        return {"weights_sha256": sha256_file(p), "weights_file": os.path.basename(os.fspath(p))}
    except OSError:
        return {"weights_sha256": None, "weights_file": os.path.basename(os.fspath(p))}


@lru_cache(maxsize=1)
def library_versions() -> Dict[str, str]:
    """Versions of the code that computed a prediction: safire-studio, torch, numpy, Python."""
    out: Dict[str, str] = {}
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out["safire_studio"] = version("safire-studio")
        except PackageNotFoundError:
            out["safire_studio"] = "unknown"
    except ImportError:  # pragma: no cover
        out["safire_studio"] = "unknown"
    try:
        import torch

        out["torch"] = str(torch.__version__)
    except ImportError:  # pragma: no cover
        pass
    import numpy

    out["numpy"] = str(numpy.__version__)
    out["python"] = platform.python_version()
    return out


def preprocessing(model: Any, exif_transpose: bool = False) -> Dict[str, Any]:
    """How the pixels reached the encoder, from the model's config.

    ``resize``: ``"pad"`` (native variants: the image keeps its resolution and is padded
    bottom/right to ``pad_multiple``; above ``tile_pixels`` it is encoded in overlapping tiles) or
    ``"squash"`` (resized to ``model_input`` x ``model_input``, aspect ratio not kept, as the
    official SAFIRE code does). ``normalize``: per-channel mean/std on 0-255 RGB.
    ``exif_transpose``: whether the EXIF orientation was applied before the model saw the pixels.
    """
    cfg = getattr(model, "config", None)
    out: Dict[str, Any] = {"color": "RGB uint8", "exif_transpose": bool(exif_transpose)}
    if cfg is None:
        return out
    resize = str(getattr(cfg, "resize", "squash"))
    out["resize"] = resize
    if resize == "pad":
        out["pad_multiple"] = int(getattr(cfg, "pad_multiple", 16))
        tile = int(getattr(cfg, "tile_pixels", 0) or 0)
        if tile:
            out["tile_pixels"] = tile
            out["tile_size"] = int(getattr(cfg, "tile_size", 1024))
            out["tile_overlap"] = int(getattr(cfg, "tile_overlap", 128))
    else:
        out["model_input"] = int(getattr(cfg, "img_size", 1024))
    mean, std = getattr(cfg, "pixel_mean", None), getattr(cfg, "pixel_std", None)
    if mean is not None and std is not None:
        out["normalize"] = {"mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in std]}
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item") and callable(v.item):  # numpy scalars
        try:
            return v.item()
        except (TypeError, ValueError):
            pass
    if isinstance(v, float):
        return round(v, 6)
    return v


def build_provenance(
    *,
    model: Any,
    image_bytes: Optional[Union[bytes, bytearray, memoryview]] = None,
    image_sha256: Optional[str] = None,
    image_size: Optional[Tuple[int, int]] = None,
    num_bytes: Optional[int] = None,
    sources_requested: Union[int, str, None] = None,
    sources_found: Optional[int] = None,
    grid: Optional[int] = None,
    seed: Optional[int] = None,
    partition_settings: Optional[Mapping[str, Any]] = None,
    score: Optional[float] = None,
    timings: Optional[Mapping[str, float]] = None,
    model_version: Optional[str] = None,
    weights_path: Optional[Union[str, os.PathLike]] = None,
    exif_transpose: bool = False,
    device: Optional[str] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The provenance record of one prediction (a flat JSON-able dict; ``docs/provenance.md``).

    Args:
        model: the :class:`safire.modeling.Safire` that predicted (its ``meta`` and ``config``).
        image_bytes: the image file's bytes as read/fetched (hashed here), or give
            ``image_sha256`` (+ ``num_bytes``) when they were hashed already.
        image_size: (H, W) of the decoded image the prediction refers to.
        sources_requested: ``"auto"`` or the number asked for; sources_found: the partition's K.
        grid, seed: prompt grid (g x g) and clustering seed.
        partition_settings: the other partition settings used (calibrated thresholds, ...).
        timings: seconds per stage (rounded to 0.1 ms).
        model_version: overrides ``model.meta["model_version"]`` (e.g. a published project version).
        weights_path: overrides the weights file recorded in ``model.meta["checkpoint"]``.
        extra: added last (e.g. ``project``, ``task_id``, ``explain_url`` in the backend).
    """
    if image_bytes is not None:
        image_sha256 = sha256_bytes(image_bytes)
        num_bytes = len(image_bytes)
    meta = getattr(model, "meta", None) or {}
    rec: Dict[str, Any] = {
        "schema": SCHEMA,
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "image_sha256": image_sha256,
        "image_bytes": int(num_bytes) if num_bytes is not None else None,
    }
    if image_size is not None:
        rec["image_height"], rec["image_width"] = int(image_size[0]), int(image_size[1])
    rec["model_version"] = str(model_version or meta.get("model_version") or "unknown")
    rec["model_variant"] = meta.get("variant")
    rec.update(weights_info(model, weights_path))
    rec["sources_requested"] = sources_requested if sources_requested in (None, "auto") else int(sources_requested)
    rec["sources_found"] = int(sources_found) if sources_found is not None else None
    rec["grid"] = int(grid) if grid is not None else None
    rec["seed"] = int(seed) if seed is not None else None
    rec["partition"] = _jsonable(dict(partition_settings or {}))
    if score is not None:
        rec["score"] = round(float(score), 6)
    rec["preprocessing"] = preprocessing(model, exif_transpose)
    rec["library"] = dict(library_versions())
    if device is None:
        try:
            device = str(next(model.parameters()).device)
        except (AttributeError, StopIteration, TypeError):
            device = None
    rec["device"] = device
    rec["timings"] = {str(k): round(float(v), 4) for k, v in (timings or {}).items()}
    if extra:
        rec.update(_jsonable(dict(extra)))
    return rec


def check_image(record: Optional[Mapping[str, Any]], data: Optional[bytes] = None,
                sha256: Optional[str] = None) -> str:
    """Compare the bytes (or their hash) with a provenance record.

    Returns ``"match"`` (same SHA-256), ``"changed"`` (different: the file changed since it was
    predicted), or ``"unknown"`` (no record, or the record holds no image hash).
    """
    if not record or not record.get("image_sha256"):
        return "unknown"
    if sha256 is None:
        if data is None:
            return "unknown"
        sha256 = sha256_bytes(data)
    return "match" if str(record["image_sha256"]).lower() == sha256.lower() else "changed"


def provenance_summary(record: Mapping[str, Any], explain_url: Optional[str] = None) -> str:
    """One human-readable line: model, weights and image hashes (first 12 hex digits), settings."""
    def short(h: Any) -> str:
        return str(h)[:12] if h else "none"

    parts = [
        f"model {record.get('model_version')}",
        f"weights sha256 {short(record.get('weights_sha256'))}",
        f"image sha256 {short(record.get('image_sha256'))}",
    ]
    prompt = record.get("prompt")
    if isinstance(prompt, Mapping):
        parts.append(f"click ({prompt.get('positive_points', 0)} positive, {prompt.get('negative_points', 0)} "
                     f"negative point(s){', box' if prompt.get('box') else ''})")
    else:
        parts += [f"sources {record.get('sources_found')} (asked {record.get('sources_requested')})",
                  f"grid {record.get('grid')}", f"seed {record.get('seed')}"]
    parts.append(f"safire-studio {(record.get('library') or {}).get('safire_studio', '?')}")
    if record.get("created_at"):
        parts.append(str(record["created_at"])[:19] + "Z")
    line = "SAFIRE: " + ", ".join(parts)
    url = explain_url or record.get("explain_url")
    if url:
        line += f"; heat map: {url}"
    return line
