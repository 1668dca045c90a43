"""Sparse probing and targeted probe perturbation (TPP) on the corpus's topics, as SAEBench defines them.

Both read a `DocumentActivations`: one site's per-token activations on labelled documents, made
once per site (`site_documents`; `sites_documents` serves several sites from one pass) and reused
for every SAE of that site. A document is the mean of its token activations (SAE latents: the mean
of the per-token latents), BOS, EOS and padding excluded, as SAEBench mean-pools.

Caps: `sample_topic_documents` keeps `per_topic` documents per topic (default 32: 384 documents of
the embedded corpus's 12 topics), `site_documents` the first `max_tokens` of each (default 256, BOS
included and not pooled; the summaries average ~100 tokens): ~39k tokens. The model's forward is
the cost (bfloat16 Gemma 3 270M on one core of this busy 2-core CPU: 42 s to res.6, 103 s to res.17,
the same for any number of sites in one pass); per SAE, encoding and every probe take ~3 s at
width 2048 (16k: ~17 s).

Tasks: one-vs-rest per topic. Each topic's documents are split train/test (`TEST_FRACTION`, seeded
per topic: no document in both, and a topic's split does not depend on the others); a topic with
fewer than `MIN_TOPIC_DOCUMENTS` is skipped and named in `skipped_topics`. Classes are balanced as
SAEBench does: the topic's documents against as many others, drawn evenly from the other topics,
on both splits (chance is 0.5).

Probe: L2-regularised logistic regression fitted exactly (Newton's method in float64, `fit_probe`)
on features standardised by the train split, with sklearn's default strength C = 1, i.e. mean
log-loss + |w|^2 / (2 C n). SAEBench fits sklearn's probe on unstandardised features (its
all-dimension and TPP probes by Adam); standardising lets one strength serve residual dimensions
whose scales differ by orders of magnitude. Dimensions constant on the train split are ignored.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saescope.activations.documents import Document
from saescope.activations.packing import pack_documents
from saescope.errors import SaescopeError
from saescope.models.sites import Site, run_to_sites

DATASET_NAME = "saescope/wiki_topics"
TEST_FRACTION = 0.2
MIN_TOPIC_DOCUMENTS = 5  # at least 4 train documents and 1 test document
ENCODE_CHUNK = 2048  # tokens per SAE encode: bounds the [tokens, d_sae] latent block in memory
PROBE_C = 1.0


@dataclass(eq=False)
class DocumentActivations:
    """Per-token activations of one site on labelled documents: document i's pooled tokens are
    `tokens[offsets[i]:offsets[i + 1]]` (on the CPU), its topic `topics[i]`."""

    site: Site
    tokens: Tensor  # [total tokens, d], in the model's dtype
    offsets: Tensor  # long [documents + 1]
    topics: list[str]
    doc_ids: list[int]
    context_length: int | None = None  # the max_tokens cut that made it, for the record
    _latents: WeakKeyDictionary = field(default_factory=WeakKeyDictionary, init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.topics)
        if len(self.doc_ids) != n or self.offsets.shape != (n + 1,) or int(self.offsets[-1]) != len(self.tokens):
            raise SaescopeError("DocumentActivations: topics, doc_ids, offsets and tokens disagree on the documents")
        if n and int(self.offsets.diff().min()) < 1:
            raise SaescopeError("DocumentActivations: every document needs at least one pooled token")

    @functools.cached_property
    def pooled(self) -> Tensor:
        """Mean site activation per document [documents, d]."""
        return self.pool(lambda x: x, self.tokens.shape[1])

    def latents(self, sae: nn.Module) -> Tensor:
        """Mean SAE latents per document [documents, d_sae]; cached per SAE until its weights change,
        so sparse probing and TPP of one SAE encode the tokens once."""
        if sae.d_in != self.tokens.shape[1]:
            raise SaescopeError(
                f"the SAE reads {sae.d_in} dimensions but site {self.site.name} has {self.tokens.shape[1]}: "
                "pass the SAE of this site"
            )
        version = tuple((p.data_ptr(), p._version) for p in sae.parameters())
        cached = self._latents.get(sae)
        if cached is None or cached[0] != version:
            device = next(sae.parameters()).device
            with torch.no_grad():
                pooled = self.pool(lambda x: sae.encode(x.to(device, torch.float32)).float().cpu(), sae.d_sae)
            self._latents[sae] = cached = (version, pooled)
        return cached[1]

    def pool(self, fn: Callable[[Tensor], Tensor], width: int) -> Tensor:
        """Per-document mean of `fn(tokens)`, applied a chunk of tokens at a time."""
        lengths = self.offsets.diff()
        owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        sums = torch.zeros(len(lengths), width, dtype=torch.float64)
        for start in range(0, len(self.tokens), ENCODE_CHUNK):
            chunk = slice(start, start + ENCODE_CHUNK)
            sums.index_add_(0, owner[chunk], fn(self.tokens[chunk]).double())
        return (sums / lengths[:, None]).float()


def sample_topic_documents(docs: Sequence[Document], per_topic: int = 32, seed: int = 0) -> list[Document]:
    """Up to `per_topic` documents of each topic, drawn with `seed`, in corpus order: the
    document cap of the evaluation (documents without a topic are left out)."""
    chosen: list[Document] = []
    for topic in sorted({d.topic for d in docs if d.topic}):
        group = [d for d in docs if d.topic == topic]
        order = torch.randperm(len(group), generator=_generator(seed, f"sample {topic}"))[:per_topic]
        chosen += [group[i] for i in order.tolist()]
    return sorted(chosen, key=lambda d: d.doc_id)


def site_documents(
    model: nn.Module, tokenizer, site: Site, docs: list[Document], max_tokens: int = 256, batch: int = 8
) -> DocumentActivations:
    """The site's activations on every token of `docs` but BOS/EOS/padding; see `sites_documents`."""
    return sites_documents(model, tokenizer, [site], docs, max_tokens, batch)[site]


