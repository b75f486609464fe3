"""One image file -> one Label Studio prediction with its provenance, outside the HTTP server.

:func:`preannotate_image` is what a bulk pre-annotation (a script that writes predictions for many
tasks and imports them into Label Studio) calls per image: it decodes the bytes the way the
backend does (EXIF orientation applied, as the editor shows the image), partitions them with the
project's settings (per-source maps at a bounded working resolution, masks at the original size),
builds the Label Studio prediction and attaches the same provenance record the backend attaches
(:func:`ml_backend.predictions.attach_provenance`; fields in ``docs/provenance.md``), so
predictions made in bulk and by the server are indistinguishable in what they record.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Mapping, Optional, Union

from safire.io import load_image

from .label_config import LabelConfigSpec, parse_label_config
from .predictions import attach_provenance, partition_to_prediction

__all__ = ["preannotate_image"]


def preannotate_image(
    model: Any,
    data: bytes,
    spec: Union[LabelConfigSpec, str],
    *,
    predictor: Any = None,
    model_version: Optional[str] = None,
    sources: Union[int, str, None] = None,
    grid: Optional[int] = None,
    seed: int = 0,
    weights_path: Optional[str] = None,
    extra: Optional[Mapping[str, Any]] = None,
    max_pixels: int = 40_000_000,
    map_bytes: int = 256 * 2**20,
    prediction_score: str = "forgery",
) -> Dict[str, Any]:
    """The prediction (``{"result", "score", "model_version", "uncertainty", "provenance"}``) for one image file.

    Args:
        model: a :class:`safire.modeling.Safire` (``safire.build_safire(...)``).
        data: the image file's bytes exactly as downloaded (they are what ``image_sha256`` hashes).
        spec: the project's label config (XML or parsed).
        predictor: a :class:`safire.predictor.SafirePredictor` to reuse (default: a new one, no cache).
        model_version: the version to record (default ``model.meta["model_version"]``).
        sources, grid: default the config's ``safire_sources`` / ``safire_grid`` (binary configs
            without ``safire_sources`` use two sources with the authentic gate, like the backend).
        seed: clustering seed. weights_path: the weights file, if not ``model.meta["checkpoint"]``.
        extra: added to the record (e.g. ``{"project": "3", "task_id": 41}``).
        prediction_score: what ``score`` holds, ``"forgery"`` or ``"uncertainty"``
            (``SAFIRE_PREDICTION_SCORE``; :func:`ml_backend.predictions.partition_to_prediction`).
    """
    from safire.partition import calibrated_defaults, partition
    from safire.predictor import SafirePredictor
    from safire.provenance import build_provenance

    from .runtime import work_hw

    spec = parse_label_config(spec) if isinstance(spec, str) else spec
    version = str(model_version or (getattr(model, "meta", None) or {}).get("model_version") or "unknown")
    tune: Dict[str, Any] = {"seed": int(seed), "grid_size": int(grid or spec.grid_size)}
    k: Union[int, str] = spec.num_sources if sources is None else sources
    if sources is None and spec.mode == "binary" and spec.num_sources == "auto":
        k, tune["gate_authentic"] = 2, True
    if spec.authentic_threshold is not None:
        tune["single_source_threshold"] = float(spec.authentic_threshold)
    t0 = time.perf_counter()
    image = load_image(data, max_pixels=max_pixels, exif_transpose=True)
    t1 = time.perf_counter()
    predictor = predictor or SafirePredictor(model, cache_bytes=0)
    orig_hw = (int(image.shape[0]), int(image.shape[1]))
    k_max = k if isinstance(k, int) else int({**calibrated_defaults(model), **tune}.get("max_sources", 4))
    work = work_hw(orig_hw, k_max, map_bytes)
    res = partition(predictor, image, k, out_hw=None if work == orig_hw else work, **tune)
    del image
    t2 = time.perf_counter()
    pred = partition_to_prediction(res, spec, version, out_hw=orig_hw, prediction_score=prediction_score)
    t3 = time.perf_counter()
    timings = {"decode": t1 - t0, **{f"partition_{a}": b for a, b in res.timings.items() if a != "total"},
               "partition": t2 - t1, "rle": t3 - t2, "total": t3 - t0}
    record = build_provenance(
        model=model, image_bytes=data, image_size=orig_hw, sources_requested=k, sources_found=res.num_sources,
        grid=tune["grid_size"], seed=tune["seed"],
        partition_settings={**calibrated_defaults(model), **{a: b for a, b in tune.items() if a not in ("grid_size", "seed")}},
        score=res.score, timings=timings, model_version=version, weights_path=weights_path, exif_transpose=True,
        extra={"kind": "preannotation", "work_resolution": list(work), "uncertainty": round(float(res.uncertainty), 6),
               "prediction_score": prediction_score, **dict(extra or {})})
    return attach_provenance(pred, record, spec)
