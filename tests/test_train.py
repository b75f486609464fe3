import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safire.build import build_safire
from training.train import TrainConfig, fine_tune, lr_at, set_trainable

from conftest import toy_forgery

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "run"), variant="micro", steps=40, batch_size=4, lr=2e-3, warmup_steps=2,
                workers=0, log_every=5, val_every=1000, save_every=1000, device="cpu", seed=0, augment=False)
    base.update(kw)
    return TrainConfig(**base)


def test_a_few_steps_reduce_the_loss(tmp_path):
    data = [toy_forgery(i, 64, 2) for i in range(16)]
    res = fine_tune(data, None, _cfg(tmp_path, steps=120, log_every=10, r2r_weight=0.1))
    hist = [h for h in res.history if "aass" in h]
    assert len(hist) == 12
    # The contrastive term separates the sources first, then the segmentation loss leaves ln 2.
    assert hist[-1]["r2r"] < 0.5 * hist[0]["r2r"]
    assert hist[-1]["aass"] < hist[0]["aass"] - 0.02
    assert Path(res.last_checkpoint).is_file()
    m = build_safire(checkpoint=res.last_checkpoint)
    assert m.meta["variant"] == "micro" and m.meta["provenance"]["step"] == 120


def test_resume_continues_from_last_checkpoint(tmp_path):
    data = [toy_forgery(i, 64, 2) for i in range(4)]
    fine_tune(data, None, _cfg(tmp_path, steps=6))
    res = fine_tune(data, None, _cfg(tmp_path, steps=10, resume=True))
    assert res.steps == 10
    assert [h["step"] for h in res.history if "total" in h][-1] == 10


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """Resuming mid-epoch continues the epoch's sample order (no batch seen twice or skipped)."""
    data = [toy_forgery(i, 64, 2) for i in range(10)]  # batch 4, drop_last: 2 batches per epoch

    def weights(path):
        return build_safire(checkpoint=path).state_dict()

    straight = fine_tune(data, None, _cfg(tmp_path, out_dir=str(tmp_path / "a"), steps=5, save_every=1, augment=True))
    fine_tune(data, None, _cfg(tmp_path, out_dir=str(tmp_path / "b"), steps=3, save_every=1, augment=True))
    resumed = fine_tune(data, None, _cfg(tmp_path, out_dir=str(tmp_path / "b"), steps=5, save_every=1,
                                         augment=True, resume=True))
    a, b = weights(straight.last_checkpoint), weights(resumed.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a run cut at another step differs, so the comparison above can fail
    other = fine_tune(data, None, _cfg(tmp_path, out_dir=str(tmp_path / "c"), steps=4, save_every=1, augment=True))
    c = weights(other.last_checkpoint)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_validation_writes_best_checkpoint_and_metrics(tmp_path):
    data = [toy_forgery(i, 64, 1 + i % 3) for i in range(6)]
    res = fine_tune(data, data, _cfg(tmp_path, steps=4, val_every=4, val_limit=6, val_grid=4))
    assert res.best_checkpoint and Path(res.best_checkpoint).is_file()
    for key in ("miou_auto", "ari_auto", "miou_k", "f1_best", "image_auc", "auth_split_rate"):
        assert key in res.val_metrics
    summary = json.loads((Path(res.out_dir) / "result.json").read_text())
    assert summary["steps"] == 4


def test_fine_tune_from_a_checkpoint_and_trainable_modes(tmp_path):
    data = [toy_forgery(i, 64, 2) for i in range(4)]
    first = fine_tune(data, None, _cfg(tmp_path, steps=2))
    m = build_safire(checkpoint=first.last_checkpoint)
    enc_before = m.image_encoder.blocks[0].attn.qkv.weight.clone()
    ad_before = m.image_encoder.adaptor_blocks[0][0].weight.clone()
    res = fine_tune(data, None, _cfg(tmp_path, steps=3, out_dir=str(tmp_path / "ft"), trainable="adapter+decoder",
                                     init_checkpoint=first.last_checkpoint))
    m2 = build_safire(checkpoint=res.last_checkpoint)
    assert torch.equal(m2.image_encoder.blocks[0].attn.qkv.weight, enc_before)
    assert not torch.equal(m2.image_encoder.adaptor_blocks[0][0].weight, ad_before)
    dec = set_trainable(build_safire("micro"), "decoder")
    assert all(p.requires_grad for p in dec) and len(dec) > 0


def test_lr_schedule_warmup_and_restarts():
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=10, restart_period=20, restart_mult=2, steps=100)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(20, cfg) == pytest.approx(0.5)
    assert lr_at(30, cfg) == pytest.approx(1.0)  # restart after 20 steps
    assert lr_at(70, cfg) == pytest.approx(1.0)  # next period is 40


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "pretrain"])
def test_torchrun_two_processes_agree_on_weights(tmp_path, stage):
    """A 2-process gloo run on CPU finishes, and both ranks hold identical weights afterwards."""
    if stage == "train":
        call = ("from training.train import TrainConfig, fine_tune\n"
                f"cfg = TrainConfig(out_dir={str(tmp_path / 'ddp')!r}, variant='micro', steps=3, batch_size=2,\n"
                "                  workers=0, log_every=1, val_every=1000, save_every=1000, device='cpu', warmup_steps=1)\n"
                "fine_tune(data, None, cfg, model=model, log=lambda s: None)\n")
    else:
        call = ("from training.pretrain import PretrainConfig, pretrain\n"
                f"cfg = PretrainConfig(out_dir={str(tmp_path / 'ddp')!r}, variant='micro', steps=3, batch_size=2,\n"
                "                     workers=0, log_every=1, save_every=1000, device='cpu', warmup_steps=1)\n"
                "pretrain(data, cfg, model=model, log=lambda s: None)\n")
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, hashlib, torch, torch.distributed as dist\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from conftest import toy_forgery\n"
        "from safire.build import build_safire\n"
        "torch.set_num_threads(1)\n"
        "data = [toy_forgery(i, 64, 2) for i in range(8)]\n"
        "model = build_safire('micro')\n"
        "digest = lambda: hashlib.sha1(b''.join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()\n"
        f"open({str(tmp_path)!r} + f'/init{{__import__(\"os\").environ[\"RANK\"]}}.txt', 'w').write(digest())\n"
        + call +
        f"open({str(tmp_path)!r} + f'/rank{{dist.get_rank()}}.txt', 'w').write(digest())\n"
        "dist.destroy_process_group()\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(_free_port()), str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    h0 = (tmp_path / "rank0.txt").read_text()
    h1 = (tmp_path / "rank1.txt").read_text()
    assert h0 == h1
    # the weights moved (training happened), and the saved checkpoint is rank 0's model
    assert h0 != (tmp_path / "init0.txt").read_text()
    saved = build_safire(checkpoint=str(tmp_path / "ddp" / "last.pt"))
    assert hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in saved.parameters())).hexdigest() == h0


