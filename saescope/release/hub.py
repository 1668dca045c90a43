"""Hugging Face Hub: load SAEs by hub id, push a released suite with a model card.

A hub id is `owner/repo` or `owner/repo/folder/inside/it` (optionally prefixed `hf://`). Loading
downloads only that folder with `huggingface_hub.snapshot_download` and then reads it like a local
path, so every format `saescope.load` knows works from the hub too.

Pushing uploads a release (Gemma Scope 1 layout) either as one repository per site kind, as Gemma
Scope did (`OWNER/NAME-res`, `OWNER/NAME-mlp`, ...), or as one repository with the kind folders.
Each repository also gets an SAELens copy of every SAE under `saelens/` so that
`sae_lens.SAE.from_pretrained(repo_id, "saelens/<folder>")` works without saescope, and a
README.md model card (YAML front matter, metrics table, load instructions).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from saescope.errors import SaescopeError
from saescope.outputs import strict_json
from saescope.release.interop import read
from saescope.release.saelens import write_saelens

HUB_ID = re.compile(r"^(?:hf://)?([A-Za-z0-9][\w.-]*/[\w.-]+)(?:/(.+?))?/?$")
EMBEDDED_BASE_MODEL = "google/gemma-3-270m"  # what the embedded GGUF was converted from


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """(repo_id, folder inside the repo) if `text` looks like a hub id, else None."""
    match = HUB_ID.match(text)
    if not match or text.startswith((".", "/", "~")):
        return None
    return match.group(1), match.group(2)


def resolve(path_or_hub_id: str | Path, revision: str | None = None) -> Path:
    """A local path as is; a hub id downloaded (only the folder asked for) into the HF cache."""
    path = Path(path_or_hub_id)
    if path.exists():
        return path
    parsed = parse_hub_id(str(path_or_hub_id))
    if parsed is None:
        raise SaescopeError(f"{path_or_hub_id} does not exist locally and is not a hub id (owner/repo[/folder])")
    repo_id, folder = parsed
    import huggingface_hub

    try:
        root = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=[f"{folder}/*"] if folder else None
        )
    except Exception as e:  # the hub client raises many types (HTTP, offline, not found); all mean "cannot get it"
        raise SaescopeError(
            f"cannot download {repo_id} from the Hugging Face Hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); check the id, your network or HF_TOKEN"
        ) from e
    local = Path(root) / folder if folder else Path(root)
    if not local.exists():
        raise SaescopeError(f"{repo_id} has no folder {folder!r}: list the repository's files and pass one SAE folder")
    return local


# ---- model card ----------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def model_card(
    suite: dict,
    repo_id: str,
    entries: list[dict],
    *,
    license: str = "apache-2.0",
    base_model: str | None = None,
    saelens_prefix: str = "saelens",
) -> str:
    """README.md for one repository: YAML front matter, what the SAEs are, a metrics table per
    SAE, and how to load them with saescope and with SAELens."""
    model = base_model or suite.get("model_name") or suite.get("model")
    if model in ("embedded", "gemma-3-270m", "gemma3-270m", None):
        model = EMBEDDED_BASE_MODEL
    archs = sorted({e.get("architecture", "jumprelu") for e in entries})
    kinds = sorted({e.get("site") for e in entries if e.get("site")})
    tags = ["saescope", "sparse-autoencoder", "interpretability", "gemma-scope", *archs, *(f"site-{k}" for k in kinds)]
    front = [
        "---",
        f"license: {license}",
        f"base_model: {model}",
        "library_name: saescope",
        "tags:",
        *(f"- {t}" for t in tags),
        "---",
        "",
    ]
    first = entries[0]["path"] if entries else "res/layer_0/width_16k/average_l0_50"
    body = [
        f"# Sparse autoencoders for {model}",
        "",
        f"{len(entries)} {'/'.join(archs)} sparse autoencoders trained with "
        f"[saescope](https://pypi.org/project/saescope/) to the Gemma Scope recipe, on the sites "
        f"{', '.join(f'`{k}`' for k in kinds)} of `{model}`. Weights are folded: they run on raw activations.",
        "",
        "Each folder holds `params.npz` (Gemma Scope 1 layout: `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]`, "
        "`b_enc`, `b_dec`, `threshold`; float32), `config.json` and `metrics.json`. "
        f"`{saelens_prefix}/<same folder>` holds the same SAE in SAELens' format.",
        "",
        "## SAEs",
        "",
        "| folder | site | layer | width | architecture | L0 | FVU | delta LM loss | CE loss recovered |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| `{e['path']}` | {e.get('site', '')} | {e.get('layer', '')} | {e.get('width', '')} | "
            f"{e.get('architecture', '')} | {_fmt(e.get('average_l0'))} | {_fmt(e.get('fvu'))} | "
            f"{_fmt(e.get('delta_loss'))} | {_fmt(e.get('ce_loss_recovered'))} |"
            for e in entries
        ),
        "",
        "## Load with saescope",
        "",
        "```python",
        "import saescope",
        f'sae = saescope.load("{repo_id}/{first}")',
        "latents = sae.encode(activations)  # activations: [tokens, d_in], raw (not normalised)",
        "reconstruction = sae.reconstruct(activations, latents)  # = sae(activations)",
        "```",
        "",
        "## Load with SAELens",
        "",
        "```python",
        "from sae_lens import SAE",
        f'sae = SAE.from_pretrained("{repo_id}", "{saelens_prefix}/{first}")',
        "```",
        "",
        "The reference forward, with no library: "
        "`pre = x @ W_enc + b_enc; acts = (pre > threshold) * relu(pre); recon = acts @ W_dec + b_dec` "
        "(an SAE whose `config.json` knobs hold `token_norm` first divides x by |x| / sqrt(d_in) and "
        "multiplies recon back; a skip transcoder adds `x @ affine_skip_connection`).",
        "",
    ]
    return "\n".join(front + body)


# ---- push ------------------------------------------------------------------------------------------
def _stage(
    release: Path,
    kind: str | None,
    entries: list[dict],
    suite: dict,
    repo_id: str,
    staging: Path,
    license: str,
    base_model: str | None,
    saelens: bool,
) -> Path:
    """A folder laid out exactly as the repository will be: the release files (hard links when
    possible), SAELens copies, suite.json restricted to this repository, and the model card."""
    root = staging / (kind or "all")
    for entry in entries:
        src = release / entry["path"]
        rel = Path(entry["path"]).relative_to(kind) if kind else Path(entry["path"])
        shutil.copytree(src, root / rel, copy_function=_link_or_copy, dirs_exist_ok=True)
        if saelens:
            loaded = read(src)
            write_saelens(loaded.sae, loaded.meta, loaded.metrics, root / "saelens" / rel)
    local = [e | {"path": str(Path(e["path"]).relative_to(kind)) if kind else e["path"]} for e in entries]
    (root / "suite.json").write_text(strict_json(suite | {"saes": local}, indent=2))
    (root / "README.md").write_text(model_card(suite, repo_id, local, license=license, base_model=base_model))
    return root


def _link_or_copy(src: str, dst: str) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def push(
    release: str | Path,
    repo: str,
    *,
    layout: str = "per-kind",
    private: bool = False,
    license: str = "apache-2.0",
    base_model: str | None = None,
    saelens: bool = True,
    token: str | None = None,
) -> list[str]:
    """Upload a release folder (with suite.json) to the Hub; returns the repository ids written."""
    release = Path(release)
    if (release / "release" / "suite.json").exists():  # a run folder: push its release
        release = release / "release"
    if not (release / "suite.json").exists():
        raise SaescopeError(f"{release} has no suite.json: run `saescope release --out RUN` first and push RUN/release")
    if layout not in ("per-kind", "single"):
        raise SaescopeError(f"unknown layout {layout!r}: use per-kind (one repository per site kind) or single")
    if parse_hub_id(repo) is None or parse_hub_id(repo)[1] is not None:
        raise SaescopeError(f"--repo must be OWNER/NAME, got {repo!r}")
    suite = json.loads((release / "suite.json").read_text())
    entries = suite.get("saes", [])
    if not entries:
        raise SaescopeError(f"{release / 'suite.json'} lists no SAEs: nothing to push")
    groups: dict[str | None, list[dict]] = {}
    for entry in entries:
        kind = Path(entry["path"]).parts[0] if layout == "per-kind" else None
        groups.setdefault(kind, []).append(entry)
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    pushed = []
    with tempfile.TemporaryDirectory(prefix="saescope-push-") as tmp:
        for kind, group in groups.items():
            repo_id = f"{repo}-{kind}" if kind else repo
            folder = _stage(release, kind, group, suite, repo_id, Path(tmp), license, base_model, saelens)
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            api.upload_folder(
                folder_path=str(folder),
                repo_id=repo_id,
                repo_type="model",
                commit_message=f"saescope release: {len(group)} SAEs",
            )
            pushed.append(repo_id)
    return pushed
