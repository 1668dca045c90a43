"""Feature absorption (Chanin et al. 2024, arXiv 2409.14507) as SAEBench 0.6.0 measures it, and the
same arithmetic on topic probes.

First letter (`letter_data`): the tokenizer's single tokens that are ASCII letters after an optional
leading space, seeded, capped at `max_words`, split 80/20. Each is read at its own token after a newline
and ten examples `{w} has the first letter: {W}` of its own split (the rest of the template follows the
word, so causal attention keeps it out of the activation), at every site in one pass. A one-vs-rest
logistic probe per letter is fit on the train words; a letter counts when its test F1 is above 0.6, and
the method needs 20 such letters (SAEBench's `min_GT_probe_f1`, `min_feats_for_eval`: a mean over fewer
is a mean over the few letters the model spells best), else every SAE gets `not_applicable` with the
count. Per SAE (`evaluate_task`), an L1 probe on the latents ranks each letter's latents; k-sparse probes
keep the first k (1..10) after which F1 gains no more than 0.03 (the main latents); `word_absorption`
then scores each test word the probe fires on: how much of the probe projection probe-aligned latents
other than the main ones carry.

Topics (`topic_data`): the same steps with the corpus' topics as classes and the sparse-probing
documents as units (probing.py's documents and train/test split; a document is the mean of its tokens
but BOS, as SAEBench's sparse probing pools them). Per-token topic probes fail the gate on Gemma 3 270M
(a "the" carries no topic), and the arithmetic is linear, so pooled codes and activations split a
document's projection exactly.

Deviations, for a 2-core CPU: the words of one forward batch share their examples (the prefix runs once
and its key/value cache serves the batch: a word costs one token, not ~80); the test words' activations
serve absorption too (SAEBench prompts them again); probes on activations and k-sparse probes are fit
by L-BFGS; the L1 probe takes SAEBench's number of Adam steps on the full batch. A latent's part of the
projection is its activation times its decoder row's dot product with the unit probe: SAEBench writes
activation x cosine, the same for unit-norm rows, which folded SAEs with per-dimension scales lack.
"""

from __future__ import annotations

import inspect
import math
import random
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saescope.evaluate.probing import TEST_FRACTION, DocumentActivations, one_thread, split_documents
from saescope.models.sites import Site, StopForward, capture, family_of
from saescope.saes.base import SAE

LETTERS = "abcdefghijklmnopqrstuvwxyz"
TEMPLATE = "{word} has the first letter:"
TRAIN_FRACTION = 0.8
MIN_PROBE_F1 = 0.6  # min_GT_probe_f1
MIN_LETTERS = 20  # min_feats_for_eval
MIN_TOPICS = 6  # half the corpus' 12 topics: a mean over fewer is one or two topics' story
MAX_K = 10  # max_k_value
F1_JUMP = 0.03  # f1_jump_threshold
L1_DECAY, L1_EPOCHS, L1_BATCH = 0.01, 50, 4096  # k_sparse_probe_*
PROBE_L2 = 1e-4  # SAEBench's probe weight decay
FRACTION_COS = 0.1  # ABSORPTION_FRACTION_PROBE_COS_THRESHOLD
FULL_COS = 0.025  # FULL_ABSORPTION_PROBE_COS_THRESHOLD
PROJECTION_SHARE = 0.4  # ABSORPTION_PROBE_PROJECTION_PROPORTION_THRESHOLD
MAX_ABSORBERS = 3  # ABSORPTION_FRACTION_MAX_ABSORBING_LATENTS
EPS = 1e-8  # a main latent below this has not fired
MAX_WORDS = 8000  # vocabulary words sampled for the first-letter task


@dataclass
class Labelled:
    """One task's units at a site (a word's activation, or a document's mean) and class indices, split:
    made once per site, shared by its SAEs. `latents(sae)` gives the units' SAE codes when a unit is
    not one row (a document's codes are the mean of its tokens'); without it each row is encoded."""

    classes: list[str]
    x: tuple[Tensor, Tensor]  # train and test units [n, d]
    y: tuple[Tensor, Tensor]  # class per unit
    latents: Callable[[SAE], tuple[Tensor, Tensor]] | None = None
    fitted: tuple[Tensor, Tensor] | None = None  # the probes on x, once fit (`probes`, `fit_probes`)

    def codes(self, sae: SAE) -> tuple[Tensor, Tensor]:
        return self.latents(sae) if self.latents else (sae_codes(sae, self.x[0]), sae_codes(sae, self.x[1]))

    def fit(self) -> tuple[Tensor, Tensor]:
        """The one-vs-rest probes of every class on the train units."""
        return fit_logistic(self.x[0], F.one_hot(self.y[0], len(self.classes)).float(), PROBE_L2)

    def probes(self) -> tuple[Tensor, Tensor]:
        if self.fitted is None:
            fit_probes([self])
        return self.fitted


