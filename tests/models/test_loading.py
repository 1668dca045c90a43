"""The dtype a model runs in follows the hardware: bfloat16 asked on a CPU that cannot multiply it
natively runs in float32, and the store still keeps bfloat16."""

from __future__ import annotations

import json

import pytest
import torch

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.models import loading
from saescope.models.loading import compute_dtype, cpu_flags, load_model, narrow_float32_cpu


@pytest.fixture
def pretend_flags(monkeypatch, tmp_path):
    """Pretend the CPU lists exactly the given flags (read once per process, so the cache is cleared)."""

    def pretend(*flags: str) -> None:
        cpu_flags.cache_clear()
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 " + " ".join(flags) + "\n")
        monkeypatch.setattr(loading, "CPUINFO", cpuinfo)

    yield pretend
    cpu_flags.cache_clear()


def test_bfloat16_runs_in_float32_on_a_cpu_without_native_bf16(pretend_flags):
    cpu = torch.device("cpu")
    pretend_flags("avx2", "fma")
    assert compute_dtype("bfloat16", cpu) == torch.float32
    assert compute_dtype("float32", cpu) == torch.float32
    pretend_flags("avx2", "avx512_bf16")
    assert compute_dtype("bfloat16", cpu) == torch.bfloat16
    pretend_flags("amx_bf16")
    assert compute_dtype(torch.bfloat16, cpu) == torch.bfloat16


def test_a_cpu_with_avx2_at_the_widest_is_narrow_for_float32(pretend_flags):
    pretend_flags("avx", "avx2", "fma")
    assert narrow_float32_cpu("cpu")
    assert not narrow_float32_cpu("cuda") and not narrow_float32_cpu("mps")
    pretend_flags("avx2", "avx512f", "avx512_bf16")
    assert not narrow_float32_cpu("cpu")
    pretend_flags()  # flags unknown: no claim about the vectors
    assert not narrow_float32_cpu("cpu")


def test_other_devices_keep_the_asked_dtype(pretend_flags):
    pretend_flags("avx2")
    assert compute_dtype("bfloat16", torch.device("mps")) == torch.bfloat16
    assert compute_dtype("float16", torch.device("cpu")) == torch.float16


def test_load_model_and_harvest_follow_the_rule(pretend_flags, tiny_model_dir, tmp_path):
    pretend_flags("avx2")
    model, tokenizer = load_model(str(tiny_model_dir), "bfloat16", "cpu")
    assert next(model.parameters()).dtype == torch.float32
    cfg = HarvestConfig(
        model=str(tiny_model_dir), sites="res", layers="1", tokens=256, context_len=64, store=str(tmp_path / "s")
    )
    harvest(cfg, model, tokenizer)
    info = json.loads((tmp_path / "s" / "store.json").read_text())
    assert info["dtype"] == "bfloat16"
    pretend_flags("amx_bf16")
    model, _ = load_model(str(tiny_model_dir), "bfloat16", "cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
