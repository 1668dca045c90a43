"""Shared fixtures: tiny random models of every supported family, a tiny offline tokenizer, and
the real Gemma 3 270M (loaded once per session, only by tests marked `slow`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tinymodels import VOCAB, tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from saescope.activations.documents import load_documents


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