def fit_probes(tasks: list[Labelled]) -> None:
    """Fit the probes of several tasks side by side, each fit on one thread, as many at once as torch
    has threads: both cores work (L-BFGS's bookkeeping between the products is serial), no fit waits
    on another's threads when the machine is busy, and the weights are the same to the bit as one
    fit after another (measured, like the speed: the first-letter probes of the default run's 54 sites
    took 65 s against 112 s one after another, on 2 cores). Every site of a group is fit at once."""
    todo = [task for task in tasks if task.fitted is None]
    workers = max(1, min(torch.get_num_threads(), len(todo)))
    with one_thread(), ThreadPoolExecutor(workers) as pool:
        for task, fitted in zip(todo, pool.map(Labelled.fit, todo)):
            task.fitted = fitted


def alpha_words(tokenizer) -> list[tuple[str, int]]:
    """(text, token id) of every vocabulary token that is ASCII letters after an optional leading space."""
    words = []
    for token, tid in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        text = tokenizer.convert_tokens_to_string([token])
        text = " " + text if token.startswith("▁") and not text.startswith(" ") else text  # SAEBench's fix
        if text.removeprefix(" ").isascii() and text.removeprefix(" ").isalpha():
            words.append((text, tid))
    return words


def split_words(words: list, seed: int, max_words: int) -> tuple[list, list]:
    """A seeded sample of at most `max_words`, cut 80/20 into disjoint train and test lists."""
    chosen = random.Random(seed).sample(words, min(max_words, len(words)))
    cut = int(len(chosen) * TRAIN_FRACTION)
    return chosen[:cut], chosen[cut:]


def _letter(word: str) -> int:
    return LETTERS.index(word.strip()[0].lower())


def cached_rows(model: nn.Module, sites: list[Site], prefix: list[int], last: list[int]) -> dict[Site, Tensor]:
    """Each site's activations [len(last), d] at token t of `prefix + [t]`, for each t in `last`.

    The prefix runs once and its key/value cache, repeated over the batch, serves every t; with
    causal attention that is the same as running each sequence whole."""
    from transformers import DynamicCache

    inner = model.get_submodule(family_of(model).layers.rsplit(".", 1)[0])
    key = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"  # 5.x / 4.x
    cache = DynamicCache(config=model.config) if key == "cache" else DynamicCache()
    device, seen = next(model.parameters()).device, {}

    def run(ids: list[list[int]]) -> None:
        try:
            inner(input_ids=torch.tensor(ids, device=device), use_cache=True, **{key: cache})
        except StopForward:
            pass

    with capture(model, sites, seen.__setitem__), torch.inference_mode():
        run([prefix])
        cache.batch_repeat_interleave(len(last))
        run([[t] for t in last])
    return {site: seen[site][:, -1].float().cpu() for site in sites}


