"""Tiny random models of every supported family, importable from any test folder.

(Test modules import these from here, not from conftest.py: with several conftest.py files in the
tree, `import conftest` would pick whichever was loaded first.)"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GPT2Config, LlamaConfig, Qwen2Config

VOCAB = 600
FAMILIES = ["gemma3_text", "gemma2", "llama", "qwen2", "gpt2"]


def tiny_config(family: str, layers: int = 3):
    common = dict(vocab_size=VOCAB, num_hidden_layers=layers)
    if family == "gemma3_text":
        return Gemma3TextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=24,
            sliding_window=16,
            layer_types=None,
            **common,
        )
    if family == "gemma2":
        return Gemma2Config(
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,
            sliding_window=16,
            **common,
        )
    if family == "llama":
        return LlamaConfig(
            hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, **common
        )
    if family == "qwen2":
        return Qwen2Config(
            hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, **common
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB, n_layer=layers, n_embd=64, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2
        )
    raise ValueError(family)


def tiny_model(family: str, layers: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, layers), attn_implementation="eager")
    return model.eval().requires_grad_(False)
