"""The training loop: many SAEs from one read, resume equality, NaN handling (schedules: test_schedule.py)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from tinymodels import tiny_model

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.activations.sensitivity import read_norm_power
from saescope.errors import SaescopeError
from saescope.saes import jumprelu_paths
from saescope.saes.base import token_scale
from saescope.saes.registry import make_sae
from saescope.train.job import TrainConfig, parse_knobs
from saescope.train.moments import clip_jolts, floor_stale_moments
from saescope.train.normalize import first_rows, token_weights
from saescope.train.trainer import Trainer


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_tokenizer):
    cfg = HarvestConfig(
        sites="res,mlp",
        layers="0,1",
        tokens=6144,
        context_len=64,
        forward_batch=4,
        dtype="float32",
        shard_rows=1024,
        store=str(tmp_path_factory.mktemp("store")),
        device="cpu",
    )
    return harvest(cfg, tiny_model("gemma3_text"), tiny_tokenizer)


# The recipe's JumpReLU (linear L0 penalty, unit decoder rows, one Adam group, no revival term, no clipping).
RECIPE_KNOBS = "l0_penalty=l0,unit_decoder=true,threshold_lr=1,revive_coefficient=0,jolt_clip=0"


def cfg_for(store, out, **kw) -> TrainConfig:
    base = dict(
        store=str(store),
        out=str(out),
        widths=[128],
        l0_coefficients=[1e-3, 1e-2],
        knobs=RECIPE_KNOBS,
        normalize="scalar",
        train_tokens=256 * 12,
        batch_size=256,
        lr=3e-3,
        lr_warmup_steps=4,
        l0_warmup_steps=6,
        buffer_rows=2048,
        checkpoint_every=4,
        log_every=2,
        device="cpu",
        norm_rows=4096,
    )
    return TrainConfig(**{**base, **kw})


def test_threshold_lr_trains_thresholds_at_a_multiple_of_the_schedule(store, tmp_path):
    """JumpReLU's threshold_lr puts the thresholds in their own Adam group whose learning rate is
    the schedule's times that factor, and a run with it resumes like any other."""
    trainer = Trainer(cfg_for(store, tmp_path / "t", knobs="l0_penalty=l0,threshold_lr=10", train_tokens=256 * 2))
    trainer.train()
    groups = {g["lr_scale"]: g for g in trainer.opt.param_groups}
    assert sorted(groups) == [1.0, 10.0]
    assert groups[10.0]["lr"] == pytest.approx(10 * groups[1.0]["lr"]) and groups[1.0]["lr"] > 0
    assert {id(p) for p in groups[10.0]["params"]} == {id(sae.threshold) for sae in trainer.saes.values()}
    assert len(Trainer(cfg_for(store, tmp_path / "plain")).opt.param_groups) == 1


def test_adam_beta1_moves_weights_with_momentum_and_thresholds_without(store, tmp_path):
    """--adam-beta1 applies to weights and biases; JumpReLU thresholds keep beta1 0 in their own
    group, and a TopK SAE has no such parameter."""
    trainer = Trainer(cfg_for(store, tmp_path / "m", adam_beta1=0.5, train_tokens=256 * 2))
    trainer.train()
    groups = {g["betas"][0]: g for g in trainer.opt.param_groups}
    assert sorted(groups) == [0.0, 0.5] and groups[0.5]["betas"][1] == 0.999
    assert {id(p) for p in groups[0.0]["params"]} == {id(sae.threshold) for sae in trainer.saes.values()}
    moved = trainer.opt.state[next(iter(trainer.saes.values())).W_enc]["exp_avg"]
    assert moved.abs().max() > 0  # the weights' first moment is kept
    topk = Trainer(cfg_for(store, tmp_path / "k", arch="topk", l0_coefficients=[8], knobs="", adam_beta1=0.5))
    assert [g["betas"][0] for g in topk.opt.param_groups] == [0.5]