def _letter_rows(
    model, tokenizer, sites: list[Site], words: list, rng: random.Random, batch: int, icl: int
) -> dict[Site, Tensor]:
    """Activations at each word after `icl` examples drawn from the same list, never from its batch."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    newline, tail, *answers = tokenizer(
        ["\n", TEMPLATE.format(word="")] + [" " + c.upper() for c in LETTERS], add_special_tokens=False
    ).input_ids
    rows = []
    for i in range(0, len(words), batch):
        chunk = words[i : i + batch]
        taken = {tid for _, tid in chunk}
        pool = [w for w in words if w[1] not in taken]
        examples = rng.sample(pool, min(icl, len(pool)))
        body = [t for text, tid in examples for t in (tid, *tail, *answers[_letter(text)], *newline)]
        rows.append(cached_rows(model, sites, bos + newline + body, [tid for _, tid in chunk]))
    return {site: torch.cat([r[site] for r in rows]) for site in sites}


def fit_logistic(x: Tensor, y: Tensor, l2: float, iterations: int = 100) -> tuple[Tensor, Tensor]:
    """One-vs-rest logistic probes, balanced class weights, half `l2` x squared raw weights added to the mean
    loss: weights [C, d] and biases [C]. x is [n, d] for all C probes or [C, n, d] one each; y [n, C] in {0, 1}.

    L-BFGS sees x centred and divided by one number, so the geometry stays the raw space's (per-dimension
    scaling tilts probes toward low-variance dimensions no decoder row points along). SAEBench's weight
    decay barely binds: as its 50 Adam epochs do, the iteration budget regularises. Standardising each
    dimension instead converges faster where a few dimensions dwarf the rest (Gemma's res.1 and res.2:
    22 of 26 letters pass against 0) but tilts every probe off the decoder: at res.6 no decoder row
    came within cosine 0.1 of any letter's probe, so no latent could count as absorbing (measured).
    float64: in float32 the unconverged path moved res.6's absorption from 0.082 to 0.070."""
    xs = (x if x.ndim == 3 else x.unsqueeze(0)).double()
    mean = xs.mean(1, keepdim=True)
    scale = (xs - mean).pow(2).sum(-1).mean(-1).sqrt().clamp_min(1e-12)  # [C or 1]
    z, y = (xs - mean) / scale[:, None, None], y.double()
    n, classes = y.shape
    weight = torch.where(y > 0, n / (2 * y.sum(0).clamp_min(1)), n / (2 * (n - y.sum(0)).clamp_min(1)))
    w = torch.zeros(classes, z.shape[-1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iterations, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure() -> Tensor:
        opt.zero_grad()
        logits = (z[0] @ w.T if len(z) == 1 else torch.einsum("cnd,cd->nc", z, w)) + b
        penalty = 0.5 * l2 * (w / scale[:, None]).pow(2).sum()
        loss = F.binary_cross_entropy_with_logits(logits, y, weight=weight) + penalty
        loss.backward()
        return loss

    opt.step(closure)
    raw = w.detach() / scale[:, None]
    return raw.float(), (b.detach() - (raw * mean.squeeze(1)).sum(-1)).float()


def f1_scores(scores: Tensor, y: Tensor) -> Tensor:
    """F1 of each column of `scores` [n, C] read as positive above 0, against y [n, C] (0 with no positive)."""
    pred, true = scores > 0, y > 0
    tp, fp, fn = (pred & true).sum(0), (pred & ~true).sum(0), (~pred & true).sum(0)
    return (2 * tp / (2 * tp + fp + fn).clamp_min(1)).float()


def sae_codes(sae: SAE, x: Tensor, chunk: int = 4096) -> Tensor:
    """Latent activations of each row, dense [n, d_sae]."""
    with torch.no_grad():
        parts = [sae.encode(x[i : i + chunk].to(sae.W_enc.device)).float().cpu() for i in range(0, len(x), chunk)]
    return torch.cat(parts)


def l1_probe(codes: Tensor, y: Tensor) -> Tensor:
    """SAEBench's L1-penalised multi-probe on the latents, weights [C, d_sae]: it ranks each class's latents.

    BCE with positives weighted by negatives/positives, L1 0.01 (mean over probes), Adam from lr 1e-2
    decaying to 1e-5, weight decay 1e-6; full batch for SAEBench's number of steps (50 epochs of 4096)."""
    steps = L1_EPOCHS * math.ceil(len(y) / L1_BATCH)
    w, b = torch.zeros(y.shape[1], codes.shape[1], requires_grad=True), torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2, weight_decay=1e-6)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=(1e-5 / 1e-2) ** (1 / steps))
    pos_weight = (len(y) - y.sum(0)) / y.sum(0).clamp_min(1)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(codes @ w.T + b, y, pos_weight=pos_weight)
        (loss + L1_DECAY * w.abs().sum(-1).mean()).backward()
        opt.step()
        sched.step()
    return w.detach()


def main_latents(codes_train: Tensor, y_train: Tensor, codes_test: Tensor, y_test: Tensor, ranks: Tensor) -> list:
    """Each class's main latents: the top k by L1 weight, k grown while the k-sparse probe's test F1 gains
    more than 0.03 (SAEBench's feature-split rule; k=1 always counts)."""
    top = ranks.topk(min(MAX_K, ranks.shape[1]), dim=1).indices
    f1s = []
    for k in range(1, top.shape[1] + 1):
        w, b = fit_logistic(torch.stack([codes_train[:, i] for i in top[:, :k]]), y_train, 1 / len(y_train))
        test = torch.stack([codes_test[:, i] for i in top[:, :k]])  # [C, n, k]: each class its own latents
        f1s.append(f1_scores(torch.einsum("cnk,ck->nc", test, w) + b, y_test))
    table, mains = torch.stack(f1s, 1), []
    for c in range(len(top)):
        best, keep = -math.inf, 0
        while keep < table.shape[1] and table[c, keep] > best + F1_JUMP:
            best, keep = table[c, keep].item(), keep + 1
        mains.append(top[c, :keep].tolist())
    return mains


