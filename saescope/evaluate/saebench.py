"""saescope's results in SAEBench's result JSON schema (sae-bench 0.6.0), for the evaluations both have.

SAEBench writes one `<release>_<sae id>_eval_results.json` per SAE and evaluation into a folder per
evaluation, and its plotting code (`sae_bench_utils/graphing_utils.get_eval_results`) finds them by
walking a folder and tells the evaluations apart by folder name. So each SAE folder gets

    saebench/core/<sae>_eval_results.json             core (CoreEvalOutput)
    saebench/sparse_probing/<sae>_eval_results.json   sparse probing (SparseProbingEvalOutput)
    saebench/tpp/<sae>_eval_results.json              TPP (TppEvalOutput)
    saebench/absorption/<sae>_eval_results.json       first-letter absorption (AbsorptionEvalOutput)

with the release id the run folder's name and the SAE id the SAE folder's name. The files hold the
common envelope (eval_type_id, eval_config, eval_id, datetime_epoch_millis, eval_result_metrics,
eval_result_details, sae_bench_commit_hash, sae_lens_id, sae_lens_release_id, sae_lens_version,
sae_cfg_dict, eval_result_unstructured) and each evaluation's metric categories under SAEBench's
names. Where saescope measures differently (core's reconstruction numbers come from the store's
held-out rows, its loss numbers from held-out text; probing is on the corpus topics), eval_config
says so through its fields and eval_result_unstructured names the saescope result file.
`sae_bench_commit_hash` says that saescope, not SAEBench, ran the evaluation.
"""

from __future__ import annotations

import importlib.metadata
import time
import uuid
from pathlib import Path

import torch

from saescope.io import write_json_atomic
from saescope.saes.base import SAE

FOLDERS = {"core": "core", "probing": "sparse_probing", "tpp": "tpp", "absorption": "absorption"}
EVAL_TYPE_IDS = {"core": "core", "probing": "sparse_probing", "tpp": "tpp", "absorption": "absorption_first_letter"}


def results_path(folder: Path, part: str) -> Path:
    """Where part `part`'s SAEBench file of the SAE in `folder` goes."""
    return folder / "saebench" / FOLDERS[part] / f"{folder.name}_eval_results.json"


def _version() -> str:
    try:
        return importlib.metadata.version("saescope")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def sae_cfg(meta: dict) -> dict:
    """The SAELens-style config SAEBench keeps beside results: its plots read architecture, d_sae
    and training_tokens."""
    return {
        "architecture": meta.get("family", meta.get("architecture")),
        "d_in": meta.get("d_in"),
        "d_sae": meta["d_sae"],
        "hook_name": meta.get("hook") or f"{meta['site']}.{meta['layer']}",
        "hook_layer": meta["layer"],
        "model_name": meta.get("model"),
        "dataset_path": meta.get("dataset"),
        "context_size": meta.get("context_len"),
        "training_tokens": meta.get("tokens_trained"),
        "dtype": "float32",
        "device": "cpu",
    }


def write(folder: Path, part: str, meta: dict, config: dict, metrics: dict, details: list, source: str) -> Path:
    """One SAEBench result file; `source` names the saescope file the numbers come from."""
    path = results_path(folder, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        path,
        {
            "eval_type_id": EVAL_TYPE_IDS[part],
            "eval_config": config,
            "eval_id": str(uuid.uuid4()),
            "datetime_epoch_millis": int(time.time() * 1000),
            "eval_result_metrics": metrics,
            "eval_result_details": details,
            "sae_bench_commit_hash": f"none: measured by saescope {_version()}, not by SAEBench",
            "sae_lens_id": folder.name,
            "sae_lens_release_id": folder.parent.parent.name,
            "sae_lens_version": None,
            "sae_cfg_dict": sae_cfg(meta),
            "eval_result_unstructured": {"saescope_result": source},
        },
    )
    return path


