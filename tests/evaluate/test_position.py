"""Loss and FVU by token position and by topic, against direct computations on a tiny model.

The planted splices are the identity except on one position bucket (or one topic's documents), where
they zero the site. The expected numbers come from plain full forwards, per-token losses grouped by
hand: nothing of saescope's grouping, tallying or skipping of clean blocks is reused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tinymodels import tiny_model

from saescope.activations.documents import load_documents
from saescope.evaluate.heldout import HeldOutText
from saescope.evaluate.metrics import EvalConfig, Reference, model_metrics
from saescope.evaluate.position import POSITION_LABELS, Tally, breakdowns, position_buckets, sequence_losses
from saescope.models.sites import Site, capture, replace
from saescope.saes.registry import make_sae

SITE = Site(1, "res")


def test_buckets_follow_the_packed_position():
    positions = torch.tensor([0, 1, 2, 4, 5, 16, 17, 64, 65, 256, 257, 5000, -1])
    assert position_buckets(positions).tolist() == [-1, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, -1]


@pytest.fixture(scope="module")
def text(tiny_tokenizer):
    cfg = EvalConfig(eval_sequences=24, eval_context_len=48, eval_batch_size=4)
    return HeldOutText(tiny_model("llama"), tiny_tokenizer, "wiki", "text", 0, cfg)


def direct(text: HeldOutText, planted: list[torch.Tensor], group_of) -> dict[str, dict]:
    """Per group, from full forwards: tokens, delta loss, CE recovered, FVU (against the text's mean
    row) and L0 of a splice that zeroes the site where `planted` and leaves it elsewhere."""
    sums: dict = {}
    rows_x = []
    for i, (ids, am, keep, count) in enumerate(text.batches):
        seen: dict = {}
        with capture(text.model, [SITE], lambda _s, x, seen=seen: seen.__setitem__("x", x.float()), stop_after=False):
            clean = text.model(input_ids=ids, attention_mask=am).logits[:, :-1]
        spliced_fn, zero_fn = (lambda x, p=planted[i]: torch.where(p[..., None], 0.0, x)), torch.zeros_like
        ce = {"clean": _ce(clean, ids)}
        for name, fn in (("spliced", spliced_fn), ("zero", zero_fn)):
            with replace(text.model, SITE, fn, keep=keep):
                ce[name] = _ce(text.model(input_ids=ids, attention_mask=am).logits[:, :-1], ids)
        groups = group_of(i)
        for b, t in (count > 0).nonzero().tolist():
            s = sums.setdefault(groups[b][t], {"n": 0, "d": 0.0, "lost": 0.0, "x": [], "sse": 0.0, "l0": 0})
            s["n"] += 1
            s["d"] += (ce["spliced"][b, t] - ce["clean"][b, t]).item()
            s["lost"] += (ce["zero"][b, t] - ce["clean"][b, t]).item()
        for b, t in (~keep).nonzero().tolist():
            x = seen["x"][b, t].double()
            s = sums.setdefault(groups[b][t], {"n": 0, "d": 0.0, "lost": 0.0, "x": [], "sse": 0.0, "l0": 0})
            s["x"].append(x)
            s["sse"] += x.pow(2).sum().item() if planted[i][b, t] else 0.0
            s["l0"] += int(planted[i][b, t])
            rows_x.append(x)
    mean = torch.stack(rows_x).mean(0)
    return {
        g: {
            "tokens": s["n"],
            "delta_loss": s["d"] / s["n"],
            "ce_loss_recovered": 1 - s["d"] / s["lost"],
            "rows": len(s["x"]),
            "fvu": s["sse"] / (torch.stack(s["x"]) - mean).pow(2).sum().item(),
            "l0": s["l0"] / len(s["x"]),
            "sse": s["sse"],
            "spread": (torch.stack(s["x"]) - mean).pow(2).sum().item(),
        }
        for g, s in sums.items()
    }


def _ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return -F.log_softmax(logits.double(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def tallied(text: HeldOutText, planted: list[torch.Tensor]) -> dict:
    """saescope's breakdowns of the same planted splice."""
    clean, spliced = Tally(text.groups), Tally(text.groups)
    text.loss_with(None, None, clean)
    zero = Reference.measure(text, (0.0, clean), SITE).zero

    def splice(x: torch.Tensor) -> torch.Tensor:
        p = planted[text.batch]
        out = torch.where(p[..., None], 0.0, x.float())
        spliced.add_rows(text.batch, x.float(), out, p.long(), ~text.batches[text.batch][2])
        return out

    text.loss_with(SITE, splice, spliced)
    return breakdowns(spliced, clean, zero, ["position", "topic"]) | {"by_sequence": sequence_losses(spliced, clean)}


def check(got: dict[str, dict], want: dict[str, dict]) -> None:
    for group, w in want.items():
        g = got[group]
        assert g["tokens"] == w["tokens"] and g["rows"] == w["rows"]
        for key in ("delta_loss", "ce_loss_recovered", "fvu", "l0"):
            assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), (group, key)
    assert all(got[g]["tokens"] == 0 and got[g]["delta_loss"] is None for g in set(got) - set(want))