def sites_documents(
    model: nn.Module, tokenizer, sites: list[Site], docs: list[Document], max_tokens: int = 256, batch: int = 8
) -> dict[Site, DocumentActivations]:
    """Several sites' activations from one pass over `docs`: each document cut to its first
    `max_tokens` tokens (BOS included), `batch` documents per forward, one per row, sorted by length
    so rows carry little padding; the forward stops after the last site's layer. Activations are
    kept in the model's dtype (tokens x width x its size, per site); the result keeps the order of
    `docs` (documents with no text token are dropped)."""
    if not sites:
        raise SaescopeError("no site to read: pass at least one site")
    numbered = sorted((Document(i, d.text, d.title, d.topic) for i, d in enumerate(docs)), key=lambda d: len(d.text))
    device = next(model.parameters()).device
    found: dict[Site, dict[int, Tensor]] = {site: {} for site in sites}
    for b in pack_documents(numbered, tokenizer, max_tokens, batch, mode="truncate"):
        grabbed: dict[Site, Tensor] = {}
        run_to_sites(model, b.input_ids.to(device), b.attention_mask.to(device), sites, grabbed.__setitem__)
        rows = [(row, int(b.doc_ids[row, 0]), b.train_mask[row]) for row in range(len(b.input_ids))]
        for site, acts in grabbed.items():
            acts = acts.cpu()
            found[site] |= {doc: acts[row, keep] for row, doc, keep in rows if keep.any()}
    kept = sorted(found[sites[0]])
    if not kept:
        raise SaescopeError(f"none of the {len(docs)} documents has a text token to probe; pass documents with text")
    lengths = torch.tensor([len(found[sites[0]][i]) for i in kept])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    topics, doc_ids = [docs[i].topic for i in kept], [docs[i].doc_id for i in kept]
    return {
        site: DocumentActivations(site, torch.cat([found[site][i] for i in kept]), offsets, topics, doc_ids, max_tokens)
        for site in sites
    }


