"""The retraining job process: ``python -m ml_backend.retrain --job MODEL_DIR/<p>/jobs/<id>.json``.

Stages (each reported in the job record's ``progress``):

1. export: the project's annotations from Label Studio (``GET /api/projects/<id>/export``) and
   their images, into a dataset folder (``docs/dataset-format.md``) with a seeded train/val split;
   images are downloaded through the server's one download path (``ml_backend/fetch.py``, with the
   download settings the server recorded in the job: allowed hosts and networks, limits);
2. evaluate the parent model on the validation split, and on up to ``SAFIRE_TRAIN_FIT_TASKS`` of
   the training tasks;
3. fine-tune the parent (the project's current version, or the base model) on the training split;
4. evaluate the new model on the same validation split and training tasks (``fit`` in the record:
   did it learn the annotations it saw? :func:`training_fit`);
5. decide (:func:`decide`) and publish ``MODEL_DIR/<project>/<version>/`` atomically with a
   manifest (metrics before/after, the decision, data counts, parent version, training config,
   timings). Only a child whose validation pmIoU (K given, :data:`PROMOTION_METRIC`)
   beats its parent's by more than ``SAFIRE_TRAIN_MIN_GAIN`` becomes current (``outcome:
   published``); any other is kept as a ``candidate`` that ``GET /versions`` lists with the reason,
   and the serving version stays. With fewer than ``SAFIRE_TRAIN_MIN_TASKS`` usable annotated tasks
   the job trains nothing and says so (``outcome: not_enough_data``).

The job record ends with ``outcome``, ``decision`` (metric, before, after, gain, reason),
``metrics`` (before/after summaries on validation) and ``fit`` (the same on training tasks). A
published version serves the project's next predictions and clicks; predictions already stored in Label Studio are not redone (run Retrieve Predictions
again for that).

Any failure marks the job failed with its error; nothing is published, the serving model stays.
The Label Studio key comes from the environment (``LABEL_STUDIO_API_KEY``), never from the record.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from .jobs import read_json, write_json_atomic


class JobRecord:
    def __init__(self, path: Path) -> None:
        self.path = path
        rec = read_json(path)
        if rec is None:
            raise SystemExit(f"job record not found or unreadable: {path}")
        self.rec: Dict[str, Any] = rec

    def update(self, **kw: Any) -> None:
        self.rec.update(kw)
        write_json_atomic(self.path, self.rec)

    def progress(self, **kw: Any) -> None:
        self.update(progress={**self.rec.get("progress", {}), **kw, "updated": time.time()})


def _summary(metrics: Dict[str, float]) -> Dict[str, float]:
    keep = ("miou_auto", "ari_auto", "miou_k", "ari_k", "f1_fixed", "f1_best", "image_auc", "auth_split_rate", "count")
    return {k: round(float(v), 4) for k, v in metrics.items() if k in keep}


#: The validation metric that decides promotion: mean permuted mIoU with the annotated number of
#: sources (K given) over the validation images. It measures the quality of the source masks
#: (what clicks and pre-annotations are made of) without the automatic source count, whose
#: thresholds a child inherits from its parent and which ties parent and child on small splits.
PROMOTION_METRIC = "miou_k"
#: Used when every validation image is authentic (no pmIoU is defined there): the share of them the
#: automatic partition keeps whole (``1 - auth_split_rate``).
FALLBACK_METRIC = "authentic_kept_whole"


@dataclass
class Decision:
    """What a job did with its fine-tuned child.

    outcome: ``published`` (served from now on), ``candidate`` (kept, not served) or
        ``not_enough_data`` (nothing trained).
    reason: one sentence for the analyst (job record, ``/versions``).
    metric / before / after / gain: the deciding validation metric of parent and child (None
        when not measured); ``val_images``: validation images it was measured on.
    """

    outcome: str
    reason: str
    metric: str = PROMOTION_METRIC
    before: Optional[float] = None
    after: Optional[float] = None
    gain: Optional[float] = None
    val_images: int = 0


def too_few(samples: int, min_tasks: int) -> Optional[Decision]:
    """A ``not_enough_data`` decision when ``samples`` usable annotated tasks are below ``min_tasks``."""
    if samples >= min_tasks:
        return None
    return Decision("not_enough_data",
                    f"only {samples} usable annotated task(s); fine-tuning needs at least {min_tasks} "
                    "(SAFIRE_TRAIN_MIN_TASKS) to train and to check the result on held-out tasks: "
                    "annotate more tasks and start training again")


def decide(before: Dict[str, float], after: Dict[str, float], min_gain: float = 0.0,
           metric: str = PROMOTION_METRIC) -> Decision:
    """Promote the child only if its validation ``metric`` beats the parent's by more than ``min_gain``.

    ``before`` / ``after``: :func:`training.evaluate.evaluate_partition` summaries of parent and
    child on the same validation split (empty when there was none). No validation, or no gain above
    ``min_gain`` (a tie included), keeps the child as a candidate.
    """
    n = int(after.get("count", 0) or 0)
    if (metric not in before or metric not in after) and "auth_split_rate" in before and "auth_split_rate" in after:
        metric = FALLBACK_METRIC  # only authentic validation images: no pmIoU is defined there
        before = {metric: 1.0 - float(before["auth_split_rate"])}
        after = {metric: 1.0 - float(after["auth_split_rate"])}
    if metric not in before or metric not in after or n == 0:
        return Decision("candidate", "no validation split to compare parent and child on; kept as a "
                        "candidate (raise SAFIRE_VAL_FRACTION or annotate more tasks)", metric, val_images=n)
    b, a = float(before[metric]), float(after[metric])
    gain = a - b
    text = f"validation {metric} {b:.3f} -> {a:.3f} ({gain:+.3f}) on {n} held-out task(s)"
    if gain > min_gain:
        return Decision("published", f"{text}: better than its parent, now serving", metric,
                        round(b, 4), round(a, 4), round(gain, 4), n)
    return Decision("candidate", f"{text}: not better than its parent by more than {min_gain:g} "
                    "(SAFIRE_TRAIN_MIN_GAIN); kept as a candidate, the serving version stays",
                    metric, round(b, 4), round(a, 4), round(gain, 4), n)


#: Training tasks (the project's own, not replayed composites) on which parent and child are also
#: evaluated after fine-tuning (``SAFIRE_TRAIN_FIT_TASKS``; 0: not measured).
FIT_TASKS = 10
#: Below this gain on its own training tasks, a child is reported as not having learned them.
FIT_MIN_GAIN = 0.05


def training_fit(before: Dict[str, float], after: Dict[str, float], metric: str = PROMOTION_METRIC,
                 min_gain: float = FIT_MIN_GAIN) -> Dict[str, Any]:
    """How well the child learned the tasks it was trained on, next to its parent.

    ``before`` / ``after``: evaluation summaries of parent and child on the same training tasks.
    Returns ``{"metric", "before", "after", "gain", "tasks", "learned", "note"}`` (empty when not
    measured). ``learned`` is False when the child gained less than ``min_gain`` on the very tasks
    it saw: the validation gain cannot then come from the annotations, and more annotations will
    not help as much as more training (steps, larger crops, a GPU).
    """
    if metric not in before or metric not in after:
        return {}
    b, a = float(before[metric]), float(after[metric])
    gain = a - b
    learned = gain >= min_gain
    note = (f"on {int(after.get('count', 0))} of its own training tasks {metric} {b:.3f} -> {a:.3f} ({gain:+.3f}): "
            + ("it learned them" if learned else
               "it did not learn them (gain below {:g}): more training (SAFIRE_TRAIN_STEPS, a GPU) "
               "would help more than more annotations".format(min_gain)))
    return {"metric": metric, "before": round(b, 4), "after": round(a, 4), "gain": round(gain, 4),
            "tasks": int(after.get("count", 0)), "learned": learned, "note": note,
            "summary": {"before": before, "after": after}}


def with_replay(train_set: Any, share: float, seed: int = 0) -> "tuple[Any, int]":
    """The project's training samples plus generated composites of the default's training recipe.

    ``share`` (``SAFIRE_TRAIN_REPLAY``, 0..0.9) is the fraction of training samples that are
    *replayed*: synthetic multi-source composites (all manipulation kinds of the default recipe,
    authentic ones included) of the training photos (``training.synth_reader``; the bundled photos
    when the pool is not installed), generated once and kept in memory. They remind the model of
    what it knew, so that learning the project's forgeries does not unlearn the rest. Returns the
    reader to train on and the number of replayed composites.
    """
    if share <= 0.0 or len(train_set) == 0:
        return train_set, 0
    from training.prompt_data import ConcatReader
    from training.repeat import RepeatReader
    from training.synth_reader import SynthReader

    n = max(8, min(400, int(round(len(train_set) * share / max(1e-6, 1.0 - share)))))
    replay = RepeatReader(SynthReader("train", n=n, seed=seed, sources=(1, 4), authentic_fraction=0.2,
                                      size_range=(256, 512)), 1, cache_size=n)
    return ConcatReader([train_set, replay]), n


def run_job(job: JobRecord) -> Dict[str, Any]:
    import torch

    from safire.build import build_safire
    from training.datasets import SafireDataset
    from training.evaluate import evaluate_partition
    from training.train import TrainConfig, fine_tune

    from .export import export_dataset
    from .lsclient import LabelStudioClient
    from .jobs import project_id
    from .models import publish_version
    from .settings import DOWNLOAD_FIELDS, download_settings

    def evaluate(model: Any, data: Any, limit: Optional[int] = None) -> Dict[str, float]:
        return _summary(evaluate_partition(model, data, limit=limit).summary)

    rec = job.rec
    project = project_id(rec["project"])
    train_cfg = rec.get("train", {})
    if int(train_cfg.get("threads", 0)) > 0:
        torch.set_num_threads(int(train_cfg["threads"]))
    work = Path(rec["log"]).with_suffix("")  # MODEL_DIR/<p>/jobs/<id>/
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.time()

    # 1. export
    job.progress(stage="export")
    url = rec.get("label_studio_url") or os.environ.get("LABEL_STUDIO_URL", "")
    key = os.environ.get("LABEL_STUDIO_API_KEY", "")
    if not url or not key:
        raise RuntimeError("retraining needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to export the project")
    # the server's download rules (ml_backend/fetch.py): the same host, address, redirect and size checks
    fetch_rules = rec.get("fetch") or {}
    download = download_settings(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in fetch_rules.items()
                                    if k in DOWNLOAD_FIELDS})
    client = LabelStudioClient(url, key, download=download)
    label_config = rec.get("label_config")
    if not label_config:
        label_config = client.get_project(int(project)).get("label_config")
    tasks = client.export_tasks(int(project))
    manifest = export_dataset(tasks, str(work / "dataset"), client.fetch_image, label_config=label_config,
                              val_fraction=float(train_cfg.get("val_fraction", 0.2)), seed=0,
                              log=lambda s: print(s, flush=True), max_pixels=client.max_pixels)
    counts = {"tasks": manifest.total, "samples": manifest.count, "skipped": len(manifest.skipped),
              "splits": dict(manifest.splits), "num_sources": manifest.num_sources_histogram,
              # Label Studio ids of the tasks held out to validate (never trained on)
              "val_tasks": sorted(int(x["task_id"]) for x in manifest.samples if x.get("split") == "val"
                                  and str(x.get("task_id", "")).isdigit())}
    job.progress(stage="exported", data=counts)
    print(f"exported {counts}", flush=True)
    if manifest.count == 0:
        reasons = sorted({s.get("code", s.get("reason")) for s in manifest.skipped})
        raise RuntimeError(f"no usable annotations to train on ({manifest.total} tasks; skipped: {reasons})")
    few = too_few(manifest.count, int(train_cfg.get("min_tasks", 10)))
    if few is not None:
        print(few.reason, flush=True)
        return {"version": None, "outcome": few.outcome, "decision": asdict(few), "data": counts}
    train_set = SafireDataset(str(work / "dataset"), split="train")
    replay_share = float(train_cfg.get("replay", 0.0))
    train_data, replay_n = with_replay(train_set, replay_share, seed=int(time.time()) % 100_000)
    counts["replay"] = replay_n
    val_set = SafireDataset(str(work / "dataset"), split="val") if manifest.splits.get("val") else None

    # 2. parent model and its validation metrics
    parent = build_safire(checkpoint=rec["parent_checkpoint"], device="cpu") if rec.get("parent_checkpoint") \
        else build_safire(rec.get("parent_variant"), None, "cpu", use_default=True)
    before: Dict[str, float] = {}
    if val_set is not None and len(val_set):
        job.progress(stage="evaluate_before")
        before = evaluate(parent.eval(), val_set)
    fit_n = min(len(train_set), max(0, int(train_cfg.get("fit_tasks", FIT_TASKS))))
    fit_before: Dict[str, float] = {}
    if fit_n:
        job.progress(stage="fit_before")
        fit_before = evaluate(parent.eval(), train_set, fit_n)

    # 3. fine-tune
    version = f"{project}-{time.strftime('%Y%m%d-%H%M%S')}"
    steps = int(train_cfg.get("steps", 300))
    cfg = TrainConfig(
        out_dir=str(work / "train"), steps=steps, batch_size=int(train_cfg.get("batch_size", 4)),
        lr=float(train_cfg.get("lr", 1e-4)), trainable=str(train_cfg.get("trainable", "adapter+decoder")),
        warmup_steps=min(20, max(1, steps // 10)), workers=0, log_every=max(1, min(20, steps // 10)),
        val_every=10**9, save_every=10**9, device=str(train_cfg.get("device", "cpu")), model_version=version,
        augment=True, seed=0,
    )
    job.progress(stage="train", step=0, steps=steps)
    result = fine_tune(train_data, None, cfg, model=parent.train(),
                       progress=lambda p: job.progress(stage="train", **{k: (round(v, 5) if isinstance(v, float) else v)
                                                                         for k, v in p.items()}),
                       log=lambda s: print(s, flush=True))

    # 4. evaluate the new model
    after: Dict[str, float] = {}
    fit_after: Dict[str, float] = {}
    has_val = val_set is not None and len(val_set) > 0
    if has_val or fit_n:
        new = build_safire(checkpoint=result.last_checkpoint, device="cpu")
        if has_val:
            job.progress(stage="evaluate_after")
            after = evaluate(new, val_set)
        if fit_n:
            job.progress(stage="fit_after")
            fit_after = evaluate(new, train_set, fit_n)
    fit = training_fit(fit_before, fit_after)
    if fit:
        print(fit["note"], flush=True)

    # 5. decide, publish (current only if better)
    decision = decide(before, after, float(train_cfg.get("min_gain", 0.0)))
    print(decision.reason, flush=True)
    job.progress(stage="publish")
    pub_manifest = {
        "version": version,
        "status": "published" if decision.outcome == "published" else "candidate",
        "decision": asdict(decision),
        "project": project,
        "parent_version": rec.get("parent_version"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "job": rec["id"],
        "reason": rec.get("reason"),
        "data": counts,
        "metrics": {"before": before, "after": after},
        "fit": fit,
        "train": {"steps": result.steps, "seconds": round(result.seconds, 1),
                  "images_per_second": round(result.images_per_second, 3), **train_cfg},
        "seconds_total": round(time.time() - t0, 1),
    }
    publish_version(rec["model_dir"], project, version, result.last_checkpoint, pub_manifest,
                    make_current=decision.outcome == "published")
    shutil.rmtree(work / "train", ignore_errors=True)
    return {"version": version, "outcome": decision.outcome, "decision": asdict(decision),
            "metrics": {"before": before, "after": after}, "fit": fit, "data": counts,
            "train_seconds": round(result.seconds, 1)}


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ml_backend.retrain")
    p.add_argument("--job", required=True, help="job record (JSON) written by JobManager.submit")
    args = p.parse_args(argv)
    job = JobRecord(Path(args.job))
    job.update(state="running", started=time.time(), pid=os.getpid())
    print(f"job {job.rec['id']} for project {job.rec['project']} started (pid {os.getpid()})", flush=True)
    try:
        out = run_job(job)
    except BaseException as e:  # noqa: BLE001 - the record must say why, whatever happened
        traceback.print_exc()
        job.update(state="failed", finished=time.time(), error=f"{type(e).__name__}: {e}",
                   progress={**job.rec.get("progress", {}), "stage": "failed"})
        return 1
    job.update(state="succeeded", finished=time.time(), **out,
               progress={**job.rec.get("progress", {}), "stage": "done"})
    print(f"job done: {out['outcome']} (version {out['version']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