def word_absorption(x: Tensor, codes: Tensor, w_dec: Tensor, probe: Tensor, main: list[int]) -> tuple[Tensor, Tensor]:
    """Absorption fraction [n] and full absorption (bool [n]) of rows x [n, d] with latents codes [n, m].

    A latent's projection is code x (decoder row . unit probe). Fraction (SAEBench's rules): 0 unless the
    main latents' projection falls short of the activation's and the top 3 other latents with cosine
    >= 0.1 and a positive projection carry >= 40% of it; then 1 if the main latents give nothing, else
    absorbed / (absorbed + main), absorbed = min(those latents, the shortfall). Full: every main latent
    below 1e-8, the top projecting latent has cosine >= 0.025 and carries >= 40% of a positive projection."""
    p = probe.float() / probe.norm()
    along = w_dec.float() @ p
    cos = along / w_dec.float().norm(dim=1).clamp_min(1e-12)
    proj, act = codes.float() * along, x.float() @ p
    is_main = torch.zeros(len(along), dtype=torch.bool)
    is_main[main] = True
    main_proj = proj[:, is_main].sum(1)
    others = torch.where(~is_main & (cos >= FRACTION_COS) & (proj > 0), proj, torch.zeros(()))
    absorbers = others.topk(min(MAX_ABSORBERS, len(along)), dim=1).values.sum(1)
    absorbed = torch.minimum(absorbers, act - main_proj)
    fraction = torch.where(main_proj <= 0, 1.0, (absorbed / (absorbed + main_proj)).clamp(0, 1))
    counts = (act > 0) & (main_proj < act) & (absorbers >= PROJECTION_SHARE * act)
    top_proj, top = proj.max(1)
    silent = (codes[:, is_main] < EPS).all(1)
    full = silent & (cos[top] >= FULL_COS) & (act > 0) & (top_proj >= PROJECTION_SHARE * act)
    return torch.where(counts, fraction, 0.0), full


def _class_result(fraction: Tensor, full: Tensor, main: list[int]) -> dict:
    """SAEBench's per-letter numbers: sums over the probe's true positives, divided by their count."""
    n = len(fraction)
    return {
        "mean_absorption_fraction": fraction.sum().item() / n,
        "full_absorption_rate": full.sum().item() / n,
        "num_full_absorption": int(full.sum()),
        "num_probe_true_positives": n,
        "num_split_features": len(main),
    }


def _metrics(details: list[dict]) -> dict:
    """SAEBench's `mean` category: means and sample standard deviations over the classes that passed."""
    names = {
        "absorption_fraction_score": "mean_absorption_fraction",
        "full_absorption_score": "full_absorption_rate",
        "num_split_features": "num_split_features",
    }
    mean = {}
    for name, key in names.items():
        values = [d[key] for d in details]
        mean[f"mean_{name}"] = statistics.mean(values)
        mean[f"std_dev_{name}"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean}


def score_sae(sae: SAE, data: Labelled, probes: tuple[Tensor, Tensor], passing: list[int], label: str) -> dict:
    """One SAE's absorption on a site's shared data and probes, for the classes that passed the gate."""
    y_train, y_test = (F.one_hot(y, len(data.classes)).float() for y in data.y)
    codes_train, codes_test = data.codes(sae)
    keep = torch.tensor(passing)
    ranks = l1_probe(codes_train, y_train)[keep]
    mains = main_latents(codes_train, y_train[:, keep], codes_test, y_test[:, keep], ranks)
    x_test = data.x[1]
    fires = x_test @ probes[0].T + probes[1] > 0
    w_dec, details = sae.W_dec.detach().float().cpu(), []
    for c, main in zip(passing, mains):
        rows = (data.y[1] == c) & fires[:, c]
        fraction, full = word_absorption(x_test[rows], codes_test[rows], w_dec, probes[0][c], main)
        details.append({label: data.classes[c], **_class_result(fraction, full, main)})
    return {"eval_result_metrics": _metrics(details), "eval_result_details": details}


