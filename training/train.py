"""Point-prompt training of SAFIRE (stage 2), optionally with the region-to-region contrastive loss
on the encoder features as an auxiliary term (stage 1 folded in; ``--r2r-weight``).

Runs as one process on CPU, and unchanged under ``torchrun --nproc-per-node N`` (DDP: gloo on CPU,
nccl on GPU; bf16/fp16 autocast on GPU with ``--amp``). The function API is :func:`fine_tune`; the
CLIs ``python -m training.train`` and ``safire train`` wrap it.

Checkpoints (our format, written atomically) go to ``OUT/last.pt`` (with optimizer, scheduler,
step and RNG state: ``--resume`` continues from it) and ``OUT/best.pt`` (best validation mIoU).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from safire.build import build_safire, resolve_device
from safire.checkpoint import read_checkpoint, save_checkpoint
from safire.modeling import Safire

from .evaluate import evaluate_partition
from .losses import r2r_contrastive_loss, safire_loss
from .prompt_data import PromptSampleConfig, PromptTrainingSet
from .repeat import RepeatBatchOrder, RepeatReader

TRAINABLE_CHOICES = ("all", "adapter+decoder", "decoder")


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in checkpoints' provenance)."""

    out_dir: str = "runs/train"
    variant: str = "tiny"
    init_checkpoint: Optional[str] = None  # any checkpoint safire loads (official safire.pth too)
    trainable: str = "all"  # all | adapter+decoder (paper) | decoder (official code)
    steps: int = 1000
    batch_size: int = 8
    num_pairs: int = 3
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    restart_period: int = 0  # cosine warm-restart period T_0 in steps (0: one cosine over the run)
    restart_mult: int = 2
    min_lr: float = 1e-6
    lambda_conf: float = 0.1
    aass_variant: str = "official"
    r2r_weight: float = 0.0
    r2r_tau: float = 0.1
    point_mask_mode: str = "exact"
    augment: bool = True
    seed: int = 2024
    workers: int = 1
    amp: bool = False
    grad_clip: float = 0.0  # 0 = off (as official); clipping slowed escaping the initial plateau
    log_every: int = 20
    val_every: int = 250
    save_every: int = 250
    val_limit: int = 48
    val_grid: int = 16
    device: str = "auto"
    model_version: str = ""
    resume: bool = False
    # Native variants: share of steps whose prompts are decoded on the embedding average-pooled 2x
    # (the partition's grid pass on large images decodes on a pooled embedding).
    pool_prob: float = 0.0
    # Wall-clock budget: stop (and save last.pt) after this many seconds of training (0: none).
    max_seconds: float = 0.0
    # With max_seconds: the cosine schedule follows elapsed time (progress = max(step / steps,
    # seconds / max_seconds)), so a time-boxed run anneals fully whatever its throughput.
    time_schedule: bool = False
    # Native variants: side of the square training crops (0: the config's img_size; multiple of 16).
    crop_size: int = 0
    # Serve each training item this many times, as different crops and prompts (training.repeat):
    # with generated data (synth:...) the same CPU work then feeds `repeat` times as many samples.
    repeat: int = 1
    # Gradient accumulation: one optimizer step every ``accum_steps`` batches (the effective batch is
    # batch_size x accum_steps). ``steps``, logging, validation and saving count optimizer steps.
    accum_steps: int = 1


@dataclass
class TrainResult:
    out_dir: str
    last_checkpoint: str
    best_checkpoint: Optional[str]
    steps: int
    seconds: float
    images_per_second: float
    history: List[Dict[str, float]] = field(default_factory=list)
    val_metrics: Dict[str, float] = field(default_factory=dict)
    best_val: Dict[str, float] = field(default_factory=dict)


