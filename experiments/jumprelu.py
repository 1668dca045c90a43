"""Why JumpReLU trailed TopK in short runs, and which settings fix it (the README's JumpReLU table).

Each variant trains one JumpReLU SAE on the same site, rows and tokens as the default run's
schedule (width 2048, 240 steps of 1024 tokens, sites standardised), changing one thing at a
time; all are then evaluated together on the same held-out rows and text. TopK at the same
budget is the yardstick. Run from the repository with the virtual environment active:

    saescope harvest --sites res,mlp,att --layers 6 --tokens 120000 --shard-rows 20000 --out runs/exp6/activations
    python experiments/jumprelu.py --round 1 --out runs/exp_jr1 --site res.6     # 2 and 3 likewise
    python experiments/jumprelu.py --round 4 --out runs/exp_mlp6 --site mlp.6    # and att.6

Prints a markdown table (also OUT/table.md): L0 and delta LM loss on held-out text, FVU and
dead / dense latents on the held-out shard, the first step's L0 and the training time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

from saescope.evaluate.metrics import EvalConfig, evaluate
from saescope.train.job import TrainConfig
from saescope.train.trainer import Trainer

# The default run's schedule before this study: Gemma Scope 2's per-token quadratic penalty
# toward L0 64 (lambda 3e-3), the recipe's threshold init and bandwidth (0.001), no frequency
# penalty, a 40-step sparsity warm-up, no lr decay. Every knob is spelled out, so the table
# does not change when saescope's defaults do.
BEFORE = dict(
    arch="jumprelu",
    widths=[2048],
    l0_coefficients=[64],
    normalize="standardize",
    train_tokens=245_760,
    batch_size=1024,
    lr=2e-3,
    lr_warmup_steps=10,
    l0_warmup_steps=40,
    lr_decay=0.0,
    adam_beta1=0.0,
    knobs="l0_penalty=quadratic,l0_coefficient=0.003,init_l0=0,bandwidth=0.001,freq_coefficient=0",
)
RECIPE_KNOBS = "init_l0=0,bandwidth=0.001,freq_coefficient=0"
# The decoder-row and threshold knobs as every round was measured, put before each JumpReLU
# variant's own knobs (the last value of a key wins), so that a table does not move if a default does.
PINNED = (
    "unit_decoder=true,init_norm=1,threshold_lr=1,revive_coefficient=0,revive_power=0,dead_tokens=50000,"
    "floor_moments=false,jolt_clip=0"
)
Q = "l0_penalty=quadratic,l0_coefficient=0.003"
MQ = "l0_penalty=mean-quadratic,l0_coefficient=0.03"
TOPK = dict(arch="topk", l0_coefficients=[64], knobs="dead_tokens=50000", l0_warmup_steps=0, lr_decay=0.2)

# Three rounds, each changing one thing at a time from the best of the round before.
ROUNDS: dict[int, dict[str, dict]] = {
    1: {
        "before (threshold 0.001, bandwidth 0.001)": {},
        "init_l0=64": dict(knobs=f"{Q},bandwidth=0.001,freq_coefficient=0"),
        "init_l0=64, no sparsity warm-up": dict(knobs=f"{Q},bandwidth=0.001,freq_coefficient=0", l0_warmup_steps=0),
        "init_l0=64, bandwidth 0.01": dict(knobs=f"{Q},bandwidth=0.01,freq_coefficient=0", l0_warmup_steps=0),
        "init_l0=64, bandwidth 0.03": dict(knobs=f"{Q},bandwidth=0.03,freq_coefficient=0", l0_warmup_steps=0),
        "init_l0=64, lr decay 20%": dict(
            knobs=f"{Q},bandwidth=0.001,freq_coefficient=0", l0_warmup_steps=0, lr_decay=0.2
        ),
        "init_l0=64, lr 1e-3": dict(knobs=f"{Q},bandwidth=0.001,freq_coefficient=0", l0_warmup_steps=0, lr=1e-3),
        "init_l0=64, lr 4e-3": dict(knobs=f"{Q},bandwidth=0.001,freq_coefficient=0", l0_warmup_steps=0, lr=4e-3),
        "init_l0=64, batch 4096": dict(
            knobs=f"{Q},bandwidth=0.001,freq_coefficient=0", l0_warmup_steps=0, batch_size=4096, lr_warmup_steps=3
        ),
        "init_l0=64, freq penalty 0.1": dict(knobs=f"{Q},bandwidth=0.001,freq_coefficient=0.1", l0_warmup_steps=0),
        "topk k=64": dict(TOPK, lr_decay=0.0),
    },
    2: {
        "A: init_l0=64, no warm-up, bandwidth 0.03, lr decay 20%": dict(
            knobs=f"{Q},bandwidth=0.03,freq_coefficient=0", l0_warmup_steps=0, lr_decay=0.2
        ),
        "A + freq 0.1": dict(knobs=f"{Q},bandwidth=0.03,freq_coefficient=0.1", l0_warmup_steps=0, lr_decay=0.2),
        "A + freq 0.3": dict(knobs=f"{Q},bandwidth=0.03,freq_coefficient=0.3", l0_warmup_steps=0, lr_decay=0.2),
        "A + freq 1": dict(knobs=f"{Q},bandwidth=0.03,freq_coefficient=1", l0_warmup_steps=0, lr_decay=0.2),
        "A, mean-quadratic 0.03": dict(
            knobs=f"{MQ},bandwidth=0.03,freq_coefficient=0", l0_warmup_steps=0, lr_decay=0.2
        ),
        "A, mean-quadratic 0.03 + freq 0.1": dict(
            knobs=f"{MQ},bandwidth=0.03,freq_coefficient=0.1", l0_warmup_steps=0, lr_decay=0.2
        ),
        "A, mean-quadratic 0.1 + freq 0.3": dict(
            knobs="l0_penalty=mean-quadratic,l0_coefficient=0.1,bandwidth=0.03,freq_coefficient=0.3",
            l0_warmup_steps=0,
            lr_decay=0.2,
        ),
        "A + freq 0.3, lr 3e-3": dict(
            knobs=f"{Q},bandwidth=0.03,freq_coefficient=0.3", l0_warmup_steps=0, lr_decay=0.2, lr=3e-3
        ),
        "A + freq 0.3, bandwidth 0.1": dict(
            knobs=f"{Q},bandwidth=0.1,freq_coefficient=0.3", l0_warmup_steps=0, lr_decay=0.2
        ),
        "topk k=64, lr decay 20%": TOPK,
    },
}
B = dict(knobs=f"{MQ},bandwidth=0.03,freq_coefficient=0.1", l0_warmup_steps=0, lr_decay=0.2)
ROUNDS[3] = {
    "B: mean-quadratic 0.03, freq 0.1, init_l0=64, bandwidth 0.03, lr decay 20%": B,
    "B + freq 0.3": B | dict(knobs=f"{MQ},bandwidth=0.03,freq_coefficient=0.3"),
    "B, bandwidth 0.01": B | dict(knobs=f"{MQ},bandwidth=0.01,freq_coefficient=0.1"),
    "B, lr 3e-3": B | dict(lr=3e-3),
    "B, lr decay 40%": B | dict(lr_decay=0.4),
    "B, batch 512": B | dict(batch_size=512),
    "B, Adam beta1 0.9": B | dict(adam_beta1=0.9),
    "B, no init (threshold 0.001)": B | dict(knobs=f"{MQ},bandwidth=0.03,freq_coefficient=0.1,init_l0=0"),
}
# The same check on the other site kinds: before, B and TopK.
ROUNDS[4] = {"before": {}, "B": B, "topk k=64, lr decay 20%": TOPK}
# Fewer steps for the default run's time budget, and a larger learning rate to make up for them.
ROUNDS[5] = {
    "B, 240 steps": B,
    "B, 200 steps": B | dict(train_tokens=204_800),
    "B, 200 steps, lr 3e-3": B | dict(train_tokens=204_800, lr=3e-3),
    "B, 240 steps, lr 3e-3": B | dict(lr=3e-3),
    "B, batch 512 (480 steps)": B | dict(batch_size=512),
    "B, batch 512, lr 3e-3": B | dict(batch_size=512, lr=3e-3),
    "B, width 4096": B | dict(widths=[4096]),
}
# Attention sites kept latents firing on > 10% of held-out tokens: charge firing above a lower share.
ROUNDS[6] = {
    "B": B,
    "B, freq target 0.05": B | dict(knobs=f"{MQ},bandwidth=0.03,freq_coefficient=0.1,freq_target=0.05"),
    "B, freq 0.3, target 0.05": B | dict(knobs=f"{MQ},bandwidth=0.03,freq_coefficient=0.3,freq_target=0.05"),
    "B, freq 1": B | dict(knobs=f"{MQ},bandwidth=0.03,freq_coefficient=1"),
}

# Why SAELens' JumpReLU led saescope's by ~0.03 nats at L0 64 on res.6 (compare_sites.sh): the
# compare run's scale (width 4096, 240 steps, lr 3e-3), saescope's defaults against each thing
# SAELens does differently, one at a time.
D = B | dict(widths=[4096], lr=3e-3, knobs=f"{MQ},bandwidth=0.03,freq_coefficient=0.3,freq_target=0.05")
ROUNDS[7] = {
    "defaults (D)": D,
    "D, no frequency penalty": D | dict(knobs=f"{MQ},bandwidth=0.03,freq_coefficient=0"),
    "D, freq 0.1 at 10%": D | dict(knobs=f"{MQ},bandwidth=0.03,freq_coefficient=0.1,freq_target=0.1"),
    "D, Adam beta1 0.9": D | dict(adam_beta1=0.9),
    "D, bandwidth 0.05": D | dict(knobs=f"{MQ},bandwidth=0.05,freq_coefficient=0.3,freq_target=0.05"),
    "D, linear L0 penalty 0.001": D
    | dict(knobs="l0_penalty=l0,l0_coefficient=0.001,init_l0=64,bandwidth=0.03,freq_coefficient=0"),
    "SAELens' knobs: linear 0.001, threshold 0.01, bandwidth 0.05, beta1 0.9": D
    | dict(
        adam_beta1=0.9,
        knobs="l0_penalty=l0,l0_coefficient=0.001,init_l0=0,threshold_init=0.01,bandwidth=0.05,freq_coefficient=0",
    ),
    "D, decoder rows free (no unit norm)": D
    | dict(knobs=f"{MQ},bandwidth=0.03,freq_coefficient=0.3,freq_target=0.05,unit_decoder=false"),
    "D, batch 512": D | dict(batch_size=512),
}

# Low targets: at L0 16 of 4096 saescope's JumpReLU left 18% of latents dead on res.6 (SAELens'
# 1%) and trailed SAELens on mlp.6 at L0 16 and 32.
D16 = D | dict(l0_coefficients=[16])
K16 = f"{MQ},freq_coefficient=0.3,freq_target=0.05"
ROUNDS[8] = {
    "defaults, target 16 (D16)": D16 | dict(knobs=f"{K16},bandwidth=0.03"),
    "D16, bandwidth 0.05": D16 | dict(knobs=f"{K16},bandwidth=0.05"),
    "D16, bandwidth 0.1": D16 | dict(knobs=f"{K16},bandwidth=0.1"),
    "D16, lr 2e-3": D16 | dict(knobs=f"{K16},bandwidth=0.03", lr=2e-3),
    "D16, starts at L0 64": D16 | dict(knobs=f"{K16},bandwidth=0.03,init_l0=64"),
    "D16, mean-quadratic 0.1": D16 | dict(knobs=f"{K16},bandwidth=0.03,l0_coefficient=0.1"),
    "D16, batch 512": D16 | dict(knobs=f"{K16},bandwidth=0.03", batch_size=512),
}

# SAELens' decoder starts at row norm 0.1 and is free to grow (round 7: free rows at norm 1 lose).
FREE = "unit_decoder=false,init_norm=0.1"
ROUNDS[9] = {
    "defaults (D)": D,
    "D, free rows from norm 0.1": D | dict(knobs=f"{MQ},bandwidth=0.03,freq_coefficient=0.3,freq_target=0.05,{FREE}"),
    "D, free rows from norm 0.1, bandwidth 0.003": D
    | dict(knobs=f"{MQ},bandwidth=0.003,freq_coefficient=0.3,freq_target=0.05,{FREE}"),
    "D16": D16 | dict(knobs=f"{K16},bandwidth=0.03"),
    "D16, free rows from norm 0.1": D16 | dict(knobs=f"{K16},bandwidth=0.03,{FREE}"),
    "D16, free rows from norm 0.1, bandwidth 0.003": D16 | dict(knobs=f"{K16},bandwidth=0.003,{FREE}"),
}

# Free rows from norm 0.1 (round 9) let L0 drift above the target (80 for 64, 46 for 16): a
# stronger pull toward it; and the revival term (pre-activation loss on latents silent for
# dead_tokens) for the dead latents of low targets.
FK = f"{MQ},bandwidth=0.03,freq_coefficient=0.3,freq_target=0.05,{FREE}"
ROUNDS[10] = {
    "D16, revive 1e-3": D16 | dict(knobs=f"{K16},bandwidth=0.03,revive_coefficient=0.001"),
    "D16, free rows from 0.1, mean-quadratic 0.3": D16 | dict(knobs=f"{FK},l0_coefficient=0.3"),
    "D16, free rows from 0.1, mean-quadratic 1": D16 | dict(knobs=f"{FK},l0_coefficient=1"),
    "D16, free rows from 0.1, mean-quadratic 1, revive 1e-3": D16
    | dict(knobs=f"{FK},l0_coefficient=1,revive_coefficient=0.001"),
    "D, free rows from 0.1, mean-quadratic 0.3": D | dict(knobs=f"{FK},l0_coefficient=0.3"),
    "D, free rows from 0.1, mean-quadratic 1": D | dict(knobs=f"{FK},l0_coefficient=1"),
}
# Free rows with a threshold fast enough to follow the growing encoder (Adam moves it ~lr per step).
DK = f"{MQ},bandwidth=0.03,freq_coefficient=0.3,freq_target=0.05"
ROUNDS[11] = {
    "D16, free rows from 0.1, threshold lr x10": D16 | dict(knobs=f"{FK},threshold_lr=10"),
    "D16, free rows from 0.1, threshold lr x30": D16 | dict(knobs=f"{FK},threshold_lr=30"),
    "D, free rows from 0.1, threshold lr x10": D | dict(knobs=f"{FK},threshold_lr=10"),
    "D16, threshold lr x10": D16 | dict(knobs=f"{K16},bandwidth=0.03,threshold_lr=10"),
    "D, threshold lr x10": D | dict(knobs=f"{DK},threshold_lr=10"),
}

# Free rows + threshold lr x10 (round 11's best at L0 64: "C") still trailed SAELens' JumpReLU by
# 0.01-0.03 nats in compare; each remaining difference from SAELens, one at a time, and SAELens'
# knobs on saescope's code.
CK = f"{FK},threshold_lr=10"
C = D | dict(knobs=CK)
ROUNDS[12] = {
    "C: D, free rows from 0.1, threshold lr x10": C,
    "C, Adam beta1 0.9": C | dict(adam_beta1=0.9),
    "C, no frequency penalty": C | dict(knobs=f"{CK},freq_coefficient=0"),
    "C, bandwidth 0.05": C | dict(knobs=f"{CK},bandwidth=0.05"),
    "C, revive 1e-3": C | dict(knobs=f"{CK},revive_coefficient=0.001"),
    "C, linear L0 penalty 0.001": C | dict(knobs=f"{CK},l0_penalty=l0,l0_coefficient=0.001,init_l0=64"),
    "SAELens' knobs on free rows from 0.1": D
    | dict(
        adam_beta1=0.9,
        knobs=(
            f"{FREE},l0_penalty=l0,l0_coefficient=0.001,init_l0=0,threshold_init=0.01,bandwidth=0.05,freq_coefficient=0"
        ),
    ),
}

# Free rows from 0.1 with thresholds at 10x lr and the revival term (threshold and b_enc only): E.
EK = f"{DK},unit_decoder=false,init_norm=0.1,threshold_lr=10,revive_coefficient=0.001"
E = D | dict(knobs=EK)
ROUNDS[13] = {"E: C with the revival term": E, "E16": E | dict(l0_coefficients=[16])}


# The default run's own schedule (200 steps of 1024 tokens at lr 3e-3, loss-sensitivity weighting)
# and its JumpReLU knobs spelled out, without momentum (R); then Adam beta1 on the weights and
# biases only (thresholds keep 0, `SAE.momentum_free`), and with half the batch (2x steps).
# Store: a default run's (`saescope run --out runs/default_new`, then --store runs/default_new/activations),
# sites res.6, res.12, res.17, mlp.6, att.6 (README, round 14).
RK = "l0_penalty=mean-quadratic,l0_coefficient=0.03,bandwidth=0.03,freq_coefficient=0.3,freq_target=0.05"
R = dict(normalize="sensitivity", train_tokens=204_800, lr=3e-3, l0_warmup_steps=0, lr_decay=0.2, knobs=RK)
ROUNDS[14] = {
    "R: the default run's schedule, no momentum": R,
    "R, beta1 0.3 on weights": R | dict(adam_beta1=0.3),
    "R, beta1 0.5 on weights": R | dict(adam_beta1=0.5),
    "R, beta1 0.5 on weights, batch 512": R | dict(adam_beta1=0.5, batch_size=512),
}

# The default run's schedule since round 14 (R2: R with beta1 0.5 on the weights and batches of 512)
# against the revival term on dead latents: on batches of 512 the default run's att SAEs lost up to 76
# of 2048 latents (README, round 15; same store and sites as round 14, plus att.7 and att.9).
R2 = R | dict(adam_beta1=0.5, batch_size=512)
R3K = f"{RK},revive_coefficient=0.001,dead_tokens=10000"  # round 15's winner, the default since
ROUNDS[15] = {
    "R2: the default run's schedule": R2,
    "R2, revive 1e-3": R2 | dict(knobs=f"{RK},revive_coefficient=0.001"),
    "R2, revive 1e-2": R2 | dict(knobs=f"{RK},revive_coefficient=0.01"),
    "R2, revive 1e-3 after 10k silent tokens": R2 | dict(knobs=R3K),
}

# The default run's schedule since round 15 (R3: R2 with latents revived after 10,000 silent tokens)
# against the optimiser's remaining knobs on its short schedule: the learning rate either way, more
# momentum on the weights, a wider window, twice the steps on the same tokens, a longer decay, and a
# stronger pull to the target (attention SAEs ended training at L0 ~50 for a target of 64)
# (same store and sites as round 15; README, round 16).
R3 = R2 | dict(knobs=R3K)
ROUNDS[16] = {
    "R3: the default run's schedule": R3,
    "R3, lr 4e-3": R3 | dict(lr=4e-3),
    "R3, lr 2e-3": R3 | dict(lr=2e-3),
    "R3, beta1 0.8 on weights": R3 | dict(adam_beta1=0.8),
    "R3, bandwidth 0.05": R3 | dict(knobs=f"{R3K},bandwidth=0.05"),
    "R3, batch 256": R3 | dict(batch_size=256),
    "R3, lr decay over the last 50%": R3 | dict(lr_decay=0.5),
    "R3, mean-quadratic lambda 0.1": R3 | dict(knobs=f"{R3K},l0_coefficient=0.1"),
    "R3, lambda 0.1 and lr decay over the last 50%": R3 | dict(knobs=f"{R3K},l0_coefficient=0.1", lr_decay=0.5),
}

# Where the default run's fixed compute buys the most: `res` SAEs gained 18-22% from twice the tokens
# and `mlp` / `att` less (README, "What more compute buys"); what do `mlp` and `att` lose on half
# the tokens, and `res` gain on twice them, on R3 (same store and sites; README, round 17)?
ROUNDS[17] = {
    "R3: the default run's schedule": R3,
    "R3, half the tokens": R3 | dict(train_tokens=102_400),
    "R3, twice the tokens": R3 | dict(train_tokens=409_600),
}

# The revival term on thresholds only (revive_bias=false): on the head-to-head's low targets moving
# b_enc broke att.6 (README); does the gentler term keep the default run's latents alive too?
ROUNDS[18] = {
    "R3: the default run's schedule": R3,
    "R3, revival on thresholds only": R3 | dict(knobs=f"{R3K},revive_bias=false"),
}

# The default since this session (R4: R3 with mean-quadratic lambda 0.1, and dead latents' Adam second
# moments floored, README "Reviving without the jolt"): its default run left att.12 and att.17 with 34
# and 40 latents firing on more than 10% of held-out tokens (R3's run: up to 22). Which change did it,
# and does a firmer frequency penalty undo it (same store; att.17; README, round 19)?
R4K = f"{R3K},l0_coefficient=0.1,floor_moments=true"
R4 = R3 | dict(knobs=R4K)
ROUNDS[19] = {
    "R4: the default run's schedule": R4,
    "R4, lambda 0.03": R4 | dict(knobs=f"{R4K},l0_coefficient=0.03"),
    "R4, no floor": R4 | dict(knobs=f"{R4K},floor_moments=false"),
    "R4, frequency penalty 1": R4 | dict(knobs=f"{R4K},freq_coefficient=1"),
    "R4, frequency penalty 3": R4 | dict(knobs=f"{R4K},freq_coefficient=3"),
}


# The default since the corpus went into sha256 order (R5: R4 with the jolt clip): its default run kept
# 1-6 latents per attention SAE silent on the held-out shard, most of which had fired in the last
# 10,000 training tokens, so the revival term never saw them. Does a shorter silence before revival,
# or a stronger pull, leave none (store: that run's; att.5, att.6, att.11; README, round 20)?
R5K = f"{R4K},jolt_clip=3"
R5 = R3 | dict(knobs=R5K)
W14 = dict(widths=[4096], l0_coefficients=[14], train_tokens=245_760)
ROUNDS[20] = {
    "R5: the default run's schedule": R5,
    "R5, dead after 5,000 silent tokens": R5 | dict(knobs=f"{R5K},dead_tokens=5000"),
    "R5, dead after 2,500 silent tokens": R5 | dict(knobs=f"{R5K},dead_tokens=2500"),
    "R5, revive 3e-3": R5 | dict(knobs=f"{R5K},revive_coefficient=0.003"),
    "R5, dead after 2,500, revive 3e-3": R5 | dict(knobs=f"{R5K},dead_tokens=2500,revive_coefficient=0.003"),
    "R5, dead after 2,500, revive 1e-2": R5 | dict(knobs=f"{R5K},dead_tokens=2500,revive_coefficient=0.01"),
    "R5, dead after 1,000, revive 1e-2": R5 | dict(knobs=f"{R5K},dead_tokens=1000,revive_coefficient=0.01"),
    # the head-to-head's lowest target on its store, where a revival that moves b_enc once broke att.6
    "R5 at width 4096, target 14, 245,760 tokens": R5 | W14,
    "R5 at width 4096, target 14, dead after 2,500, revive 1e-2": R5
    | W14
    | dict(knobs=f"{R5K},dead_tokens=2500,revive_coefficient=0.01"),
    "R5 at width 4096, target 14, dead after 1,000, revive 1e-2": R5
    | W14
    | dict(knobs=f"{R5K},dead_tokens=1000,revive_coefficient=0.01"),
    # silence measured in mean gaps between a latent's firings (d_sae / T tokens): 2,500 tokens is 78
    # gaps at L0 64 of 2048 and 8.5 at L0 14 of 4096; 78 gaps there are 23,400 tokens
    "R5 at width 4096, target 14, dead after 23,400, revive 1e-2": R5
    | W14
    | dict(knobs=f"{R5K},dead_tokens=23400,revive_coefficient=0.01"),
    "R5 at width 4096, target 14, dead after 23,400, revive 3e-3": R5
    | W14
    | dict(knobs=f"{R5K},dead_tokens=23400,revive_coefficient=0.003"),
    "R5 at width 4096, target 14, dead after 23,400": R5 | W14 | dict(knobs=f"{R5K},dead_tokens=23400"),
}


# The head-to-head on the sha256-order store (README) has our JumpReLU behind our TopK on mlp.6 at every
# L0, with the highest FVU of the four families at L0 64 (0.078 against TopK's 0.067). Which of the
# JumpReLU-only parts costs reconstruction there: the frequency penalty, or the estimator's window
# (same store and scale as the head-to-head; README, round 21)?
W64 = dict(widths=[4096], l0_coefficients=[64], train_tokens=245_760)
ROUNDS[21] = {
    "R5 at width 4096, target 64": R5 | W64,
    "R5 (w4096, T64), no frequency penalty": R5 | W64 | dict(knobs=f"{R5K},freq_coefficient=0"),
    "R5 (w4096, T64), bandwidth 0.01": R5 | W64 | dict(knobs=f"{R5K},bandwidth=0.01"),
    "R5 (w4096, T64), bandwidth 0.1": R5 | W64 | dict(knobs=f"{R5K},bandwidth=0.1"),
    "TopK k=64 on R5's schedule": R5 | W64 | dict(arch="topk", knobs="dead_tokens=50000"),
}


# Free decoder rows (from norm 0.1, thresholds at 10x lr) matched SAELens' JumpReLU at L0 64 on res.6
# in the head-to-head's setting and lost below it (README, "JumpReLU defaults"). At the default run's
# scale (width 2048, target 64) do they lower res.17, the site above the ceiling (default
# run's store; README, round 22)?
FREE_ROWS = f"{FREE},threshold_lr=10"
ROUNDS[22] = {
    "R5: the default run's schedule": R5,
    "R5, free rows from 0.1, threshold lr x10": R5 | dict(knobs=f"{R5K},{FREE_ROWS}"),
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", default="runs/exp6/activations")
    p.add_argument("--out", default="runs/exp_jumprelu")
    p.add_argument("--site", default="res.6")
    p.add_argument("--round", type=int, default=3, choices=sorted(ROUNDS))
    p.add_argument("--only", default="", help="comma-separated variant numbers (1-based) to run")
    p.add_argument("--eval-sequences", type=int, default=8)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    out = Path(args.out)
    variants = ROUNDS[args.round]
    chosen = [int(i) - 1 for i in args.only.split(",")] if args.only else range(len(variants))
    names = list(variants)
    log = {}
    for i in chosen:
        name = names[i]
        folder = out / "variants" / f"v{i + 1:02d}"
        params = BEFORE | variants[name]
        if params["arch"] == "jumprelu":
            params["knobs"] = f"{PINNED},{params['knobs']}"
        cfg = TrainConfig(
            **(
                params
                | dict(store=args.store, out=str(folder), train_sites=args.site, log_every=1, checkpoint_every=10_000)
            )
        )
        start = time.perf_counter()
        if not (folder / "saes").exists():
            Trainer(cfg).train()
        seconds = time.perf_counter() - start
        first = json.loads((folder / "train" / "log.jsonl").read_text().splitlines()[0])
        (trained,) = (folder / "saes").iterdir()
        dest = out / "saes" / f"v{i + 1:02d}"
        if not dest.exists():
            shutil.copytree(trained, dest)
        log[name] = {
            "folder": dest.name,
            "first_l0": next(v["l0"] for k, v in first.items() if k != "step"),
            "train_s": round(seconds, 1),
            "config": dataclasses.asdict(cfg),
        }
    done = out / "variants.json"
    log = (json.loads(done.read_text()) if done.exists() else {}) | log
    done.write_text(json.dumps(log, indent=1))
    evaluate(EvalConfig(out=str(out), store=args.store, eval_sequences=args.eval_sequences))
    print(table(out, log))


def table(out: Path, log: dict) -> str:
    lines = [
        "| variant | L0 | delta LM loss | FVU | dead | dense | first-step L0 | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in log.items():
        m = json.loads((out / "saes" / row["folder"] / "metrics.json").read_text())
        lines.append(
            f"| {name} | {m['l0']:.1f} | {m['delta_loss']:.3f} | {m['fvu']:.3f} | {m['dead_latents']} | "
            f"{m['dense_latents']} | {row['first_l0']:.0f} | {row['train_s']:.0f} |"
        )
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
