"""Integration: a short JumpReLU training of one layer's residual SAE on the real Gemma 3 270M."""

from __future__ import annotations

import json

import pytest

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.evaluate.metrics import EvalConfig, evaluate
from saescope.train.trainer import Trainer, TrainConfig


@pytest.mark.slow
def test_res_sae_on_gemma3_learns(tmp_path, gemma):
    model, tok = gemma
    store = harvest(HarvestConfig(sites="res", layers="6", tokens=16384, context_len=256, forward_batch=8,
                                  dtype="float32", shard_rows=4096, store=str(tmp_path / "activations")), model, tok)
    target = 40
    cfg = TrainConfig(store=str(store), out=str(tmp_path), widths=[1024], l0_coefficients=[3e-3],
                      knobs=f"l0_penalty=quadratic,target_l0={target}", train_tokens=1024 * 160, batch_size=1024,
                      lr=2e-3, lr_warmup_steps=10, l0_warmup_steps=40, buffer_rows=8192, checkpoint_every=80,
                      log_every=10, device="cpu")
    Trainer(cfg).train()
    log = [json.loads(line) for line in (tmp_path / "train" / "log.jsonl").read_text().splitlines()]
    key = next(k for k in log[0] if k != "step")
    first_l0, last_l0 = log[0][key]["l0"], log[-1][key]["l0"]
    assert abs(last_l0 - target) < 0.5 * abs(first_l0 - target), (first_l0, last_l0)
    metrics = evaluate(EvalConfig(out=str(tmp_path), eval_sequences=4, eval_context_len=128, eval_dtype="float32",
                                  device="cpu"))[key]
    assert metrics["fvu"] < 0.3, metrics["fvu"]
    zero_delta = metrics["ce_zero_ablation"] - metrics["ce_clean"]
    assert 0 < metrics["delta_loss"] < 0.25 * zero_delta, (metrics["delta_loss"], zero_delta)
    assert metrics["ce_loss_recovered"] > 0.75 and metrics["kl_div"] > 0
