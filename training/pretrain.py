"""Stage 1 of SAFIRE: region-to-region (R2R) contrastive pretraining of the image encoder.

The encoder (ViT, adapter, neck; as the official ``pretrain.py``) is trained so that embedding
vectors of one source are similar and those of different sources are not (paper Eq. 1-2; the loss
is :func:`training.losses.r2r_contrastive_loss`, generalised to any number of sources). The prompt
encoder and mask decoder are untouched. The result is a full-model checkpoint in our format, so
:mod:`training.train` starts from it with ``--init-checkpoint OUT/last.pt``.

Runs as one process on CPU and unchanged under ``torchrun --nproc-per-node N`` (DDP, gloo on CPU,
nccl on GPU). CLI: ``python -m training.pretrain`` or ``safire pretrain``; function API
:func:`pretrain`. ``OUT/last.pt`` holds the optimizer state, and ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from safire.build import build_safire, resolve_device
from safire.checkpoint import read_checkpoint, save_checkpoint
from safire.modeling import Safire

from .losses import r2r_contrastive_loss
from .prompt_data import IGNORE, random_crop, resize_labels
from .train import ResumableSampler, TrainResult, _collate, add_config_arguments, config_and_data, dist_init, lr_at


@dataclass
class PretrainConfig:
    """A pretraining run (stored in the checkpoint's provenance)."""

    out_dir: str = "runs/pretrain"
    variant: str = "tiny"
    init_checkpoint: Optional[str] = None
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    restart_period: int = 0
    restart_mult: int = 2
    min_lr: float = 1e-6
    tau: float = 0.1
    max_samples: int = 1000  # vectors kept per region (official: 1000)
    augment: bool = True
    seed: int = 2024
    workers: int = 1
    amp: bool = False
    log_every: int = 20
    save_every: int = 250
    device: str = "auto"
    model_version: str = ""
    resume: bool = False


class RegionSet(Dataset):
    """Items of a reader (``image`` HxWx3 uint8, ``labels`` HxW uint8, 255 ignore) as tensors:
    ``image`` 3xSxS float32 in [0, 255] and ``sources`` hxw int64 at embedding resolution."""

    def __init__(self, reader: Sequence[Any], img_size: int, embed_size: int, augment: bool, seed: int) -> None:
        self.reader, self.img_size, self.embed_size = reader, img_size, embed_size
        self.augment, self.seed, self.epoch = augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index), 1])
        item = self.reader[index]
        image, labels = item.image, item.labels
        if self.augment:
            if rng.random() < 0.5:
                image, labels = random_crop(image, labels, rng)
            if rng.random() < 0.5:
                image, labels = image[:, ::-1], labels[:, ::-1]
        S = self.img_size
        img = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float()
        if img.shape[-2:] != (S, S):
            img = F.interpolate(img, size=(S, S), mode="bilinear", align_corners=False).clamp_(0, 255)
        lab = resize_labels(np.ascontiguousarray(labels), S)
        sources = resize_labels(lab, self.embed_size).astype(np.int64)
        return {"image": img[0], "sources": torch.from_numpy(sources)}


class _Encoder(torch.nn.Module):
    """The model seen through its encoder only (so DDP wraps exactly what is trained)."""

    def __init__(self, model: Safire) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode(images)


