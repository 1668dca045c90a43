"""Metric definitions on a tiny run, checked against direct computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tinymodels import tiny_model

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.activations.loader import ShuffledLoader
from saescope.activations.store import ActivationStore
from saescope.errors import SaescopeError
from saescope.evaluate.heldout import (
    CleanOutputs,
    HeldOutText,
    _token_ce_kl,
    chunk_rows,
    clean_distribution,
    head_ce_kl,
)
from saescope.evaluate.metrics import (
    EvalConfig,
    finished_store,
    store_metrics,
    trained_scale,
)
from saescope.models.sites import Site
from saescope.saes.registry import make_sae


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    model = tiny_model("llama")
    cfg = HarvestConfig(
        sites="res,mlp",
        layers="1",
        tokens=3000,
        context_len=64,
        forward_batch=4,
        dtype="float32",
        shard_rows=1000,
        store=str(tmp_path_factory.mktemp("store")),
        device="cpu",
    )
    return model, ActivationStore(harvest(cfg, model, tiny_tokenizer))


def test_store_metrics_match_direct_computation(setup):
    _, store = setup
    torch.manual_seed(0)
    sae = make_sae("jumprelu", 64, 96).folded(1.0)
    with torch.no_grad():
        sae.threshold.uniform_(0.0, 0.6)
        sae.b_dec.normal_()
    loader = ShuffledLoader(store, ["res.1"], batch_size=256, split="eval", drop_last=False)
    m = store_metrics(sae, loader, "res.1")
    x = store.read("res.1", store.n_shards - 1).float()
    with torch.no_grad():
        f = sae.encode(x)
        err = (sae.decode(f) - x).pow(2).sum()
    var = (x - x.mean(0)).pow(2).sum()
    assert m["tokens"] == len(x) == 1000
    assert m["fvu"] == pytest.approx((err / var).item(), rel=1e-5)
    assert m["l0"] == pytest.approx((f > 0).sum(1).float().mean().item(), rel=1e-6)
    freq = (f > 0).float().mean(0).numpy()
    np.testing.assert_allclose(m["firing_frequency"], freq, rtol=1e-6)
    assert m["dead_latents"] == int((freq == 0).sum()) and m["dense_latents"] == int((freq > 0.1).sum())
    assert sum(m["frequency_histogram"]["counts"]) == int((freq > 0).sum())
    assert m["fvu_weighted"] == pytest.approx(m["fvu"], rel=1e-9)  # one scale for every dimension
    with torch.no_grad():  # SAEBench's reconstruction-shape numbers, per token then averaged
        x_hat = sae.decode(f)
        n_in, n_out = x.norm(dim=1), x_hat.norm(dim=1)
        legacy = [  # against the mean of each batch the loader gave
            1 - (b - sae(b)).pow(2).sum(1) / (b - b.mean(0)).pow(2).sum(1) for b in (c.acts["res.1"] for c in loader)
        ]
    shape = {
        "l1": f.abs().sum(1).mean(),
        "cossim": F.cosine_similarity(x, x_hat, dim=1).mean(),
        "l2_norm_in": n_in.mean(),
        "l2_norm_out": n_out.mean(),
        "l2_ratio": (n_out / n_in).mean(),
        "relative_reconstruction_bias": n_out.pow(2).sum() / (x * x_hat).sum(),
        "explained_variance_legacy": torch.cat(legacy).mean(),
    }
    for name, expected in shape.items():
        assert m[name] == pytest.approx(expected.item(), rel=1e-5), name

    # per-dimension scales: the FVU of x / scale against x_hat / scale, what the SAE was trained to lower
    scale = torch.rand(64, generator=torch.Generator().manual_seed(1)) * 3 + 0.1
    weighted = store_metrics(sae, loader, "res.1", scale=scale)
    with torch.no_grad():
        e, xc = (sae.decode(f) - x) / scale, (x - x.mean(0)) / scale
    assert weighted["fvu_weighted"] == pytest.approx((e.pow(2).sum() / xc.pow(2).sum()).item(), rel=1e-5)
    assert weighted["fvu"] == m["fvu"] and abs(weighted["fvu_weighted"] - m["fvu"]) > 1e-3


def test_trained_scale_is_the_configs_vector_or_a_one_line_error(tmp_path):
    assert trained_scale({"normalization_scale": 2.5}, 3, tmp_path) is None  # one number: FVU is unchanged
    assert trained_scale({}, 3, tmp_path) is None
    assert trained_scale({"normalization_scale": [1, 2.0, 3]}, 3, tmp_path).tolist() == [1.0, 2.0, 3.0]
    for bad in ([1.0, 2.0], [1.0, 0.0, 2.0], [1.0, float("nan"), 2.0], ["a", 1, 2]):
        with pytest.raises(SaescopeError, match="normalization_scale in .*config.json is not 3 positive numbers"):
            trained_scale({"normalization_scale": bad}, 3, tmp_path)


def test_identity_splice_costs_nothing_and_zero_ablation_costs_something(setup, tiny_tokenizer):
    model, store = setup
    text = HeldOutText(
        model,
        tiny_tokenizer,
        "wiki",
        "text",
        store.info["rows"],
        EvalConfig(eval_sequences=4, eval_context_len=32, eval_batch_size=2),
    )
    counted = sum(int(c.sum()) for *_, c in text.batches)
    rows = sum(len(ids) for ids, *_ in text.batches)
    # each row: BOS first (no loss), last position (no target), minus a BOS where a new document starts
    assert text.tokens == counted and rows * 30 - 4 <= counted <= rows * 30
    clean, kl0 = text.loss_with(None, None)
    same, kl = text.loss_with(Site(1, "res"), lambda x: x.clone())
    zero, klz = text.loss_with(Site(1, "mlp"), torch.zeros_like)
    with torch.no_grad():  # the clean CE from the cached pass is the model's own next-token loss
        direct = (
            sum(
                F.cross_entropy(
                    model(input_ids=ids, attention_mask=am).logits[:, :-1].flatten(0, 1).float(),
                    ids[:, 1:].flatten(),
                    reduction="none",
                )
                @ count.flatten()
                for ids, am, _keep, count in text.batches
            )
            / text.tokens
        )
    assert clean == pytest.approx(direct.item(), rel=1e-5) and kl0 == 0
    assert same == pytest.approx(clean, abs=1e-6) and abs(kl) < 1e-6
    assert zero != pytest.approx(clean, abs=1e-4) and klz > 0


def test_heldout_text_is_disjoint_from_the_harvested_tokens(setup, tiny_tokenizer):
    model, store = setup
    text = HeldOutText(
        model,
        tiny_tokenizer,
        "wiki",
        "text",
        store.info["rows"],
        EvalConfig(eval_sequences=6, eval_context_len=32, eval_batch_size=2),
    )
    harvested = {(int(d), int(p)) for i in range(store.n_shards) for _, d, p in store.read_tokens(i)}
    held = {(int(d), int(p)) for docs, pos in text.where for d, p in zip(docs.flatten(), pos.flatten()) if p > 0}
    assert len(held) > 100 and not held & harvested
    # it starts right where the harvest stopped: the token after the last harvested one is held out
    last_doc, last_pos = max(harvested)
    assert (last_doc, last_pos + 1) in held or (last_doc + 1, 1) in held


def test_an_eval_offset_measures_the_next_sequences_no_earlier_evaluation_saw(setup, tiny_tokenizer):
    model, store = setup

    def held(offset: int, sequences: int = 3) -> set[tuple[int, int]]:
        cfg = EvalConfig(eval_sequences=sequences, eval_context_len=32, eval_batch_size=2, eval_offset=offset)
        text = HeldOutText(model, tiny_tokenizer, "wiki", "text", store.info["rows"], cfg)
        return {(int(d), int(p)) for docs, pos in text.where for d, p in zip(docs.flatten(), pos.flatten()) if p > 0}

    first, second = held(0), held(3)
    assert len(second) > 50 and not first & second
    # the second starts where the first stopped: the first six sequences' tokens are all in one of the two
    assert held(0, sequences=6) <= first | second
    with pytest.raises(SaescopeError, match=r"^no text is left after --eval-offset 1000000 sequences: lower it[^\n]*$"):
        held(10**6)


@pytest.mark.parametrize("cache", [True, False])
def test_spliced_loss_matches_a_full_forward(setup, tiny_tokenizer, monkeypatch, cache):
    """Starting at the spliced layer from cached block outputs, and the chunked CE/KL, change nothing."""
    from saescope.evaluate import heldout
    from saescope.models.sites import replace

    if not cache:
        monkeypatch.setattr(heldout, "CLEAN_CACHE_SHARE", 0)
    model, store = setup
    text = HeldOutText(
        model,
        tiny_tokenizer,
        "wiki",
        "text",
        store.info["rows"],
        EvalConfig(eval_sequences=4, eval_context_len=32, eval_batch_size=2),
    )
    assert (text._clean is not None) == cache
    site = Site(1, "mlp")

    def fn(x):
        return 0.5 * x + 0.1

    ce_sum = kl_sum = 0.0
    with torch.no_grad():
        for ids, am, keep, count in text.batches:
            clean = F.log_softmax(model(input_ids=ids, attention_mask=am).logits[:, :-1].double(), -1)
            with replace(model, site, fn, keep=keep):
                logp = F.log_softmax(model(input_ids=ids, attention_mask=am).logits[:, :-1].double(), -1)
            ce_sum += (-logp.gather(-1, ids[:, 1:, None]).squeeze(-1) * count).sum().item()
            kl_sum += ((clean.exp() * (clean - logp)).sum(-1) * count).sum().item()
    ce, kl = text.loss_with(site, fn)
    assert ce == pytest.approx(ce_sum / text.tokens, rel=1e-5)
    assert kl == pytest.approx(kl_sum / text.tokens, rel=1e-4) and kl > 1e-3


def test_text_file_evaluation_and_l0_on_the_spliced_tokens(setup, tiny_tokenizer, tmp_path):
    """`evaluate --text FILE` measures on that file from its start; model_metrics' text L0 counts
    the SAE's active latents on exactly the tokens whose loss it measures (BOS and pad left out)."""
    from saescope.evaluate.metrics import Reference, metrics_file, model_metrics
    from saescope.evaluate.position import Tally

    model, store = setup
    path = tmp_path / "other.txt"
    path.write_text("A wholly different text, in verse and prose.\n\n" * 40)
    cfg = EvalConfig(eval_sequences=2, eval_context_len=32, eval_batch_size=2)
    text = HeldOutText(model, tiny_tokenizer, str(path), "text", 0, cfg)
    assert tiny_tokenizer.decode(text.batches[0][0][0, 1:12]).replace(" ", "").startswith("Awhollydifferent")
    torch.manual_seed(0)
    sae = make_sae("jumprelu", 64, 96).folded(1.0)
    with torch.no_grad():
        sae.threshold.uniform_(0.0, 0.6)
    tally = Tally(text.groups)
    clean, _ = text.loss_with(None, None, tally)
    m = model_metrics(text, sae, Site(1, "res"), Reference.measure(text, (clean, tally), Site(1, "res")))
    seen = []
    text.loss_with(Site(1, "res"), lambda x: seen.append(x.float().clone()) or x)
    real = [~keep for _ids, _am, keep, _count in text.batches]
    with torch.no_grad():
        direct = torch.cat([(sae.encode(x)[m_] > 0).sum(-1).float() for x, m_ in zip(seen, real)]).mean().item()
    assert m["text_l0"] == pytest.approx(direct, rel=1e-6)
    assert metrics_file(str(path)) == "metrics.other.json" and metrics_file() == "metrics.json"