def _generator(seed: int, topic: str) -> torch.Generator:
    """A generator per (seed, topic), so each topic's draws are independent of the other topics."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(topic.encode()))


def split_documents(
    topics: Sequence[str], seed: int = 0, test_fraction: float = TEST_FRACTION
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, str]]:
    """Document-level train/test split per topic: (train indices, test indices, skipped topics and
    why), indices into `topics`. A seeded shuffle of each topic's documents gives the first
    round(test_fraction * n) (at least one) to test."""
    train, test, skipped = {}, {}, {}
    if any(not t for t in topics):
        skipped[""] = f"{sum(not t for t in topics)} documents without a topic label"
    for topic in sorted({t for t in topics if t}):
        index = torch.tensor([i for i, t in enumerate(topics) if t == topic])
        if len(index) < MIN_TOPIC_DOCUMENTS:
            skipped[topic] = f"{len(index)} documents; a train/test split needs {MIN_TOPIC_DOCUMENTS}"
            continue
        index = index[torch.randperm(len(index), generator=_generator(seed, topic))]
        n_test = max(1, round(test_fraction * len(index)))
        test[topic], train[topic] = index[:n_test], index[n_test:]
    return train, test, skipped


@dataclass
class ProbeTask:
    """One topic's balanced one-vs-rest task: document indices and labels (1 = the topic)."""

    train: Tensor
    train_labels: Tensor
    test: Tensor
    test_labels: Tensor


def _balanced(groups: dict[str, Tensor], topic: str, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The topic's documents and as many others, drawn evenly from the other topics (SAEBench's
    balancing); when the others are fewer, the topic's documents are subsampled to match."""
    positives = groups[topic]
    others = [g for t, g in groups.items() if t != topic]
    per_topic = math.ceil(len(positives) / len(others))
    negatives = torch.cat([g[torch.randperm(len(g), generator=gen)[:per_topic]] for g in others])
    n = min(len(positives), len(negatives))
    negatives = negatives[torch.randperm(len(negatives), generator=gen)[:n]]
    positives = positives[torch.randperm(len(positives), generator=gen)[:n]]
    return torch.cat([positives, negatives]), torch.cat([torch.ones(n), torch.zeros(n)])


def probe_tasks(acts: DocumentActivations, seed: int = 0) -> tuple[dict[str, ProbeTask], dict[str, str]]:
    """The balanced task of every topic that has enough documents, and the skipped topics."""
    train, test, skipped = split_documents(acts.topics, seed)
    if len(train) < 2:
        return {}, skipped
    tasks = {}
    for topic in train:
        gen = _generator(seed, f"balance {topic}")
        tasks[topic] = ProbeTask(*_balanced(train, topic, gen), *_balanced(test, topic, gen))
    return tasks, skipped


@dataclass
class Probe:
    """A logistic probe on standardised features: logit = ((x - mean) / scale) . weight + bias."""

    mean: Tensor
    scale: Tensor  # inf on dimensions constant over the train split, which the probe ignores
    weight: Tensor
    bias: float

    def accuracy(self, x: Tensor, labels: Tensor) -> float:
        logits = ((x.double() - self.mean) / self.scale) @ self.weight + self.bias
        return float(((logits > 0) == labels.bool()).double().mean())

    @property
    def direction(self) -> Tensor:
        """The weight in the site's own units (d logit / d x), which TPP's attribution needs."""
        return self.weight / self.scale


def fit_probe(x: Tensor, labels: Tensor, c: float = PROBE_C) -> Probe:
    """Minimise mean log-loss + |w|^2 / (2 c n) exactly. The optimal w lies in the row space of the
    standardised train features (any other component only adds to the penalty), so the problem is
    solved in that space's coordinates (thin SVD, at most n of them) by Newton's method: a handful
    of small linear solves instead of a long first-order run, and exact to float64 rounding."""
    x = x.double()
    mean, scale = x.mean(0), x.std(0, correction=0)
    scale = torch.where(scale > 1e-9 * (mean.abs() + scale), scale, torch.inf)
    u, s, vh = torch.linalg.svd((x - mean) / scale, full_matrices=False)
    rank = int((s > 1e-10 * s.max()).sum()) if s.numel() and s.max() > 0 else 0
    design = torch.cat([u[:, :rank] * s[:rank], torch.ones(len(x), 1, dtype=torch.float64)], 1)
    ridge = torch.full((rank + 1,), 1 / (c * len(x)), dtype=torch.float64)
    ridge[-1] = 0.0  # the bias is not penalised
    theta = _newton_logistic(design, labels.double(), ridge)
    return Probe(mean, scale, vh[:rank].T @ theta[:-1], float(theta[-1]))