def test_data_init_starts_jumprelu_at_the_requested_l0(store, tmp_path):
    """saescope's default JumpReLU starts at its target L0: the very first training step already
    runs at about that L0 (no dense phase), on the store's rows after standardisation, and every
    latent fires at first."""
    cfg = TrainConfig(
        store=str(store),
        out=str(tmp_path / "init"),
        widths=[128],
        l0_coefficients=[8],
        train_tokens=256,
        batch_size=256,
        log_every=1,
        device="cpu",
        norm_rows=4096,
    )
    trainer = Trainer(cfg)
    trainer.estimate_normalization()
    trainer.init_from_data()
    for key, sae in trainer.saes.items():
        assert sae.target_l0 == 8 and sae.init_l0 == 8
        site = trainer.site_of[key]
        x = (first_rows(trainer.store, site, 2048) - trainer.shifts[site]) / trainer.scales[site]
        fired = sae.encode(x) > 0
        assert fired.sum(1).float().mean().item() == pytest.approx(8, rel=0.1)
        assert fired.any(0).all()
    trainer.train()
    first = json.loads((tmp_path / "init" / "train" / "log.jsonl").read_text().splitlines()[0])
    for key in trainer.saes:
        assert first[key]["l0"] == pytest.approx(8, rel=0.25)


def test_gemma_scope_preset_is_the_recipe(store, tmp_path):
    """`--preset gemma-scope` gives the recipe's exact settings (recipe notes) and flags given beside
    it still win; the SAEs it builds are the recipe's JumpReLU."""
    from saescope.cli import build_parser
    from saescope.config import from_namespace, preset_values, with_preset

    cfg = with_preset(TrainConfig, "gemma-scope", store=str(store), out=str(tmp_path / "gs"), device="cpu")
    recipe = dict(
        lr=7e-5,
        batch_size=4096,
        lr_warmup_steps=1000,
        l0_warmup_steps=10_000,
        lr_decay=0.0,
        adam_beta1=0.0,
        adam_beta2=0.999,
        adam_eps=1e-8,
        normalize="scalar",
        l0_coefficients=[1e-3],
    )
    assert {k: getattr(cfg, k) for k in recipe} == recipe and cfg.preset == "gemma-scope"
    for sae in Trainer(cfg).saes.values():
        knobs = (sae.l0_penalty, sae.l0_coefficient, sae.bandwidth, sae.init_l0, sae.freq_coefficient)
        assert knobs + (sae.revive_coefficient, sae.jolt_clip) == ("l0", 1e-3, 1e-3, 0.0, 0.0, 0.0, 0.0)
        assert torch.all(sae.threshold == 1e-3)
    argv = ["train", "--preset", "gemma-scope", "--lr", "1e-3"]
    args = build_parser({"train": preset_values(TrainConfig, "gemma-scope")}).parse_args(argv)
    parsed = from_namespace(TrainConfig, args)
    assert parsed.lr == 1e-3 and parsed.batch_size == 4096 and parsed.knobs == cfg.knobs
    with pytest.raises(SaescopeError, match="preset"):
        preset_values(TrainConfig, "gemma-scop")


def test_parse_knobs():
    assert parse_knobs("target_l0=40, l0_penalty=quadratic,bandwidth=0.002") == {
        "target_l0": 40,
        "l0_penalty": "quadratic",
        "bandwidth": 0.002,
    }
    with pytest.raises(SaescopeError, match="key=value"):
        parse_knobs("target_l0")


def test_many_saes_share_one_read_and_learn(store, tmp_path):
    trainer = Trainer(cfg_for(store, tmp_path, train_tokens=256 * 40, l0_coefficients=[1e-3]))
    assert len(trainer.saes) == 4 and len({id(p) for p in trainer.opt.param_groups[0]["params"]}) == 4 * 5
    reads = []
    original = trainer.loader.store.read
    trainer.loader.store.read = lambda *a, **k: reads.append(a) or original(*a, **k)
    trainer.train()
    assert len(reads) <= 4 * 8 * 2  # each (site, shard) read at most once per epoch, not once per SAE
    for site, scale in trainer.scales.items():  # E||x/C||^2 = 1 on the sample
        x = torch.cat([trainer.store.read(site, i).float() for i in range(4)])
        assert (x / scale).pow(2).sum(1).mean().item() == pytest.approx(1.0, rel=1e-4)
    log = [json.loads(line) for line in (tmp_path / "train" / "log.jsonl").read_text().splitlines()]
    first, last = log[0], log[-1]
    for key in trainer.saes:
        assert last[key]["fvu"] < first[key]["fvu"] and last[key]["fvu"] < 0.5
    for sae in trainer.saes.values():
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae))
    assert sorted(p.name for p in (tmp_path / "saes").iterdir()) == sorted(trainer.saes)