def test_evaluate_reads_the_store_the_run_recorded(setup, tmp_path):
    """`saescope evaluate --out RUN` of a run trained on a store kept elsewhere (`run --store`)
    evaluates on that store's held-out rows, as --store's help says, not on a missing RUN/activations."""
    _, trained_on = setup
    (tmp_path / "config.json").write_text(json.dumps({"store": str(trained_on.path)}))
    assert finished_store(EvalConfig(out=str(tmp_path))).path == trained_on.path
    with pytest.raises(SaescopeError, match="does not exist"):
        finished_store(EvalConfig(out=str(tmp_path / "no-run")))


def test_ce_and_kl_do_not_depend_on_how_many_positions_a_pass_over_the_vocabulary_takes():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 7, 50).bfloat16(), torch.randint(0, 50, (2, 7))
    logp = torch.log_softmax(torch.randn(14, 50), -1)
    clean = CleanOutputs(logp.exp(), (logp.exp() * logp).sum(-1), torch.zeros(2, 7), [])
    z = logits.float().flatten(0, 1)
    ce_ref = F.cross_entropy(z, targets.flatten(), reduction="none")
    kl_ref = (logp.exp() * (logp - torch.log_softmax(z, -1))).sum(-1)
    for chunk in (1, 3, 14, 0):
        ce, kl = _token_ce_kl(logits, clean, targets, chunk)
        assert torch.allclose(ce.flatten(), ce_ref, atol=1e-5) and torch.allclose(kl.flatten(), kl_ref, atol=1e-5)
    # 4 MiB of float32 logits per pass on a CPU: 4 positions of Gemma 3's 262,144 tokens, at least one
    assert chunk_rows(262_144, torch.device("cpu")) == 4 and chunk_rows(10**7, torch.device("cpu")) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_ce_and_kl_by_blocks_of_the_vocabulary_match_the_reference_on_the_whole_logits(monkeypatch, dtype, softcap):
    """`head_ce_kl` (the head's product a block of the vocabulary at a time, blocks that do not divide it)
    gives `_token_ce_kl` of the whole logits, with a bias and a soft-cap, in float32 and bfloat16."""
    from saescope.evaluate import heldout
    from saescope.models.head import LMHead

    torch.manual_seed(0)
    vocab, d = 1000, 16
    head = LMHead((torch.randn(vocab, d) * 0.5).to(dtype), torch.randn(vocab).to(dtype), softcap)
    hidden, targets = torch.randn(2, 7, d).to(dtype), torch.randint(0, vocab, (2, 7))
    clean_logits = head.logits(torch.randn(2, 7, d).to(dtype))
    clean = CleanOutputs(*clean_distribution(clean_logits, targets), [])
    ce_ref, kl_ref = _token_ce_kl(head.logits(hidden), clean, targets)
    assert kl_ref.min() > 0.1
    monkeypatch.setattr(heldout, "CHUNK_BYTES", {"cpu": 4 * 14 * 96})  # blocks of 96 entries: 11 blocks
    assert len(heldout.vocab_blocks(vocab, 14, torch.device("cpu"))) == 11
    ce, kl = head_ce_kl(hidden, head, clean, targets)
    assert torch.allclose(ce, ce_ref, atol=1e-5, rtol=1e-5) and torch.allclose(kl, kl_ref, atol=1e-5, rtol=1e-5)