def test_pretrain_trains_only_the_encoder_and_lowers_the_contrastive_loss(tmp_path):
    from training.pretrain import PretrainConfig, pretrain

    data = [toy_forgery(i, 64, 2 + i % 2) for i in range(12)]
    torch.manual_seed(0)
    model = build_safire("micro")
    dec_before = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    cfg = PretrainConfig(out_dir=str(tmp_path / "pre"), variant="micro", steps=60, batch_size=4, lr=2e-3,
                         warmup_steps=2, workers=0, log_every=10, save_every=1000, device="cpu", seed=0,
                         augment=False)
    res = pretrain(data, cfg, model=model, log=lambda s: None)
    hist = [h["r2r"] for h in res.history]
    assert len(hist) == 6 and hist[-1] < 0.7 * hist[0]
    m = build_safire(checkpoint=res.last_checkpoint)
    assert m.meta["provenance"]["stage"] == "r2r-pretrain" and m.meta["provenance"]["step"] == 60
    for k, v in m.mask_decoder.state_dict().items():
        assert torch.equal(v, dec_before[k]), k
    # the pretrained encoder is a valid starting point for point-prompt training
    res2 = fine_tune(data, None, _cfg(tmp_path, steps=2, out_dir=str(tmp_path / "ft"), init_checkpoint=res.last_checkpoint))
    assert Path(res2.last_checkpoint).is_file()
    # resume continues the step count
    cfg2 = dataclasses.replace(cfg, steps=64, resume=True)
    assert pretrain(data, cfg2, log=lambda s: None).steps == 64


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """accum_steps=2 with batches of 2 takes the same optimizer steps as batches of 4."""
    data = [toy_forgery(i, 64, 2) for i in range(8)]

    def run(name, **kw):
        res = fine_tune(data, None, _cfg(tmp_path, out_dir=str(tmp_path / name), steps=2, **kw))
        return res, build_safire(checkpoint=res.last_checkpoint).state_dict()

    big, a = run("big", batch_size=4)
    acc, b = run("acc", batch_size=2, accum_steps=2)
    small, c = run("small", batch_size=2)
    assert acc.steps == big.steps == 2
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-4, diff  # lr 2e-3: a different batch moves weights by about 2 x lr
    assert max(float((a[k] - c[k]).abs().max()) for k in a) > 1e-3