def _newton_logistic(design: Tensor, labels: Tensor, ridge: Tensor, steps: int = 100) -> Tensor:
    """argmin of mean log-loss(design @ theta) + sum(ridge * theta^2) / 2: Newton steps with
    backtracking (the objective is strictly convex, so this converges from zero)."""
    sign = labels * 2 - 1

    def objective(theta: Tensor) -> Tensor:
        return F.softplus(-sign * (design @ theta)).mean() + (ridge * theta * theta).sum() / 2

    theta = torch.zeros(design.shape[1], dtype=torch.float64)
    value = objective(theta)
    for _ in range(steps):
        p = torch.sigmoid(design @ theta)
        grad = design.T @ (p - labels) / len(design) + ridge * theta
        if float(grad.abs().max()) < 1e-12:
            break
        hessian = (design.T * (p * (1 - p))) @ design / len(design) + torch.diag(ridge)
        step = torch.linalg.lstsq(hessian, grad[:, None]).solution[:, 0]
        t = 1.0
        while (candidate := objective(theta - t * step)) > value - 1e-4 * t * float(grad @ step) and t > 1e-10:
            t /= 2
        if candidate >= value:
            break
        theta, value = theta - t * step, candidate
    return theta


def top_by_mean_difference(x: Tensor, labels: Tensor, k: int) -> Tensor:
    """The k dimensions whose class means differ most (absolute difference), SAEBench's choice of
    the latents a k-sparse probe may use; ties keep the lower index."""
    diff = (x[labels == 1].double().mean(0) - x[labels == 0].double().mean(0)).abs()
    return torch.sort(diff, descending=True, stable=True).indices[:k]


def _probe_accuracies(x: Tensor, task: ProbeTask, ks: list[int], prefix: str) -> tuple[dict[str, float], Tensor]:
    """Test accuracy of the probe on all dimensions and on the top k, and the ranking behind the top k."""
    train, test = x[task.train], x[task.test]
    out = {f"{prefix}_test_accuracy": fit_probe(train, task.train_labels).accuracy(test, task.test_labels)}
    ranking = top_by_mean_difference(train, task.train_labels, max(ks, default=0))
    for k in ks:
        chosen = ranking[:k]
        probe = fit_probe(train[:, chosen], task.train_labels)
        out[f"{prefix}_top_{k}_test_accuracy"] = probe.accuracy(test[:, chosen], task.test_labels)
    return out, ranking