# The recipe's JumpReLU, and saescope's defaults (thresholds from the data, the steered L0 penalty whose
# lambda is checkpointed state, free decoder rows, the revival term, standardised sites, lr decay, the
# run's momentum on weights only): a resumed run must not initialise again, its Adam groups come back with
# their own betas, and the latents' silence counters carry over (dead after 2 steps here, so revival acts
# on both sides of the cut).
DEFAULTS = dict(knobs="dead_tokens=256", normalize="standardize", l0_coefficients=[2.0, 16.0], adam_beta1=0.5)


@pytest.mark.parametrize("kw", [{}, DEFAULTS], ids=["recipe", "saescope-defaults"])
def test_killed_training_resumes_to_identical_weights(store, tmp_path, kw, monkeypatch):
    whole = Trainer(cfg_for(store, tmp_path / "whole", **kw))
    whole.train()
    if kw:  # some latents are silent past dead_tokens at the end, so the revival term was acting
        assert any((s.tokens_since_fired > s.dead_tokens).any() for s in whole.saes.values())
        assert all(s.l0_penalty == "steered" and s.l0_steer[1] != 1 for s in whole.saes.values())

    class Killed(Exception):
        pass

    cut = Trainer(cfg_for(store, tmp_path / "cut", **kw))
    real_step = cut.train_step

    def dying_step(acts):
        if cut.step == 6:  # checkpoint at step 4, then two more steps of lost work
            raise Killed
        return real_step(acts)

    cut.train_step = dying_step
    with pytest.raises(Killed):
        cut.train()
    assert torch.load(cut.checkpoint_path, weights_only=True)["step"] == 4
    # the checkpoint holds the share of entries step 4 kept, so step 5 takes its path without a probe
    monkeypatch.setattr(jumprelu_paths, "dense_share", lambda *a: pytest.fail("a resumed run probed for its path"))
    resumed = Trainer(cfg_for(store, tmp_path / "cut", **kw))
    resumed.train()
    for key, sae in whole.saes.items():
        for name, tensor in sae.state_dict().items():
            assert torch.equal(tensor, resumed.saes[key].state_dict()[name]), (key, name)


