"""Builder: ``build_safire(variant, checkpoint=None, device=...)``.

>>> model = build_safire()                                  # the embedded default model (native)
>>> model = build_safire("micro")                           # a registered variant, random weights
>>> model = build_safire(checkpoint="safire.pth")           # official weights, variant inferred
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from .checkpoint import Checkpoint, CheckpointError, load_state_dict_strict, read_checkpoint
from .config import VARIANTS, SafireConfig, get_config
from .modeling import Safire

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_CHECKPOINT = WEIGHTS_DIR / "safire-native-default.pt"


def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """``None``/"auto" -> cuda if available else cpu; otherwise as given (clear error if absent)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available; use --device cpu")
    return dev


def infer_variant(state_dict: Dict[str, torch.Tensor]) -> str:
    """Registered variant whose parameter shapes match ``state_dict`` exactly."""
    for name, cfg in VARIANTS.items():
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in Safire(cfg).state_dict().items()}
        if shapes.keys() == state_dict.keys() and all(tuple(state_dict[k].shape) == s for k, s in shapes.items()):
            return name
    pe = state_dict.get("image_encoder.pos_embed")
    raise CheckpointError(
        "cannot tell which SAFIRE variant this state dict belongs to "
        f"(image_encoder.pos_embed {tuple(pe.shape) if pe is not None else 'absent'}); pass variant="
    )


def build_safire(
    variant: Optional[str] = None,
    checkpoint: Union[str, os.PathLike, Checkpoint, None] = None,
    device: Union[str, torch.device, None] = "cpu",
    *,
    use_default: Optional[bool] = None,
) -> Safire:
    """Build a SAFIRE model, optionally loading weights (strict key and shape matching).

    Args:
        variant: registry name (``vit_b``, ``tiny``, ``micro``); with a checkpoint that records its
            variant (our format) or whose shapes identify it, may be None.
        checkpoint: path or :class:`Checkpoint`. None -> random weights of ``variant``, or the
            embedded default model when ``variant`` is None too.
        device: "cpu", "cuda", "cuda:1", "auto" or a torch.device.
        use_default: with no checkpoint, load the embedded default model (True) or random weights
            (False); None (default): the embedded model exactly when no variant is named.
    Returns:
        The model in eval mode on ``device``, with ``model.meta`` (dict: variant, model_version,
        provenance, checkpoint path/kind) attached.
    """
    if use_default is None:
        use_default = variant is None
    if checkpoint is None and use_default:
        if not DEFAULT_CHECKPOINT.is_file():
            raise CheckpointError(f"the embedded default model is missing: {DEFAULT_CHECKPOINT}")
        checkpoint = DEFAULT_CHECKPOINT
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) or checkpoint is None else read_checkpoint(checkpoint)
    meta: Dict[str, Any] = {}
    if ckpt is not None:
        cfg: Optional[SafireConfig] = ckpt.config
        ck_variant = ckpt.variant
        if variant and ck_variant and variant != ck_variant:
            raise CheckpointError(f"checkpoint is variant {ck_variant!r} but variant {variant!r} was requested")
        variant = variant or ck_variant or infer_variant(ckpt.state_dict)
        cfg = cfg or get_config(variant)
        meta.update(ckpt.meta)
        meta.update({"checkpoint": ckpt.path, "checkpoint_kind": ckpt.kind})
        meta.pop("config", None)
    else:
        variant = variant or "native"
        cfg = get_config(variant)
    model = Safire(cfg)
    if ckpt is not None:
        sd = {k: v.float() if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
        load_state_dict_strict(model, sd)
    meta["variant"] = variant
    meta.setdefault("model_version", f"{variant}-random" if ckpt is None else f"{variant}-{ckpt.kind}")
    model.meta = meta
    return model.to(resolve_device(device)).eval()
