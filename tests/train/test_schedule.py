"""The learning-rate and sparsity schedules every training job shares."""

from __future__ import annotations

import pytest

from saescope.train.schedule import Schedule, lr_at, sparsity_scale_at


def test_schedules():
    cfg = Schedule(lr=1.0, lr_warmup_steps=100, l0_warmup_steps=1000)
    assert lr_at(0, cfg, 9000) == pytest.approx(0.1) and lr_at(100, cfg, 9000) == 1.0 and lr_at(5000, cfg, 9000) == 1.0
    assert lr_at(50, cfg, 9000) == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(lr_at(s, cfg, 9000) <= lr_at(s + 1, cfg, 9000) for s in range(120))
    decay = Schedule(lr=1.0, lr_warmup_steps=10, lr_decay=0.25)  # the last 25 of 100 steps
    assert lr_at(74, decay, 100) == 1.0 and lr_at(75, decay, 100) == 1.0
    assert lr_at(90, decay, 100) == pytest.approx(0.4) and lr_at(99, decay, 100) == pytest.approx(0.04)
    assert sparsity_scale_at(0, cfg) == 0 and sparsity_scale_at(500, cfg) == 0.5 and sparsity_scale_at(2000, cfg) == 1