def test_nan_in_batch_names_site_layer_step_and_keeps_checkpoint(store, tmp_path):
    poisoned = tmp_path / "store"
    import shutil

    shutil.copytree(store, poisoned)
    trainer = Trainer(cfg_for(poisoned, tmp_path / "run", checkpoint_every=1, norm_rows=1024, buffer_rows=1024))
    second = trainer.loader._groups(0)[1][0][0]  # the shard read for the second buffer: steps 4-7
    manifest_path = poisoned / "mlp.1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for shard in manifest["shards"][second : second + 1]:  # NaNs as a broken model would store them
        path = poisoned / "mlp.1" / shard["file"]
        data = np.fromfile(path, dtype=np.float32)
        data[::7] = np.nan
        data.tofile(path)
        shard["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    trainer = Trainer(cfg_for(poisoned, tmp_path / "run", checkpoint_every=1, norm_rows=1024, buffer_rows=1024))
    with pytest.raises(
        SaescopeError,
        match=r"NaN or inf in the activation batch at site mlp, layer 1, step 4: "
        r"the last checkpoint .* is kept",
    ):
        trainer.train()
    assert torch.load(tmp_path / "run" / "train" / "checkpoint.pt", weights_only=True)["step"] == 4


def test_checkpoint_of_other_saes_is_refused(store, tmp_path):
    Trainer(cfg_for(store, tmp_path, train_tokens=256 * 4)).train()
    with pytest.raises(SaescopeError, match="other SAEs"):
        Trainer(cfg_for(store, tmp_path, widths=[64], train_tokens=256 * 8)).train()


@pytest.mark.parametrize(
    "normalize,token_norm", [("sensitivity-tokens", False), ("sensitivity", False), ("sensitivity-tokens", True)]
)
def test_sensitivity_weights_each_tokens_error_by_its_norm_to_the_measured_power(
    store, tmp_path, normalize, token_norm
):
    """With --token-norm, an error in training units is one in raw units divided by the token's
    scale, so the weight's power rises by 2; the SAE sees rows of equal norm before standardising."""
    cfg = cfg_for(store, tmp_path, normalize=normalize, l0_coefficients=[1e-3], train_tokens=256 * 2)
    trainer = Trainer(replace(cfg, token_norm=token_norm))
    seen: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []
    batches: list[dict[str, torch.Tensor]] = []
    real_step = trainer.train_step
    trainer.train_step = lambda acts: (batches.append(acts), real_step(acts))[1]
    for key, sae in trainer.saes.items():
        real_loss = sae.loss

        def spy(x, scale, weight=None, key=key, real_loss=real_loss, **kw):
            seen.append((trainer.site_of[key], x, weight))
            return real_loss(x, scale, weight=weight, **kw)

        sae.loss = spy
    trainer.train()
    assert len(seen) == 2 * len(trainer.saes)
    for i, (site, x, weight) in enumerate(seen):
        raw = batches[i // len(trainer.saes)][site]
        fed = raw / token_scale(raw) if token_norm else raw
        torch.testing.assert_close(x, (fed - trainer.shifts[site]) / trainer.scales[site])
        if normalize == "sensitivity":
            assert weight is None
            continue
        power = read_norm_power(store, site) + (2 if token_norm else 0)
        assert power != 0 and trainer.powers[site] == power
        torch.testing.assert_close(weight, token_weights(raw, power))


@pytest.mark.parametrize(
    "normalize,token_norm", [("standardize", False), ("sensitivity-tokens", False), ("sensitivity-tokens", True)]
)
def test_per_dimension_training_resumes_and_releases_an_sae_of_raw_activations(store, tmp_path, normalize, token_norm):
    from saescope.release.formats import load

    cfg = dict(normalize=normalize, l0_coefficients=[1e-3], token_norm=token_norm)
    whole = Trainer(cfg_for(store, tmp_path / "whole", **cfg))
    whole.train()
    for site in whole.sites:  # each dimension centred, E||x||^2 = 1; with standardize, equal variances
        x = torch.cat([whole.store.read(site, i).float() for i in range(4)])
        x = x / token_scale(x) if token_norm else x
        z = (x - whole.shifts[site]) / whole.scales[site]
        torch.testing.assert_close(z.mean(0), torch.zeros(x.shape[1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.pow(2).sum(1).mean(), torch.tensor(1.0), rtol=1e-3, atol=0)
        if normalize == "standardize":
            torch.testing.assert_close(
                z.var(0, unbiased=False), torch.full((x.shape[1],), 1 / x.shape[1]), rtol=1e-3, atol=0
            )
    resumed = Trainer(cfg_for(store, tmp_path / "cut", **cfg, train_tokens=256 * 5))
    resumed.train()  # stops at step 5 with a checkpoint at 4; a longer run resumes from it
    resumed = Trainer(cfg_for(store, tmp_path / "cut", **cfg))
    resumed.train()
    for key, sae in whole.saes.items():
        for name, tensor in sae.state_dict().items():
            assert torch.equal(tensor, resumed.saes[key].state_dict()[name]), (key, name)
        site = whole.site_of[key]
        released = load(tmp_path / "whole" / "saes" / key)
        meta = json.loads((tmp_path / "whole" / "saes" / key / "config.json").read_text())
        assert meta["normalization"] == normalize and len(meta["normalization_scale"]) == sae.d_in
        assert released.knobs().get("token_norm", False) == token_norm
        x_raw = whole.store.read(site, 5).float()[:64]
        r = token_scale(x_raw) if token_norm else torch.ones(len(x_raw), 1)
        with torch.no_grad():
            z = (x_raw / r - whole.shifts[site]) / whole.scales[site]
            expected = (sae(z) * whole.scales[site] + whole.shifts[site]) * r
            torch.testing.assert_close(released(x_raw), expected, atol=1e-3, rtol=1e-4)
            if token_norm:  # fires by direction alone: a louder token gets the same latents, output scaled
                torch.testing.assert_close(released.encode(3 * x_raw), released.encode(x_raw), atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(released(3 * x_raw), 3 * released(x_raw), atol=3e-3, rtol=1e-4)
    with pytest.raises(SaescopeError, match="normalize"):
        Trainer(cfg_for(store, tmp_path / "bad", normalize="whiten"))


def test_the_sae_config_keeps_the_exact_sweep_value(store, tmp_path):
    """Folder names round a sweep value to six digits (c0.3); the SAE's config.json keeps it exact,
    and two values that would share a folder are refused."""
    Trainer(
        cfg_for(store, tmp_path, arch="relu", knobs="", l0_coefficients=[0.30000001, 3.0], train_tokens=256)
    ).train()
    for folder in (tmp_path / "saes").iterdir():
        meta = json.loads((folder / "config.json").read_text())
        assert meta["sparsity_coefficient"] == {"c0.3": 0.30000001, "c3": 3.0}[folder.name.rsplit("__", 1)[1]]
    with pytest.raises(SaescopeError, match=r"share the folder \S+__w128__c0\.3"):
        Trainer(cfg_for(store, tmp_path / "same", arch="relu", knobs="", l0_coefficients=[0.3, 0.30000001]))


@pytest.mark.parametrize("floor", [True, False], ids=["floored", "unfloored"])
def test_a_revived_latent_takes_an_ordinary_adam_step(floor):
    """A latent with no gradient for 50 steps has Adam second moments of ~0; while it is dead,
    floor_stale_moments lifts them to their tensor's mean, so its first gradient moves its encoder
    column about as far as a live latent's. Without the floor the same gradient moves it ~7x further."""
    torch.manual_seed(0)
    sae = make_sae("jumprelu", 16, 8, floor_moments=floor)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2, betas=(0.0, 0.999))
    sae.tokens_since_fired[0] = sae.dead_tokens + 1  # latent 0 is dead, the others fire
    for _ in range(50):
        for p in sae.parameters():
            p.grad = torch.randn_like(p)
        sae.W_enc.grad[:, 0] = 0
        opt.step()
        floor_stale_moments(opt, sae)
    assert (sae.stale_latents() is not None) == floor
    sae.tokens_since_fired[0] = 0  # it fires again, with a gradient like everyone else's
    before = sae.W_enc.detach().clone()
    for p in sae.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    moved = (sae.W_enc.detach() - before).norm(dim=0)
    ratio = (moved[0] / moved[1:].mean()).item()
    assert ratio < 1.5 if floor else ratio > 4


@pytest.mark.parametrize("clip", [3.0, 0.0], ids=["clipped", "unclipped"])
def test_a_gradient_spike_moves_its_latent_an_ordinary_step(clip):
    """After 300 ordinary steps, gradients 30x the usual on latent 0's encoder column and decoder
    row (one token many latents reconstruct badly) move its encoder column ~10x as far as the
    others' with plain Adam (beta1 0.5); clipped so that its decoder row's gradient is at most 3x
    the norm its second moments expect, ~2.2x as far; the other latents' gradients are untouched."""
    torch.manual_seed(0)
    sae = make_sae("jumprelu", 16, 8, jolt_clip=clip)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2, betas=(0.5, 0.999))
    for _ in range(300):
        for p in sae.parameters():
            p.grad = torch.randn_like(p)
        clip_jolts(opt, sae)
        opt.step()
    before = sae.W_enc.detach().clone()
    for p in sae.parameters():
        p.grad = torch.randn_like(p)
    sae.W_enc.grad[:, 0] *= 30
    sae.W_dec.grad[0] *= 30
    others = sae.W_enc.grad[:, 1:].clone()
    clip_jolts(opt, sae)
    assert torch.equal(sae.W_enc.grad[:, 1:], others)
    opt.step()
    moved = (sae.W_enc.detach() - before).norm(dim=0)
    ratio = (moved[0] / moved[1:].mean()).item()
    assert ratio < 3.5 if clip else ratio > 6
