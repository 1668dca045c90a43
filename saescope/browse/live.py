"""The pages that run the model: which latents fire on a prompt, and generation with steering.

The model and the SAEs load lazily on first use and are shared by all requests (and with
`ondemand`'s logit lens); one lock serialises forwards, since hooks are installed on the shared
model and two requests must not see each other's steering.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from saescope.activations.packing import encode_documents
from saescope.activations.store import run_store
from saescope.browse.db import FeatureDB
from saescope.browse.suite import SuiteSAE, list_saes
from saescope.errors import SaescopeError
from saescope.models.sites import Site, replace, run_to_sites
from saescope.release.formats import load

MAX_PROMPT_TOKENS = 256
MAX_NEW_TOKENS = 64
TOP_PER_KIND = 3


@dataclass
class Hit:
    sae: str
    layer: int
    latent: int
    act: float
    rel: float  # activation / the latent's held-out maximum, comparable across SAEs


@dataclass
class PromptResult:
    tokens: list[str]
    kinds: list[str]
    top: list[dict[str, list[Hit]]]  # per token: site kind -> best latents across layers


@dataclass
class SteerResult:
    clean: str
    steered: str


@dataclass
class SteerRequest:
    prompt: str
    latents: list[tuple[str, int]]
    mode: str = "add"
    strength: float = 4.0
    max_new_tokens: int = 24

    @staticmethod
    def parse(form: dict, suite: dict[str, SuiteSAE]) -> SteerRequest:
        """Validate the steering form; every problem is one line that says what to type instead."""
        prompt = str(form.get("prompt", ""))
        if not prompt.strip():
            raise SaescopeError("the prompt is empty: type some text to continue")
        specs = []
        for part in str(form.get("latents", "")).split(","):
            if not part.strip():
                continue
            name, _, index = part.strip().rpartition(":")
            if name not in suite:
                raise SaescopeError(
                    f"unknown SAE '{name}' in '{part.strip()}': use SAE_NAME:LATENT with a name from the suite page"
                )
            if not (index.isascii() and index.isdigit()) or int(index) >= suite[name].d_sae:
                raise SaescopeError(f"latent '{index}' of {name} does not exist: use 0-{suite[name].d_sae - 1}")
            specs.append((name, int(index)))
        if not specs:
            raise SaescopeError("no latent to steer with: enter SAE_NAME:LATENT, e.g. from a latent page's link")
        mode = str(form.get("mode", "add"))
        if mode not in ("add", "clamp"):
            raise SaescopeError(f"unknown steering mode '{mode}': use add or clamp")
        try:
            strength = float(form.get("strength", 4.0))
            new_tokens = int(form.get("max_new_tokens", 24))
        except ValueError as err:
            raise SaescopeError("strength must be a number and new tokens a whole number") from err
        if not (abs(strength) < 1e6) or not 1 <= new_tokens <= MAX_NEW_TOKENS:
            raise SaescopeError(f"choose a finite strength and 1-{MAX_NEW_TOKENS} new tokens")
        return SteerRequest(prompt, specs, mode, strength, new_tokens)


class Live:
    def __init__(self, run: str | Path, db: FeatureDB):
        self.run, self.db = Path(run), db
        self.suite = {s.name: s for s in list_saes(self.run) if s.name in db.saes}
        self.lock = threading.Lock()
        self.load_lock = threading.Lock()  # the logit lens asks for the model from another thread too
        self._model = self._tokenizer = None
        self._saes: dict[str, torch.nn.Module] = {}
        self._max: dict[str, torch.Tensor] = {}

    def model(self):
        with self.load_lock:
            if self._model is None:
                from saescope.models.loading import load_model

                info = run_store(self.run).info
                self._model, self._tokenizer = load_model(info["model"], "float32", "cpu")
            return self._model, self._tokenizer

    def sae(self, name: str):
        if name not in self._saes:
            self._saes[name] = load(self.suite[name].folder)
            self._max[name] = torch.from_numpy(self.db.max_acts(name)).clamp_min(1e-6)
        return self._saes[name]

    def _ids(self, text: str) -> torch.Tensor:
        _, tokenizer = self.model()
        ids = encode_documents([text], tokenizer)[0][:MAX_PROMPT_TOKENS]
        if len(ids) < 2:
            raise SaescopeError("the prompt has no tokens: type some text")
        return torch.tensor([ids])

    @torch.inference_mode()
    def analyze(self, text: str) -> PromptResult:
        """Top latents per token, per site kind, across all layers (BOS excluded)."""
        with self.lock:
            model, tokenizer = self.model()
            ids = self._ids(text)
            sites = sorted({s.site for s in self.suite.values()})
            acts: dict[Site, torch.Tensor] = {}
            run_to_sites(
                model, ids, torch.ones_like(ids), sites, lambda site, x: acts.__setitem__(site, x[0, 1:].float())
            )
            kinds = sorted({s.kind for s in sites})
            n = ids.shape[1] - 1
            top: list[dict[str, list[Hit]]] = [{k: [] for k in kinds} for _ in range(n)]
            for name, s in self.suite.items():
                f = self.sae(name).encode(acts[s.site])
                rel = f / self._max[name]
                values, index = rel.topk(min(TOP_PER_KIND, f.shape[1]), dim=1)
                for t in range(n):
                    for v, i in zip(values[t].tolist(), index[t].tolist()):
                        if v > 0:
                            top[t][s.site.kind].append(Hit(name, s.site.layer, i, float(f[t, i]), v))
            for row in top:
                for k in kinds:
                    row[k] = sorted(row[k], key=lambda h: -h.rel)[:TOP_PER_KIND]
            tokens = tokenizer.batch_decode([[int(i)] for i in ids[0, 1:]])
            return PromptResult(tokens, kinds, top)

    def _steer_fn(self, site: Site, specs: list[tuple[str, int]], mode: str, strength: float):
        def fn(x: torch.Tensor) -> torch.Tensor:
            delta = torch.zeros_like(x, dtype=torch.float32)
            for name, latent in specs:
                sae = self.sae(name)
                direction = sae.W_dec[latent].float()
                if mode == "add":
                    delta = delta + strength * direction
                else:
                    current = sae.encode(x.float())[..., latent : latent + 1]
                    delta = delta + (strength - current) * direction
            if x.shape[1] > 1:  # the prompt's forward: leave its BOS alone, no SAE saw one in training
                delta[:, 0] = 0
            return x.float() + delta

        return fn

    def _generate(self, ids: torch.Tensor, n: int) -> str:
        model, tokenizer = self.model()
        past, out, step_ids = None, [], ids
        for _ in range(n):
            result = model(input_ids=step_ids, past_key_values=past, use_cache=True)
            past = result.past_key_values
            nxt = int(result.logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            out.append(nxt)
            step_ids = torch.tensor([[nxt]])
        return tokenizer.decode(out)

    @torch.inference_mode()
    def steer(self, req: SteerRequest) -> SteerResult:
        """Greedy continuations of the prompt without and with the steering hooks."""
        with self.lock:
            ids = self._ids(req.prompt)
            clean = self._generate(ids, req.max_new_tokens)
            by_site: dict[Site, list[tuple[str, int]]] = {}
            for name, latent in req.latents:
                by_site.setdefault(self.suite[name].site, []).append((name, latent))
            with ExitStack() as stack:
                for site, specs in by_site.items():
                    stack.enter_context(replace(self._model, site, self._steer_fn(site, specs, req.mode, req.strength)))
                steered = self._generate(ids, req.max_new_tokens)
            return SteerResult(clean, steered)
