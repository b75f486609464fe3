"""What ``safire export`` is told and what it reports.

:class:`ExportRules`: how annotations become source masks (unlabelled pixels, overlaps, empty
annotations, ground truth first, source order; ``docs/dataset-format.md``, section "Label Studio
export rules"). :class:`ExportManifest`: every task of the export ends up in ``samples`` (name,
task id, number of sources, split) or ``skipped`` (id, reason, code); ``to_dict()`` is the dataset's
``manifest.json``, ``summary()`` the command's report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from ml_backend.annotations import ExportError

__all__ = ["ExportManifest", "ExportRules"]


@dataclass
class ExportRules:
    """How annotations become source masks (see docs/dataset-format.md).

    unlabelled: multi mode only. ``"host"``: pixels no brush region covers join the host
        label's source (annotators only paint the foreign sources); ``"ignore"``: they are
        written as 255 in ``sources/``. Binary mode: unpainted pixels are always authentic.
    overlap: multi mode only. ``"last"``: where brush regions overlap, the region later in the
        annotation's ``result`` list wins (paint order); ``"highest"``: the label later in the
        config wins. Binary mode: forged always wins over authentic.
    empty_is_authentic: an annotation without any brush pixels and without an image-level
        "authentic" choice is skipped (False) or taken as an authentic image (True).
    prefer_ground_truth: choose a ``ground_truth`` annotation over more recent ones.
    reindex_by_area: multi mode: renumber sources by decreasing area so 0 is the largest
        (the dataset convention). Binary mode never reorders (0 = authentic, 1 = forged).
    """

    unlabelled: str = "host"
    overlap: str = "last"
    empty_is_authentic: bool = False
    prefer_ground_truth: bool = True
    reindex_by_area: bool = True

    def validate(self) -> None:
        if self.unlabelled not in ("host", "ignore"):
            raise ExportError(f"unlabelled must be 'host' or 'ignore', got {self.unlabelled!r}")
        if self.overlap not in ("last", "highest"):
            raise ExportError(f"overlap must be 'last' or 'highest', got {self.overlap!r}")


@dataclass
class ExportManifest:
    out_dir: str
    total: int
    mode: str
    labels: List[str]
    samples: List[Dict[str, Any]] = field(default_factory=list)  # name, task_id, num_sources, split
    skipped: List[Dict[str, Any]] = field(default_factory=list)  # id, reason, code
    rules: Dict[str, Any] = field(default_factory=dict)
    splits: Dict[str, int] = field(default_factory=dict)
    provenance: Dict[str, Any] = field(default_factory=dict)  # counts by status, changed samples

    @property
    def count(self) -> int:
        return len(self.samples)

    @property
    def num_sources_histogram(self) -> Dict[str, int]:
        hist: Dict[str, int] = {}
        for s in self.samples:
            k = str(s["num_sources"])
            hist[k] = hist.get(k, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: int(kv[0])))

    @property
    def skipped_by_code(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for s in self.skipped:
            out[s["code"]] = out.get(s["code"], 0) + 1
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": "safire-dataset",
            "version": 1,
            "count": self.count,
            "num_sources_histogram": self.num_sources_histogram,
            "labels": list(self.labels),
            "skipped": list(self.skipped),
            "source": "label-studio",
            "mode": self.mode,
            "total_tasks": self.total,
            "authentic": sum(1 for s in self.samples if s["num_sources"] == 1),
            "skipped_by_code": self.skipped_by_code,
            "rules": dict(self.rules),
            "splits": dict(self.splits),
            "provenance": dict(self.provenance),
            "samples": [dict(s) for s in self.samples],
        }

    def summary(self) -> str:
        lines = [
            f"exported {self.count} of {self.total} tasks to {self.out_dir} "
            f"({self.mode} mode; sources histogram {self.num_sources_histogram}; "
            f"splits {self.splits})"
        ]
        changed = self.provenance.get("changed_samples") or []
        if self.provenance:
            lines.append("provenance: " + ", ".join(f"{k} {self.provenance.get(k, 0)}"
                                                    for k in ("match", "changed", "unknown")))
        if changed:
            lines.append(f"WARNING: {len(changed)} image(s) changed since they were predicted "
                         "(SHA-256 of the exported bytes differs from the prediction's):")
            for c in changed[:20]:
                lines.append(f"  {c['name']} (task {c['task_id']}): predicted {str(c['predicted_sha256'])[:16]}..., "
                             f"now {str(c['image_sha256'])[:16]}...")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}: " + ", ".join(
                f"{k} x{v}" for k, v in sorted(self.skipped_by_code.items())))
            for s in self.skipped[:20]:
                lines.append(f"  task {s['id']}: {s['reason']}")
            if len(self.skipped) > 20:
                lines.append(f"  ... {len(self.skipped) - 20} more (see manifest.json)")
        return "\n".join(lines)