# -- distributed helpers --------------------------------------------------------------------------
def dist_init(device: torch.device) -> tuple[int, int]:
    """Initialise torch.distributed when launched by torchrun; returns (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


#: Parameter prefixes of the native encoder that ``adapter+decoder`` trains: the forensic front end
#: (constrained convolution) and the convolutional stages to stride 8, where camera and JPEG traces
#: are read (about 150 k parameters).
NATIVE_ADAPTER = ("front.", "patch4.", "norm4.", "down8.", "norm8.", "block8.")


def set_trainable(model: Safire, mode: str) -> List[torch.nn.Parameter]:
    """Freeze per ``mode`` and return the trainable parameters.

    - ``all``: encoder, adapter and decoder (from-scratch training);
    - ``adapter+decoder``: the paper's stage 2 (ViT backbone, neck, patch/pos embeddings frozen);
      in the ``native`` encoder, whose forensic front end plays the adapter's part, the trainable
      "adapter" is that front end and the convolutional stages up to stride 8 (:data:`NATIVE_ADAPTER`)
      and the windowed-attention blocks and neck stay frozen;
    - ``decoder``: the official code's effective stage 2 (only the mask decoder).
    The prompt encoder's box and mask parts and the unused multimask tokens are always frozen.
    """
    if mode not in TRAINABLE_CHOICES:
        raise ValueError(f"trainable must be one of {TRAINABLE_CHOICES}, got {mode!r}")
    for name, p in model.named_parameters():
        if name.startswith("image_encoder."):
            local = name[len("image_encoder."):]
            p.requires_grad_(mode == "all" or (mode == "adapter+decoder"
                                               and local.startswith(("adaptor", "hfp_") + NATIVE_ADAPTER)))
        elif name.startswith("prompt_encoder."):
            p.requires_grad_(mode == "all" and name.startswith(("prompt_encoder.point_embeddings.0", "prompt_encoder.point_embeddings.1", "prompt_encoder.not_a_point_embed")))
        else:
            p.requires_grad_(True)
    for i in range(1, model.mask_decoder.num_mask_tokens):
        for p in model.mask_decoder.output_hypernetworks_mlps[i].parameters():
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def lr_at(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Linear warm-up, then cosine annealing with warm restarts (T_0 = restart_period, x mult).

    With ``cfg.time_schedule`` and ``cfg.max_seconds``, the position in the (single) cosine is the
    larger of the step and the time fraction (``elapsed`` seconds of ``max_seconds``)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = step - cfg.warmup_steps
    period = cfg.restart_period or max(1, cfg.steps - cfg.warmup_steps)
    max_s = getattr(cfg, "max_seconds", 0.0)  # (PretrainConfig has no time budget)
    if getattr(cfg, "time_schedule", False) and max_s > 0 and not cfg.restart_period:
        frac = min(1.0, max(t / period, elapsed / max_s))
    else:
        while t >= period:
            t -= period
            period *= max(1, cfg.restart_mult)
        frac = t / period
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))


class ResumableSampler(Sampler):
    """Wraps a sampler so that a resumed run continues mid-epoch where the interrupted one stopped.

    ``skip_next(n)`` makes the next pass start at position ``n`` of the epoch's (seeded) order; only
    indices are skipped, no sample is loaded for them. Other passes are the base sampler's.
    """

    def __init__(self, base: Sampler, seed: int) -> None:
        self.base = base
        self._seed = int(seed)  # a RandomSampler's order in epoch e is seeded with seed * 1000 + e
        self._skip = 0

    def skip_next(self, n: int) -> None:
        self._skip = max(0, int(n))

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)
        if isinstance(self.base, RandomSampler):
            self.base.generator = torch.Generator().manual_seed(self._seed * 1000 + epoch)

    def __iter__(self):
        skip, self._skip = self._skip, 0
        return itertools.islice(iter(self.base), skip, None)

    def __len__(self) -> int:
        return len(self.base)


def _collate(batch: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


def _rng_state() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist()}


def fine_tune(
    train_data: Sequence[Any],
    val_data: Optional[Sequence[Any]] = None,
    cfg: Optional[TrainConfig] = None,
    *,
    model: Optional[Safire] = None,
    progress: Optional[Callable[[Dict[str, Any]], None]] = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train or fine-tune a SAFIRE model.

    Args:
        train_data / val_data: readers whose items have ``image`` (HxWx3 uint8) and ``labels``
            (HxW uint8 source index, 255 = ignore) - e.g. ``training.datasets.open_dataset(path)``.
        cfg: :class:`TrainConfig`. ``cfg.init_checkpoint`` (or ``model``) is the starting point;
            otherwise ``cfg.variant`` with random weights.
        progress: called on rank 0 after each logged step and validation with a dict
            (step, steps, loss, ..., val metrics) - the retraining job reports it over HTTP.
    Returns:
        :class:`TrainResult` (paths of last/best checkpoints, throughput, history, metrics).
    """
    cfg = cfg or TrainConfig()
    device = resolve_device(cfg.device)
    rank, world = dist_init(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    is_main = rank == 0
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: pick the fastest convolutions once
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    out = Path(cfg.out_dir)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)

    resume_path = out / "last.pt"
    resume_state = None
    if cfg.resume and resume_path.is_file():
        ck = read_checkpoint(resume_path)
        model = build_safire(checkpoint=ck, device="cpu")
        resume_state = torch.load(resume_path, map_location="cpu", weights_only=True).get("train_state")
        log(f"resuming from {resume_path} at step {resume_state['step'] if resume_state else 0}")
    elif model is None:
        model = build_safire(cfg.variant if not cfg.init_checkpoint else None, cfg.init_checkpoint, "cpu")
    model = model.to(device)
    variant = model.meta.get("variant", cfg.variant)
    params = set_trainable(model, cfg.trainable)
    model.train()

    mc = model.config
    img_size, mask_size, embed_size = mc.img_size, model.mask_size, model.embedding_size
    if cfg.crop_size:
        if not model.native or cfg.crop_size % mc.patch_size:
            raise ValueError(f"crop_size needs a native variant and a multiple of {mc.patch_size}")
        img_size, embed_size = cfg.crop_size, cfg.crop_size // mc.patch_size
        mask_size = 4 * embed_size
    if cfg.repeat > 1:
        train_data = RepeatReader(train_data, cfg.repeat, cache_size=cfg.batch_size)
    sample_cfg = PromptSampleConfig(
        img_size=img_size, mask_size=mask_size, embed_size=embed_size,
        num_pairs=cfg.num_pairs, point_mask_mode=cfg.point_mask_mode, augment=cfg.augment, seed=cfg.seed,
        native=model.native,
    )
    train_set = PromptTrainingSet(train_data, sample_cfg)
    if len(train_set) == 0:
        raise ValueError("the training set is empty")
    if world > 1:  # (with --repeat: correct, but each rank regenerates items it misses in its cache)
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=False)
    elif cfg.repeat > 1:
        sampler = RepeatBatchOrder(len(train_set), cfg.repeat, cfg.batch_size, cfg.workers, seed=cfg.seed)
    else:
        sampler = RandomSampler(train_set, replacement=False, generator=torch.Generator().manual_seed(cfg.seed))
    sampler = ResumableSampler(sampler, cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        collate_fn=_collate, drop_last=len(train_set) // world >= cfg.batch_size,
                        persistent_workers=False, pin_memory=device.type == "cuda")

    net: torch.nn.Module = model
    if world > 1:
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # --amp: bf16 autocast on CPU (AMX/AVX512-BF16: about 1.9x on our 2-core machines for the
    # native variant) and on GPUs that support it, else fp16 with a grad scaler.
    use_amp = cfg.amp and device.type in ("cuda", "cpu")
    amp_dtype = (torch.bfloat16 if device.type == "cpu" or (use_amp and torch.cuda.is_bf16_supported())
                 else torch.float16)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    step, epoch, epoch_step = 0, 0, 0
    best_val: Dict[str, float] = {}
    history: List[Dict[str, float]] = []
    if resume_state:
        opt.load_state_dict(resume_state["optimizer"])
        step, epoch = int(resume_state["step"]), int(resume_state["epoch"])
        best_val = dict(resume_state.get("best_val") or {})
        history = list(resume_state.get("history") or [])
        # batches already taken from the interrupted epoch (older checkpoints: derived from the step)
        epoch_step = int(resume_state.get("epoch_step", step - epoch * len(loader)))
        sampler.skip_next(epoch_step * cfg.batch_size)

    gen = torch.Generator().manual_seed(cfg.seed + rank)
    version = cfg.model_version or f"{variant}-{time.strftime('%Y%m%d-%H%M%S')}"
    provenance = {"train_config": dataclasses.asdict(cfg), "world_size": world,
                  "init": cfg.init_checkpoint or model.meta.get("model_version")}

    def save(path: Path, metrics: Dict[str, float]) -> None:
        state = {"optimizer": opt.state_dict(), "step": step, "epoch": epoch, "epoch_step": epoch_step,
                 "best_val": best_val, "history": history[-200:]}
        save_checkpoint(model, path, variant=variant, config=mc, model_version=version,
                        provenance={**provenance, "step": step}, metrics=metrics,
                        extra={"train_state": state} if path.name == "last.pt" else None,
                        partition=model.meta.get("partition"))  # the parent's calibration, if any

    t_start = time.perf_counter()
    seen = 0
    window_loss: List[Dict[str, float]] = []
    last_val: Dict[str, float] = {}
    data_wait = 0.0  # seconds spent waiting for batches (the data pipeline's share of the time)
    accum = max(1, int(cfg.accum_steps))
    micro = 0  # batches accumulated since the last optimizer step
    while step < cfg.steps:
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        t_wait = time.perf_counter()
        for batch in loader:
            data_wait += time.perf_counter() - t_wait
            if micro == 0:  # at an optimizer-step boundary
                if step >= cfg.steps:
                    break
                if cfg.max_seconds and time.perf_counter() - t_start > cfg.max_seconds:
                    log(f"time budget of {cfg.max_seconds:.0f} s reached at step {step}")
                    if is_main:
                        save(out / "last.pt", last_val)
                    break
                lr = lr_at(step, cfg, time.perf_counter() - t_start)
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.zero_grad(set_to_none=True)
            images = batch["image"].to(device, non_blocking=True).float()
            points = batch["points"].to(device)
            targets = batch["targets"].to(device).long()
            labels = torch.ones(points.shape[:2], device=device)
            pool = 2 if model.native and cfg.pool_prob > 0 and torch.rand((), generator=gen) < cfg.pool_prob else 1
            if pool > 1:  # stride-8 logits: nearest targets at the pooled cells' pixel centres
                targets = targets[..., 1::2, 1::2]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits, scores, emb = net(images, points, labels, pool) if pool > 1 else net(images, points, labels)
            loss, parts = safire_loss(logits.float(), scores.float(), targets, lambda_conf=cfg.lambda_conf,
                                      variant=cfg.aass_variant)
            if cfg.r2r_weight > 0:
                l_r2r = r2r_contrastive_loss(emb.float(), batch["sources"].to(device), tau=cfg.r2r_tau, generator=gen)
                loss = loss + cfg.r2r_weight * l_r2r
                parts["r2r"] = l_r2r.detach()
            scaler.scale(loss / accum).backward()
            micro += 1
            epoch_step += 1
            seen += images.shape[0] * world
            window_loss.append({k: float(v) for k, v in parts.items()})
            if micro < accum:
                t_wait = time.perf_counter()
                continue
            micro = 0
            if cfg.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            step += 1
            if is_main and (step % cfg.log_every == 0 or step == cfg.steps):
                elapsed = time.perf_counter() - t_start
                avg = {k: float(np.mean([w[k] for w in window_loss])) for k in window_loss[0]}
                window_loss.clear()
                rec = {"step": step, "lr": lr, "images_per_s": seen / elapsed,
                       "data_wait": data_wait / elapsed, **avg}
                history.append(rec)
                log(f"step {step}/{cfg.steps} " + " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k != "step"))
                if progress:
                    progress({"steps": cfg.steps, **rec})
            do_val = val_data is not None and len(val_data) > 0 and (step % cfg.val_every == 0 or step == cfg.steps)
            if do_val and is_main:
                model.eval()
                last_val = evaluate_partition(model, val_data, limit=cfg.val_limit, grid_size=cfg.val_grid).summary
                model.train()
                log(f"val @ {step}: " + " ".join(f"{k}={v:.4f}" for k, v in last_val.items()))
                history.append({"step": step, **{f"val_{k}": v for k, v in last_val.items()}})
                if progress:
                    progress({"step": step, "steps": cfg.steps, **{f"val_{k}": v for k, v in last_val.items()}})
                key = "miou_auto" if "miou_auto" in last_val else next(iter(last_val), None)
                if key and (not best_val or last_val[key] >= best_val.get(key, -1)):
                    best_val = dict(last_val)
                    save(out / "best.pt", last_val)
            if is_main and (step % cfg.save_every == 0 or step == cfg.steps):
                save(out / "last.pt", last_val)
            if world > 1 and do_val:
                dist.barrier()
            t_wait = time.perf_counter()
        else:
            epoch, epoch_step = epoch + 1, 0
            continue
        if cfg.max_seconds and time.perf_counter() - t_start > cfg.max_seconds:
            break
    elapsed = time.perf_counter() - t_start
    if world > 1:
        dist.barrier()
    result = TrainResult(
        out_dir=str(out), last_checkpoint=str(out / "last.pt"),
        best_checkpoint=str(out / "best.pt") if (out / "best.pt").exists() else None,
        steps=step, seconds=elapsed, images_per_second=seen / max(elapsed, 1e-9),
        history=history, val_metrics=last_val, best_val=best_val,
    )
    if is_main:
        (out / "result.json").write_text(json.dumps(dataclasses.asdict(result), indent=2, default=float))
    return result


def add_config_arguments(p: argparse.ArgumentParser, config_cls: type) -> None:
    """One ``--flag`` per field of a run-config dataclass, plus ``--split``, ``--resume`` and
    ``--threads`` (shared by ``safire train`` and ``safire pretrain``)."""
    defaults = config_cls()
    for f in dataclasses.fields(config_cls):
        if f.name == "resume":
            continue
        d = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(d, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=d)
        else:
            p.add_argument(flag, type=type(d) if d is not None else str, default=d)
    p.add_argument("--split", default=None,
                   help="read only this split of each --data folder (splits/NAME.txt, or a file of sample names)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if present")
    p.add_argument("--threads", type=int, default=int(os.environ.get("SAFIRE_THREADS", "0")))


def config_and_data(args: argparse.Namespace, config_cls: type) -> tuple:
    """(run config, training reader) from parsed ``add_config_arguments`` options; sets threads."""
    from .datasets import open_dataset
    from .prompt_data import ConcatReader

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})
    kw = {"split": args.split} if args.split else {}
    return cfg, ConcatReader([open_dataset(d, **kw) for d in args.data])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="safire train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, nargs="+", help="training dataset(s) (folder, list file or JSON list)")
    p.add_argument("--val", nargs="*", default=None, help="validation dataset(s)")
    add_config_arguments(p, TrainConfig)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from .datasets import open_dataset
    from .prompt_data import ConcatReader

    args = build_parser().parse_args(argv)
    cfg, train = config_and_data(args, TrainConfig)
    val = ConcatReader([open_dataset(d) for d in args.val]) if args.val else None
    res = fine_tune(train, val, cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"last": res.last_checkpoint, "best": res.best_checkpoint, "steps": res.steps,
                          "images_per_second": round(res.images_per_second, 3), "val": res.val_metrics}))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
