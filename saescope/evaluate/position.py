"""Delta LM loss, KL, CE recovered, FVU and L0 of a splice, broken down by token position and by topic.

The Gemma Scope paper plots delta loss against token position: the first tokens of a document (little
context, right after the attention sink) are spliced very differently from later ones, and one mean
hides it. Likewise one topic of the corpus can pay most of an SAE's cost.

Position is the packing's (`saescope/activations/packing.py`, the number the store records for every
row): a token's index in its document with the document's BOS at 0, so bucket "1" is a document's
first text token. A document that spills onto a new row keeps counting there, after a fresh BOS.

Everything is summed during the passes the model-based metrics make anyway (`HeldOutText.loss_with`
hands every batch's per-token losses to a `Tally`, the splice hands it its per-token errors), so the
breakdowns cost no extra forward and exist for `evaluate --text FILE` as for the held-out corpus text.
Loss numbers count the predicting position (t predicts t+1, as the means do); FVU and L0 count every
position the SAE replaced. A group's FVU is its squared error over its squared deviation from the mean
of all the text's rows, not from the group's own mean: then the groups' parts add up to the text's FVU,
and a group of near-identical tokens is not charged for its small spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

POSITION_EDGES = (1, 2, 5, 17, 65, 257)  # each bucket's first position; the last is open-ended
POSITION_LABELS = ("1", "2-4", "5-16", "17-64", "65-256", "257+")
BREAKDOWNS = {"position": "by_position", "topic": "by_topic"}  # grouping -> metrics.json key
# Per sequence only the losses are read (`sequence_losses`): the row sums (x alone is [sequences, d_in])
# would cost a copy of that size per batch for nothing.
SEQUENCE_SUMS = ("tokens", "ce", "kl")


def position_buckets(positions: torch.Tensor) -> torch.Tensor:
    """The bucket index of every position; -1 for BOS (position 0) and padding (-1)."""
    edges = torch.tensor(POSITION_EDGES, device=positions.device)
    index = torch.bucketize(positions, edges, right=True) - 1
    return torch.where(positions >= 1, index, -1)


def topic_index(doc_ids: torch.Tensor, topic_of: dict[int, str], topics: Sequence[str]) -> torch.Tensor:
    """The index in `topics` of every token's document topic; -1 for padding and untopical documents."""
    code = {t: i for i, t in enumerate(topics)}
    unique, inverse = torch.unique(doc_ids, return_inverse=True)
    table = torch.tensor([code.get(topic_of.get(int(d), ""), -1) for d in unique], dtype=torch.long)
    return table[inverse]


@dataclass
class Groupings:
    """Which group every token of a text falls in. `labels[g]` names grouping g's groups and
    `index[g][b]` is batch b's [rows, tokens] group index (-1: in none). Grouping "all" has one
    group holding every token: the text-wide sums the groups' FVU is measured against. Grouping
    "sequence" has one group per held-out sequence (row of the packing): sequences are the unit over
    which `saescope compare` pairs two SAEs measured on the same text (saescope/matched.py)."""

    labels: dict[str, list[str]]
    index: dict[str, list[torch.Tensor]]

    @classmethod
    def of(cls, where: list[tuple[torch.Tensor, torch.Tensor]], topic_of: dict[int, str]) -> Groupings:
        """From each batch's (doc_ids, positions) and the documents' topics."""
        seen = torch.unique(torch.cat([d.flatten() for d, _ in where]))
        topics = sorted({topic_of.get(int(d), "") for d in seen} - {""})
        first = [0]  # each batch's first sequence (row) number
        for _, p in where:
            first.append(first[-1] + len(p))
        return cls(
            {
                "all": ["all"],
                "position": list(POSITION_LABELS),
                "topic": topics,
                "sequence": [str(i) for i in range(first[-1])],
            },
            {
                "all": [torch.where(p >= 0, 0, -1) for _, p in where],
                "position": [position_buckets(p) for _, p in where],
                "topic": [topic_index(d, topic_of, topics) for d, _ in where],
                "sequence": [
                    torch.where(p >= 0, torch.arange(len(p))[:, None] + f, -1) for (_, p), f in zip(where, first)
                ],
            },
        )


class Tally:
    """Per-group sums of per-token quantities over one pass over a text (one Tally per splice)."""

    def __init__(self, groups: Groupings):
        self.groups = groups
        self.sums: dict[tuple[str, str], torch.Tensor] = {}

    def add(self, name: str, batch: int, values: torch.Tensor, mask: torch.Tensor) -> None:
        """Add batch `batch`'s `values` ([rows, T', ...], token t at [:, t]) where `mask` [rows, T']
        holds, to each group they fall in. T' may stop short of the row (losses have no last token)."""
        picked = values[mask].double().cpu()
        for grouping, index in self.groups.index.items():
            if grouping == "sequence" and name not in SEQUENCE_SUMS:
                continue
            where = index[batch][:, : mask.shape[1]].to(mask.device)[mask].cpu()
            ok = where >= 0
            n = len(self.groups.labels[grouping])
            total = torch.zeros((n, *picked.shape[1:]), dtype=torch.float64).index_add_(0, where[ok], picked[ok])
            key = (grouping, name)
            self.sums[key] = self.sums[key] + total if key in self.sums else total

    def get(self, grouping: str, name: str) -> torch.Tensor:
        """The per-group sums of one quantity (zeros if no batch added any)."""
        if (grouping, name) in self.sums:
            return self.sums[(grouping, name)]
        return torch.zeros(len(self.groups.labels[grouping]), dtype=torch.float64)

    def add_losses(self, batch: int, ce: torch.Tensor, kl: torch.Tensor, count: torch.Tensor) -> None:
        """Per-token CE and KL of one batch's predicting positions, [rows, T-1] each."""
        counted = count.bool()
        self.add("tokens", batch, torch.ones_like(ce), counted)
        self.add("ce", batch, ce, counted)
        self.add("kl", batch, kl, counted)

    def add_rows(self, batch: int, target: torch.Tensor, recon: torch.Tensor, l0: torch.Tensor, mask) -> None:
        """One batch of a splice: the site's true activations `target` [rows, T, d], what the SAE put
        in their place, and its active latents per token, on the positions `mask` it replaced."""
        self.add("rows", batch, torch.ones_like(l0, dtype=torch.float64), mask)
        self.add("sse", batch, (recon - target).double().pow(2).sum(-1), mask)
        self.add("sq", batch, target.double().pow(2).sum(-1), mask)
        self.add("x", batch, target, mask)
        self.add("l0", batch, l0, mask)