def test_a_splice_planted_at_one_position_bucket(text):
    """Zeroing the site at positions 5-16 only: FVU is 0 in every other bucket and the hand-computed
    value there; every bucket's delta loss and CE recovered match full forwards."""
    buckets = [position_buckets(p) for _, p in text.where]
    planted = [(b == 2) & ~keep for b, (_, _, keep, _) in zip(buckets, text.batches)]
    out = tallied(text, planted)
    want = direct(text, planted, lambda i: [[POSITION_LABELS[j] if j >= 0 else None for j in r] for r in buckets[i]])
    want.pop(None, None)
    check(out["by_position"], want)
    assert set(want) >= {"1", "2-4", "5-16", "17-64"}
    assert want["5-16"]["fvu"] > 0.5 and want["1"]["fvu"] == 0 and out["by_position"]["17-64"]["fvu"] == 0
    assert out["by_position"]["5-16"]["l0"] == 1.0 and out["by_position"]["2-4"]["l0"] == 0.0
    # the groups' parts add up to the whole text's FVU
    sse, spread = sum(w["sse"] for w in want.values()), sum(w["spread"] for w in want.values())
    assert out["text_fvu"] == pytest.approx(sse / spread, rel=1e-4)


def test_each_sequences_losses_are_its_own(text):
    """Zeroing the site on a different stretch of every sequence: each sequence's tokens and delta loss
    match full forwards grouped by hand by row; a sequence left alone costs nothing."""
    planted, first = [], 0
    for _, _, keep, _ in text.batches:
        rows, length = keep.shape
        stretch = torch.zeros(rows, length, dtype=torch.bool)
        for b in range(rows):
            if (first + b) % 3:  # every third sequence is left alone
                stretch[b, 2 + (first + b) % 7 : 10 + (first + b) % 11] = True
        planted.append(stretch & ~keep)
        first += rows
    got = tallied(text, planted)["by_sequence"]
    starts = [sum(len(p) for _, p in text.where[:i]) for i in range(len(text.where))]
    want = direct(text, planted, lambda i: [[str(starts[i] + b)] * len(r) for b, r in enumerate(text.where[i][1])])
    assert len(got["tokens"]) == first == len(got["delta_loss"]) == len(got["kl_div"]) and first >= 6
    for s, (n, delta, kl) in enumerate(zip(got["tokens"], got["delta_loss"], got["kl_div"])):
        assert n == want[str(s)]["tokens"]
        assert delta == pytest.approx(want[str(s)]["delta_loss"], rel=1e-4, abs=1e-6)
        assert (abs(delta) < 1e-6 and kl < 1e-6) if s % 3 == 0 else kl > 0
    assert sum(got["tokens"]) == text.tokens


def test_a_splice_planted_on_one_topic(text):
    """Zeroing the site on one topic's documents: that topic's FVU is the hand value, the others' 0."""
    wiki = load_documents("wiki")
    topics = [[[wiki[d].topic if d >= 0 else None for d in row.tolist()] for row in ids] for ids, _ in text.where]
    present = sorted({t for batch in topics for row in batch for t in row if t})
    target = present[0]
    planted = [
        torch.tensor([[t == target for t in row] for row in topics[i]]) & ~keep
        for i, (_, _, keep, _) in enumerate(text.batches)
    ]
    out = tallied(text, planted)
    assert list(out["by_topic"]) == present and len(present) >= 2
    want = direct(text, planted, lambda i: topics[i])
    check(out["by_topic"], want)
    assert out["by_topic"][target]["fvu"] > 0.5 and all(out["by_topic"][t]["fvu"] == 0 for t in present[1:])


def test_the_identity_sae_costs_nothing_anywhere(text):
    """An SAE whose latents are relu(x) and relu(-x) reconstructs x exactly: every bucket's and
    topic's delta loss, KL and FVU is zero, and the buckets' tokens add up to the text's."""
    sae = make_sae("jumprelu", 64, 128).folded(1.0)
    eye = torch.eye(64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        for p in (sae.b_enc, sae.b_dec, sae.threshold):
            p.zero_()
    clean = Tally(text.groups)
    ce, _ = text.loss_with(None, None, clean)
    m = model_metrics(text, sae, SITE, Reference.measure(text, (ce, clean), SITE))
    assert abs(m["delta_loss"]) < 1e-5 and m["text_fvu"] < 1e-10
    for group in [*m["by_position"].values(), *m["by_topic"].values()]:
        if group["tokens"]:
            assert abs(group["delta_loss"]) < 1e-5 and abs(group["kl_div"]) < 1e-5 and group["fvu"] < 1e-10
    assert sum(g["tokens"] for g in m["by_position"].values()) == text.tokens == m["eval_text_tokens"]
    assert sum(g["tokens"] for g in m["by_topic"].values()) == text.tokens  # every wiki document has a topic
    assert sum(m["by_sequence"]["tokens"]) == text.tokens and max(map(abs, m["by_sequence"]["delta_loss"])) < 1e-5