@contextmanager
def one_thread() -> Iterator[None]:
    """The probes' matrices are tiny (documents x rank): more threads only add synchronisation,
    which on a busy 2-core machine made the fits of one SAE 9-50x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _means(per_topic: dict[str, dict], keys: list[str]) -> dict[str, float]:
    return {key: sum(r[key] for r in per_topic.values()) / len(per_topic) for key in keys}


def _not_applicable(tasks: dict, skipped: dict[str, str]) -> dict | None:
    reason = f"{len(tasks)} topic(s) with enough documents; probing needs 2"
    return None if len(tasks) >= 2 else {"not_applicable": reason, "skipped_topics": skipped}


def sparse_probing(acts: DocumentActivations, sae: nn.Module, ks: Sequence[int] = (1, 2, 5, 20), seed: int = 0) -> dict:
    """SAEBench's sparse probing on the topics: per topic, logistic probes on the top-k SAE latents
    (by class-mean difference on the train split) and on all latents, against the same probes on the
    raw site activations (all dimensions and the top-k ones); test accuracy per topic and its mean
    over topics. `llm` and `sae` hold SAEBench's metric names (`llm_test_accuracy`,
    `sae_top_{k}_test_accuracy`, ...); each topic also lists its top latents, best first. A k above
    a width is left out of that side."""
    tasks, skipped = probe_tasks(acts, seed)
    if (refusal := _not_applicable(tasks, skipped)) is not None:
        return refusal
    raw, latents = acts.pooled, acts.latents(sae)
    llm_ks = sorted({k for k in ks if k <= raw.shape[1]})
    sae_ks = sorted({k for k in ks if k <= latents.shape[1]})
    per_topic = {}
    with one_thread():
        for topic, task in tasks.items():
            llm, _ = _probe_accuracies(raw, task, llm_ks, "llm")
            sae_acc, ranking = _probe_accuracies(latents, task, sae_ks, "sae")
            per_topic[topic] = llm | sae_acc | {"sae_top_latents": ranking.tolist()}
            per_topic[topic] |= {"train": len(task.train), "test": len(task.test)}
    llm_keys = ["llm_test_accuracy", *(f"llm_top_{k}_test_accuracy" for k in llm_ks)]
    sae_keys = ["sae_test_accuracy", *(f"sae_top_{k}_test_accuracy" for k in sae_ks)]
    return {
        **_setup(acts, seed),
        "k_values": sorted(set(ks)),
        "llm": _means(per_topic, llm_keys),
        "sae": _means(per_topic, sae_keys),
        "per_topic": per_topic,
        "skipped_topics": skipped,
    }


def _setup(acts: DocumentActivations, seed: int) -> dict:
    return {
        "dataset_name": DATASET_NAME,
        "site": acts.site.name,
        "documents": len(acts.topics),
        "tokens": len(acts.tokens),
        "context_length": acts.context_length,
        "test_fraction": TEST_FRACTION,
        "random_seed": seed,
    }


def tpp_latents(latents: Tensor, labels: Tensor, probe: Probe, decoder: Tensor, n: int) -> Tensor:
    """The n latents most tied to a topic's probe, as SAEBench scores them: the class-mean
    difference of the latent (positive side only) times its decoder row's effect on the probe's
    logit; latents with zero score are never chosen, so fewer than n may come back."""
    diff = (latents[labels == 1].double().mean(0) - latents[labels == 0].double().mean(0)).clamp(min=0)
    score = diff * (decoder.double() @ probe.direction)
    order = torch.sort(score, descending=True, stable=True).indices
    return order[score[order] != 0][:n]


def tpp(acts: DocumentActivations, sae: nn.Module, n_latents: int = 20, seed: int = 0) -> dict:
    """Targeted probe perturbation (SAEBench): per topic, zero its `n_latents` most tied latents
    (`tpp_latents`, on the train split), re-decode keeping the SAE's error term (so only those
    latents' decoder contributions leave each token), and measure every topic's raw-activation
    probe on the test split. Per topic: the drop of its own probe's accuracy (`intended_diff_only`)
    minus the mean drop of the other topics' probes (`unintended_diff_only`) is `total_metric`;
    `tpp_metrics` holds their means over topics under SAEBench's names (`tpp_threshold_{n}_...`).
    Mean pooling is linear, so the ablation is applied to the pooled activations: exact and cheap."""
    if hasattr(sae, "affine_skip_connection") or getattr(sae, "transcoder", "none") != "none":
        return {"not_applicable": "a transcoder's latents write to another site than the one its probes read"}
    tasks, skipped = probe_tasks(acts, seed)
    if (refusal := _not_applicable(tasks, skipped)) is not None:
        return refusal
    raw, latents = acts.pooled.double(), acts.latents(sae).double()
    decoder = sae.W_dec.detach().double().cpu()
    with one_thread():
        scores = _tpp(raw, latents, decoder, tasks, n_latents)
    return {**_setup(acts, seed), "n_latents": n_latents, **scores, "skipped_topics": skipped}


def _tpp(raw: Tensor, latents: Tensor, decoder: Tensor, tasks: dict[str, ProbeTask], n_latents: int) -> dict:
    """TPP's per-topic numbers and their means (see `tpp`)."""
    probes = {t: fit_probe(raw[task.train], task.train_labels) for t, task in tasks.items()}
    clean = {t: probes[t].accuracy(raw[task.test], task.test_labels) for t, task in tasks.items()}
    name = f"tpp_threshold_{n_latents}"
    per_topic = {}
    for topic, task in tasks.items():
        ablate = tpp_latents(latents[task.train], task.train_labels, probes[topic], decoder, n_latents)
        ablated = raw - latents[:, ablate] @ decoder[ablate]
        drops = {t: clean[t] - probes[t].accuracy(ablated[other.test], other.test_labels) for t, other in tasks.items()}
        unintended = sum(d for t, d in drops.items() if t != topic) / (len(drops) - 1)
        per_topic[topic] = {
            f"{name}_total_metric": drops[topic] - unintended,
            f"{name}_intended_diff_only": drops[topic],
            f"{name}_unintended_diff_only": unintended,
            "llm_test_accuracy": clean[topic],
            "ablated_latents": ablate.tolist(),
        }
    keys = [f"{name}_total_metric", f"{name}_intended_diff_only", f"{name}_unintended_diff_only"]
    return {
        "tpp_metrics": _means(per_topic, keys),
        "llm_test_accuracy": _means(per_topic, ["llm_test_accuracy"])["llm_test_accuracy"],
        "per_topic": per_topic,
    }