def _ratio(num: float, den: float) -> float | None:
    """num / den, or None where the group is empty (JSON has no NaN)."""
    return num / den if den > 0 else None


def _spread(spliced: Tally, grouping: str) -> torch.Tensor:
    """Per group: the squared deviation of its rows from the mean of all the text's rows,
    sum ||x||^2 - 2 mean . sum x + n ||mean||^2 from the float64 sums (no second pass)."""
    if ("all", "x") not in spliced.sums:
        return torch.zeros(len(spliced.groups.labels[grouping]), dtype=torch.float64)
    mean = spliced.get("all", "x")[0] / spliced.get("all", "rows")[0].clamp(min=1)
    g_x = spliced.get(grouping, "x")
    return spliced.get(grouping, "sq") - 2 * g_x @ mean + spliced.get(grouping, "rows") * mean.dot(mean)


def breakdown(grouping: str, spliced: Tally, clean: Tally, zero: Tally) -> dict[str, dict]:
    """Per group of `grouping`: tokens, delta loss, KL, CE recovered (against the site's zero
    ablation), replaced rows, FVU and L0; None where a group has no token."""
    spread, g_rows = _spread(spliced, grouping), spliced.get(grouping, "rows")
    tokens, ce, kl = (spliced.get(grouping, k) for k in ("tokens", "ce", "kl"))
    ce_clean, ce_zero = clean.get(grouping, "ce"), zero.get(grouping, "ce")
    sse, l0 = spliced.get(grouping, "sse"), spliced.get(grouping, "l0")
    out = {}
    for i, label in enumerate(spliced.groups.labels[grouping]):
        n = float(tokens[i])
        delta = _ratio(float(ce[i] - ce_clean[i]), n)
        lost = float(ce_zero[i] - ce_clean[i])
        out[label] = {
            "tokens": int(n),
            "delta_loss": delta,
            "kl_div": _ratio(float(kl[i]), n),
            "ce_loss_recovered": None if delta is None or lost == 0 else 1 - float(ce[i] - ce_clean[i]) / lost,
            "rows": int(g_rows[i]),
            "fvu": _ratio(float(sse[i]), float(spread[i])),
            "l0": _ratio(float(l0[i]), float(g_rows[i])),
        }
    return out


def breakdowns(spliced: Tally, clean: Tally, zero: Tally, wanted: Sequence[str]) -> dict:
    """metrics.json's by_position / by_topic entries for the groupings in `wanted`, plus text_fvu
    (the FVU on the text's tokens: on `--text FILE`, the out-of-distribution FVU)."""
    whole = breakdown("all", spliced, clean, zero)["all"]
    out: dict = {"text_fvu": whole["fvu"]}
    for grouping in wanted:
        if grouping == "topic" and not spliced.groups.labels["topic"]:
            out[BREAKDOWNS[grouping]] = {"not_applicable": "the documents of this text carry no topic"}
        else:
            out[BREAKDOWNS[grouping]] = breakdown(grouping, spliced, clean, zero)
    return out


def sequence_losses(spliced: Tally, clean: Tally) -> dict[str, list]:
    """metrics.json's by_sequence: each held-out sequence's predicted tokens, delta loss and KL (None
    where a sequence predicts no token). Lists, not a table per sequence: Gemma Scope measured on 2048."""
    tokens, ce, kl = (spliced.get("sequence", k) for k in ("tokens", "ce", "kl"))
    delta = ce - clean.get("sequence", "ce")
    return {
        "tokens": [int(n) for n in tokens],
        "delta_loss": [_ratio(float(d), float(n)) for d, n in zip(delta, tokens)],
        "kl_div": [_ratio(float(k), float(n)) for k, n in zip(kl, tokens)],
    }


def curve(metrics: dict, key: str = "delta_loss") -> list[float | None]:
    """metrics.json's by_position values of `key`, bucket by bucket (None: empty or not measured)."""
    by = metrics.get("by_position") or {}
    return [(by.get(label) or {}).get(key) for label in POSITION_LABELS]


def position_table(rows: list[tuple[str, dict]], key: str = "delta_loss") -> str:
    """A markdown table: one row per (name, metrics.json), `key` per position bucket ("-": no token)."""
    lines = ["| SAE | " + " | ".join(f"pos {label}" for label in POSITION_LABELS) + " |"]
    lines.append("|---|" + "---:|" * len(POSITION_LABELS))
    for name, metrics in rows:
        cells = ["-" if v is None else f"{v:.3f}" for v in curve(metrics, key)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