def test_kl_to_the_clean_model_matches_float64_on_a_flat_distribution_over_a_large_vocabulary():
    """F.log_softmax's float32 normalisation drifts on such logits (its exp summed to 1 + 9e-6 here, 1 + 6e-5
    on Gemma 3's), and KL's formula takes the clean mass as 1: KL was biased by logsumexp x that drift."""
    torch.manual_seed(0)
    clean_z = torch.randn(1, 8, 262_144).bfloat16()
    spliced_z = (clean_z.float() + 0.05 * torch.randn(1, 8, 262_144)).bfloat16()
    targets = torch.randint(0, 262_144, (1, 8))
    probs, neg_entropy, ce = clean_distribution(clean_z, targets)
    assert (probs.double().sum(-1) - 1).abs().max() < 2e-6
    ref_clean = torch.log_softmax(clean_z.double(), -1).flatten(0, 1)
    ref_spliced = torch.log_softmax(spliced_z.double(), -1).flatten(0, 1)
    ref_kl = (ref_clean.exp() * (ref_clean - ref_spliced)).sum(-1)
    ref_ce = -ref_clean.gather(-1, targets.flatten()[:, None]).squeeze(-1)
    _, kl = _token_ce_kl(spliced_z, CleanOutputs(probs, neg_entropy, ce, []), targets)
    assert torch.allclose(kl.flatten().double(), ref_kl, atol=1e-5, rtol=0)
    assert torch.allclose(ce.flatten().double(), ref_ce, atol=1e-5, rtol=0)