def _unfit(sae: SAE, width: int) -> str | None:
    """Why an SAE cannot be scored on this site's activations, if it cannot."""
    if getattr(sae, "transcoder", "none") != "none" or hasattr(sae, "affine_skip_connection"):
        return "a transcoder's decoder writes another site, so no probe on its input site measures its latents"
    if sae.W_dec.shape[1] != width:
        return f"the SAE reads width {sae.W_dec.shape[1]} but the site has {width}"
    return None


def evaluate_task(
    data: Labelled, saes: dict[str, SAE], unit: str, min_classes: int, config: dict, min_f1: float = MIN_PROBE_F1
) -> dict:
    """Fit the site's probes once, gate them by test F1, then score every SAE of the site."""
    classes = len(data.classes)
    (x_train, x_test), (y_train, y_test) = data.x, data.y
    probes = data.probes()
    f1 = f1_scores(x_test @ probes[0].T + probes[1], F.one_hot(y_test, classes).float())
    passing = [c for c in range(classes) if f1[c] > min_f1]
    common = {
        "eval_type_id": "absorption_first_letter" if unit == "letter" else f"absorption_{unit}",
        "eval_config": config | {"min_feats_for_eval": min_classes},
        f"{unit}s_passing": len(passing),
        "probe_f1": {name: round(f1[c].item(), 4) for c, name in enumerate(data.classes)},
        "n_train": len(y_train),
        "n_test": len(y_test),
    }
    short = f"{len(passing)} of {classes} {unit} probes pass test F1 > {min_f1}; the method needs {min_classes}"
    short = short if len(passing) < max(min_classes, 1) else None
    label = "first_letter" if unit == "letter" else unit
    out = {}
    for name, sae in saes.items():
        why = short or _unfit(sae, x_train.shape[1])
        out[name] = common | ({"not_applicable": why} if why else score_sae(sae, data, probes, passing, label))
    return out


def _config(seed: int, **task) -> dict:
    """SAEBench's AbsorptionEvalConfig fields with the values used here, and the task's own settings."""
    return {
        "random_seed": seed,
        "f1_jump_threshold": F1_JUMP,
        "max_k_value": MAX_K,
        "k_sparse_probe_l1_decay": L1_DECAY,
        "k_sparse_probe_batch_size": L1_BATCH,
        "k_sparse_probe_num_epochs": L1_EPOCHS,
        "min_GT_probe_f1": MIN_PROBE_F1,
        **task,
    }


def letter_data(
    model, tokenizer, sites: list[Site], seed: int = 0, max_words: int = MAX_WORDS, batch_words: int = 64, icl: int = 10
) -> tuple[dict[Site, Labelled], dict]:
    """The first-letter task at every site from one pass over the words (each site's rows, float32,
    cost words x width x 4 bytes) with its probes fit, and its config."""
    train, test = split_words(alpha_words(tokenizer), seed, max_words)
    rng, y = random.Random(seed + 1), tuple(torch.tensor([_letter(w) for w, _ in s]) for s in (train, test))
    x = [_letter_rows(model, tokenizer, sites, s, rng, batch_words, icl) for s in (train, test)]
    config = _config(
        seed,
        model_name=getattr(model.config, "_name_or_path", "") or model.config.model_type,
        llm_batch_size=batch_words,
        llm_dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        prompt_template=TEMPLATE,
        prompt_token_pos=-6,  # the word, five tokens before the template's end
        max_words=max_words,
        icl_examples=icl,
    )
    tasks = {site: Labelled(list(LETTERS), (x[0][site], x[1][site]), y) for site in sites}
    fit_probes(list(tasks.values()))
    return tasks, config


def topic_data(acts: DocumentActivations, seed: int = 0) -> tuple[Labelled, dict]:
    """The topic task on the sparse-probing documents of one site, with their train/test split: a
    unit is a document, its activation and codes the means over its tokens."""
    train, test, _ = split_documents(acts.topics, seed)
    topics = sorted(train)
    index = [torch.cat([part[t] for t in topics]).sort().values for part in (train, test)]
    y = tuple(torch.tensor([topics.index(acts.topics[i]) for i in idx.tolist()]) for idx in index)
    x = (acts.pooled[index[0]], acts.pooled[index[1]])

    def latents(sae: SAE) -> tuple[Tensor, Tensor]:
        codes = acts.latents(sae)
        return codes[index[0]], codes[index[1]]

    config = _config(seed, documents=len(acts.topics), context_length=acts.context_length, test_fraction=TEST_FRACTION)
    return Labelled(topics, x, y, latents), config