@torch.no_grad()
def max_cosines(columns: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per column of [d, n]: its largest cosine with any other column (SAEBench's
    average_max_*_cosine_sim), a block of columns at a time so n x n is never held."""
    unit = columns.float() / columns.float().norm(dim=0, keepdim=True).clamp(min=1e-12)
    out = torch.empty(unit.shape[1])
    for start in range(0, unit.shape[1], chunk):
        cos = unit[:, start : start + chunk].T @ unit
        cos[torch.arange(len(cos)), torch.arange(start, start + len(cos))] = -torch.inf
        out[start : start + len(cos)] = cos.max(1).values.cpu()
    return out


def core_metrics(m: dict, sae: SAE) -> dict:
    """SAEBench's core categories from a metrics.json (`m`) and the SAE's weights."""
    freq = torch.tensor(m["firing_frequency"], dtype=torch.float64)
    total = freq.sum().item()
    kl_zero = m["kl_div_zero_ablation"]
    return {
        "model_behavior_preservation": {
            "kl_div_score": (kl_zero - m["kl_div"]) / kl_zero if kl_zero else 0.0,
            "kl_div_with_ablation": kl_zero,
            "kl_div_with_sae": m["kl_div"],
        },
        "model_performance_preservation": {
            "ce_loss_score": m["ce_loss_recovered"] if m["ce_loss_recovered"] is not None else 0.0,
            "ce_loss_with_ablation": m["ce_zero_ablation"],
            "ce_loss_with_sae": m["ce_spliced"],
            "ce_loss_without_sae": m["ce_clean"],
        },
        "reconstruction_quality": {
            "explained_variance": 1 - m["fvu"],
            "explained_variance_legacy": m["explained_variance_legacy"],
            "mse": m["mse"],
            "cossim": m["cossim"],
        },
        "shrinkage": {k: m[k] for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias")},
        "sparsity": {"l0": m["l0"], "l1": m["l1"]},
        "token_stats": {
            "total_tokens_eval_reconstruction": m["eval_text_tokens"],
            "total_tokens_eval_sparsity_variance": m["tokens"],
        },
        "misc_metrics": {
            "freq_over_1_percent": (freq > 0.01).double().mean().item(),
            "freq_over_10_percent": (freq > 0.1).double().mean().item(),
            "normalized_freq_over_1_percent": freq[freq > 0.01].sum().item() / total if total else 0.0,
            "normalized_freq_over_10_percent": freq[freq > 0.1].sum().item() / total if total else 0.0,
            "average_max_encoder_cosine_sim": max_cosines(sae.W_enc.detach()).mean().item(),
            "average_max_decoder_cosine_sim": max_cosines(sae.W_dec.detach().T).mean().item(),
            "frac_alive": (freq > 0).double().mean().item(),
        },
    }


def core_config(settings: dict, cfg) -> dict:
    """CoreEvalConfig's fields as saescope measured: reconstruction on the store's held-out rows
    (special tokens never stored), losses on held-out text sequences of eval_context_len tokens."""
    return {
        "model_name": str(settings.get("model")),
        "llm_dtype": cfg.eval_dtype,
        "batch_size_prompts": cfg.eval_batch_size,
        "n_eval_reconstruction_batches": -(-cfg.eval_sequences // cfg.eval_batch_size),
        "n_eval_sparsity_variance_batches": 1,
        "dataset": str(cfg.text or settings.get("dataset")),
        "context_size": cfg.eval_context_len,
        "compute_kl": True,
        "compute_ce_loss": True,
        "compute_l2_norms": True,
        "compute_sparsity_metrics": True,
        "compute_variance_metrics": True,
        "compute_featurewise_density_statistics": True,
        "compute_featurewise_weight_based_metrics": False,
        "exclude_special_tokens_from_reconstruction": True,
        "verbose": False,
    }


def _accuracies(row: dict) -> dict:
    return {k: v for k, v in row.items() if k.endswith("test_accuracy")}


def probing_fields(result: dict, cfg, model: str) -> tuple[dict, dict, list]:
    """(config, metrics, details) of SparseProbingEvalOutput from saescope's sparse_probing result:
    one detail per topic, named dataset:topic."""
    first = next(iter(result["per_topic"].values()))
    config = {
        "random_seed": result["random_seed"],
        "dataset_names": [result["dataset_name"]],
        "probe_train_set_size": first["train"],
        "probe_test_set_size": first["test"],
        "context_length": result.get("max_tokens", 256),
        "llm_dtype": cfg.eval_dtype,
        "model_name": model,
        "k_values": result["k_values"],
    }
    details = [
        {"dataset_name": f"{result['dataset_name']}:{topic}", **_accuracies(row)}
        for topic, row in result["per_topic"].items()
    ]
    return config, {"llm": result["llm"], "sae": result["sae"]}, details


def tpp_fields(result: dict, cfg, model: str) -> tuple[dict, dict, list]:
    """(config, metrics, details) of TppEvalOutput from saescope's tpp result: one detail per topic."""
    config = {
        "random_seed": result["random_seed"],
        "dataset_names": [result["dataset_name"]],
        "perform_scr": False,
        "llm_dtype": cfg.eval_dtype,
        "model_name": model,
        "n_values": [result["n_latents"]],
        "column1_vals_lookup": {},
    }
    prefix = f"tpp_threshold_{result['n_latents']}_"
    details = [
        {"dataset_name": f"{result['dataset_name']}:{topic}", **{k: v for k, v in row.items() if k.startswith(prefix)}}
        for topic, row in result["per_topic"].items()
    ]
    return config, {"tpp_metrics": result["tpp_metrics"]}, details


def absorption_fields(result: dict) -> tuple[dict, dict, list]:
    """(config, metrics, details) of AbsorptionEvalOutput: saescope's absorption result already holds
    them under SAEBench's names."""
    return result["eval_config"], result["eval_result_metrics"], result["eval_result_details"]
