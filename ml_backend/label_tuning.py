"""The backend's tuning attributes of a labeling config: the ``safire_*`` attributes of the
BrushLabels tag (mode, number of sources, grid, thresholds, minimum area; the table is in
:mod:`ml_backend.label_config`'s docstring).

:func:`_parse_tuning` reads them from the tag into the keyword arguments of
:class:`ml_backend.label_config.LabelConfigSpec` (``mode`` str, ``num_sources`` ``"auto"`` or int
1..16, ``grid_size`` int 2..64, ``threshold`` / ``authentic_threshold`` float in (0, 1),
``min_area`` float in [0, 0.5]) and appends every invalid or unknown attribute to ``problems``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Dict, List

__all__ = ["TUNING_ATTRIBUTES"]

TUNING_ATTRIBUTES: Dict[str, str] = {
    "safire_mode": "auto | multi | binary",
    "safire_sources": "auto | integer 1..16",
    "safire_grid": "integer 2..64",
    "safire_threshold": "float in (0, 1)",
    "safire_min_area": "float in [0, 0.5]",
    "safire_authentic_threshold": "float in (0, 1)",
}


def _parse_tuning(brush: ET.Element, problems: List[str]) -> dict:
    out: dict = {}
    for key, raw in brush.attrib.items():
        if not key.lower().startswith("safire_"):
            continue
        name = key.lower()
        val = raw.strip()
        where = f'BrushLabels attribute {key}="{raw}"'
        if name == "safire_mode":
            if val.lower() not in ("auto", "multi", "binary"):
                problems.append(f"{where}: expected auto, multi or binary")
            else:
                out["mode"] = val.lower()
        elif name == "safire_sources":
            if val.lower() == "auto":
                out["num_sources"] = "auto"
            else:
                try:
                    n = int(val)
                except ValueError:
                    problems.append(f'{where}: expected "auto" or an integer 1..16')
                else:
                    if 1 <= n <= 16:
                        out["num_sources"] = n
                    else:
                        problems.append(f"{where}: number of sources must be within 1..16")
        elif name == "safire_grid":
            try:
                g = int(val)
            except ValueError:
                problems.append(f"{where}: expected an integer 2..64")
            else:
                if 2 <= g <= 64:
                    out["grid_size"] = g
                else:
                    problems.append(f"{where}: grid size must be within 2..64")
        elif name in ("safire_threshold", "safire_authentic_threshold"):
            try:
                t = float(val)
            except ValueError:
                problems.append(f"{where}: expected a number in (0, 1)")
            else:
                if 0 < t < 1:
                    out["threshold" if name == "safire_threshold" else "authentic_threshold"] = t
                else:
                    problems.append(f"{where}: threshold must be strictly between 0 and 1")
        elif name == "safire_min_area":
            try:
                a = float(val)
            except ValueError:
                problems.append(f"{where}: expected a fraction in [0, 0.5]")
            else:
                if 0 <= a <= 0.5:
                    out["min_area"] = a
                else:
                    problems.append(f"{where}: min area must be a fraction within [0, 0.5]")
        else:
            problems.append(
                f"BrushLabels has unknown attribute {key!r}; accepted: " + ", ".join(TUNING_ATTRIBUTES)
            )
    return out

