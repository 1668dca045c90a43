"""Shared fixtures: tiny random models of every supported family, a tiny offline tokenizer, and
the real Gemma 3 270M (loaded once per session, only by tests marked `slow`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GPT2Config, LlamaConfig,
                          PreTrainedTokenizerFast, Qwen2Config)

from saescope.activations.corpus import load_documents

VOCAB = 600
FAMILIES = ["gemma3_text", "gemma2", "llama", "qwen2", "gpt2"]


def tiny_config(family: str, layers: int = 3):
    common = dict(vocab_size=VOCAB, num_hidden_layers=layers)
    if family == "gemma3_text":
        return Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1,
                                head_dim=24, sliding_window=16, layer_types=None, **common)
    if family == "gemma2":
        return Gemma2Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=24, sliding_window=16, **common)
    if family == "llama":
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, **common)
    if family == "qwen2":
        return Qwen2Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, **common)
    if family == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_layer=layers, n_embd=64, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2)
    raise ValueError(family)


def tiny_model(family: str, layers: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, layers), attn_implementation="eager")
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"])
    backend.train_from_iterator([d.text for d in load_documents("wiki", limit=300)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny Gemma 3 saved like any Hugging Face model folder, for CLI tests in subprocesses."""
    path = tmp_path_factory.mktemp("tiny-gemma3")
    tiny_model("gemma3_text").save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gemma():
    """The real embedded Gemma 3 270M in float32, with its tokenizer."""
    from saescope.models.loading import load_model

    return load_model("embedded", "float32", "cpu")


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1"))