def pretrain(
    train_data: Sequence[Any],
    cfg: Optional[PretrainConfig] = None,
    *,
    model: Optional[Safire] = None,
    progress: Optional[Callable[[Dict[str, Any]], None]] = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Contrastive pretraining of ``model``'s image encoder on multi-source samples.

    Single-source (authentic) samples carry no contrast and are skipped by the loss; give the
    loop forged samples. Returns a :class:`training.train.TrainResult` (no validation metrics).
    """
    cfg = cfg or PretrainConfig()
    device = resolve_device(cfg.device)
    rank, world = dist_init(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    is_main = rank == 0
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)

    resume_state = None
    if cfg.resume and (out / "last.pt").is_file():
        model = build_safire(checkpoint=read_checkpoint(out / "last.pt"), device="cpu")
        resume_state = torch.load(out / "last.pt", map_location="cpu", weights_only=True).get("train_state")
        log(f"resuming from {out / 'last.pt'} at step {resume_state['step'] if resume_state else 0}")
    elif model is None:
        model = build_safire(cfg.variant if not cfg.init_checkpoint else None, cfg.init_checkpoint, "cpu")
    model = model.to(device)
    variant = model.meta.get("variant", cfg.variant)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("image_encoder."))
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    data = RegionSet(train_data, model.config.img_size, model.embedding_size, cfg.augment, cfg.seed)
    if len(data) == 0:
        raise ValueError("the pretraining set is empty")
    if world > 1:
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    else:
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(cfg.seed))
    sampler = ResumableSampler(sampler, cfg.seed)
    loader = DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        collate_fn=_collate, drop_last=len(data) // world >= cfg.batch_size)
    net: torch.nn.Module = _Encoder(model)
    if world > 1:
        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    step, epoch, epoch_step, history = 0, 0, 0, []
    if resume_state:
        opt.load_state_dict(resume_state["optimizer"])
        step, epoch = int(resume_state["step"]), int(resume_state["epoch"])
        history = list(resume_state.get("history") or [])
        epoch_step = int(resume_state.get("epoch_step", 0))
        sampler.skip_next(epoch_step * cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed + rank)
    version = cfg.model_version or f"{variant}-pretrain-{time.strftime('%Y%m%d-%H%M%S')}"
    provenance = {"stage": "r2r-pretrain", "pretrain_config": dataclasses.asdict(cfg), "world_size": world,
                  "init": cfg.init_checkpoint or model.meta.get("model_version")}

    def save() -> None:
        state = {"optimizer": opt.state_dict(), "step": step, "epoch": epoch, "epoch_step": epoch_step,
                 "history": history[-200:]}
        save_checkpoint(model, out / "last.pt", variant=variant, config=model.config, model_version=version,
                        provenance={**provenance, "step": step}, extra={"train_state": state})

    t_start, seen, window = time.perf_counter(), 0, []
    while step < cfg.steps:
        sampler.set_epoch(epoch)
        data.set_epoch(epoch)
        for batch in loader:
            if step >= cfg.steps:
                break
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                feats = net(batch["image"].to(device, non_blocking=True))
            loss = r2r_contrastive_loss(feats.float(), batch["sources"].to(device), tau=cfg.tau,
                                        max_samples=cfg.max_samples, generator=gen, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            epoch_step += 1
            seen += batch["image"].shape[0] * world
            window.append(float(loss.detach()))
            if is_main and (step % cfg.log_every == 0 or step == cfg.steps):
                rec = {"step": step, "lr": lr, "images_per_s": seen / (time.perf_counter() - t_start),
                       "r2r": float(np.mean(window))}
                window.clear()
                history.append(rec)
                log(f"step {step}/{cfg.steps} " + " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k != "step"))
                if progress:
                    progress({"steps": cfg.steps, **rec})
            if is_main and (step % cfg.save_every == 0 or step == cfg.steps):
                save()
        else:
            epoch, epoch_step = epoch + 1, 0
    if world > 1:
        dist.barrier()
    elapsed = time.perf_counter() - t_start
    result = TrainResult(out_dir=str(out), last_checkpoint=str(out / "last.pt"), best_checkpoint=None,
                         steps=step, seconds=elapsed, images_per_second=seen / max(elapsed, 1e-9),
                         history=history)
    if is_main:
        (out / "result.json").write_text(json.dumps(dataclasses.asdict(result), indent=2, default=float))
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="safire pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, nargs="+", help="dataset(s): folder, list file or JSON list")
    add_config_arguments(p, PretrainConfig)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    cfg, data = config_and_data(build_parser().parse_args(argv), PretrainConfig)
    res = pretrain(data, cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"last": res.last_checkpoint, "steps": res.steps,
                          "images_per_second": round(res.images_per_second, 3)}))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
