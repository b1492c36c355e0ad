"""EWC in full weight space: Fisher estimation, penalty, gradient accumulation, Fisher files, recipes."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch

from conftest import REPO, TINY_MODEL, run_command, trl_ext_cli

TARGETS = ["q_proj", "down_proj"]


def tiny_lora(targets=TARGETS, r=4):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trl_ext.assets import resolve_builtin
    from trl_ext.modeling import load_tokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_builtin(TINY_MODEL), dtype=torch.float32)
    plain = copy.deepcopy(base)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.1))
    return model, plain, load_tokenizer(TINY_MODEL)


@pytest.fixture(scope="module")
def tiny():
    return tiny_lora()


@pytest.fixture(scope="module")
def samples(tiny):
    from trl_ext.data.samples import load_token_samples

    return load_token_samples("builtin:preferences", tiny[2], 6, 48, seed=1)  # prompt + chosen: prompt masked


# ---------------------------------------------------------------------------------------------------------------
# Fisher
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fisher_type", ["true", "empirical"])
def test_hook_fisher_equals_mean_squared_per_sample_autograd_gradients(tiny, samples, fisher_type):
    """Hook-based per-sample Fisher == sum_n (dlogp_n/dW)^2 / n_tokens from plain autograd on an unquantized copy,
    with the same sampled labels (same seed). Tolerance: 1e-4 relative to the largest entry."""
    from trl_ext.data.samples import collate
    from trl_ext.ewc import estimate_fisher
    from trl_ext.ewc.fisher import sequence_log_probs

    model, plain, tok = tiny
    est = estimate_fisher(model, samples, fisher_type=fisher_type, batch_size=3, seed=7, pad_token_id=tok.pad_token_id)
    assert model.training is True  # restored after the pass (which ran in eval mode)

    names = [f"model.layers.{i}.{sub}" for i in range(2) for sub in ("self_attn.q_proj", "mlp.down_proj")]
    weights = {n: plain.get_submodule(n).weight for n in names}
    plain.eval()
    gen = torch.Generator().manual_seed(7)
    brute = {n: torch.zeros_like(w) for n, w in weights.items()}
    tokens = 0
    for b0 in range(0, len(samples), 3):
        input_ids, attn, target = collate(samples[b0 : b0 + 3], tok.pad_token_id)
        logits = plain(input_ids=input_ids, attention_mask=attn).logits
        seq_logp = sequence_log_probs(logits, input_ids, target, fisher_type, gen)
        for n in range(len(seq_logp)):
            grads = torch.autograd.grad(seq_logp[n], list(weights.values()), retain_graph=True)
            for name, g in zip(weights, grads):
                brute[name] += g.double().float() ** 2
        tokens += int(target.sum())
    assert est.n_tokens == tokens and est.n_samples == len(samples)
    assert set(est.tensors) == set(names)
    for name in names:
        expected = brute[name] / tokens
        assert est.tensors[name].dtype == torch.float32
        assert est.tensors[name].shape == expected.shape
        torch.testing.assert_close(est.tensors[name], expected, rtol=1e-4, atol=1e-4 * float(expected.max()))
        assert float(expected.max()) > 0


def test_kfac_factors_and_lora_params_ablation_warning(tiny, samples):
    from trl_ext.ewc import estimate_fisher

    model, _, tok = tiny
    full = estimate_fisher(model, samples, batch_size=3, seed=0, pad_token_id=tok.pad_token_id)
    kfac = estimate_fisher(
        model, samples, mode="kfac", batch_size=3, seed=0, pad_token_id=tok.pad_token_id, dtype=torch.bfloat16
    )
    name = "model.layers.0.self_attn.q_proj"
    out_f, in_f = full.tensors[name].shape
    assert kfac.tensors[f"{name}.kfac_out"].shape == (out_f,) and kfac.tensors[f"{name}.kfac_in"].shape == (in_f,)
    assert kfac.tensors[f"{name}.kfac_out"].dtype == torch.bfloat16
    approx = kfac.tensors[f"{name}.kfac_out"].float()[:, None] * kfac.tensors[f"{name}.kfac_in"].float()[None]
    # same order of magnitude and strongly correlated with the exact diagonal
    ratio = float(approx.sum() / full.tensors[name].sum())
    assert 0.05 < ratio < 20
    corr = torch.corrcoef(torch.stack([approx.flatten().log(), full.tensors[name].flatten().clamp_min(1e-12).log()]))
    assert float(corr[0, 1]) > 0.5
    with pytest.warns(UserWarning, match="A is not regularized"):
        lp = estimate_fisher(model, samples[:2], mode="lora_params", seed=0, pad_token_id=tok.pad_token_id)
    assert float(lp.tensors[f"{name}.lora_A"].abs().max()) == 0.0  # B = 0 at init: A's gradient is zero
    assert float(lp.tensors[f"{name}.lora_B"].abs().max()) > 0.0


# ---------------------------------------------------------------------------------------------------------------
# penalty
# ---------------------------------------------------------------------------------------------------------------


def test_penalty_is_zero_at_init_and_matches_dense_reference(monkeypatch):
    import trl_ext.ewc.penalty as pen
    from trl_ext.ewc import Anchor, EWCPenalty, adapted_modules

    model, _, _ = tiny_lora()
    modules = adapted_modules(model)
    torch.manual_seed(3)
    fisher = {m.name: torch.rand(m.shape) for m in modules}
    lam = 7.0
    penalty = EWCPenalty(modules, fisher, lam)
    value, kl, grads = penalty.value_and_grads()
    assert float(value) == 0.0 and float(kl) == 0.0 and all(float(g.abs().max()) == 0 for g in grads.values())

    monkeypatch.setattr(pen, "CHUNK_ELEMENTS", 100)  # several row chunks per module
    anchors = {}
    for m in modules:
        torch.nn.init.normal_(m.lora_B, std=0.1)
        anchors[m.name] = Anchor(0.5, torch.randn_like(m.lora_A), torch.randn_like(m.lora_B) * 0.1)
    for anchor_set in (None, anchors):
        penalty = EWCPenalty(modules, fisher, lam, anchors=anchor_set)
        model.zero_grad()
        loss = penalty.loss()
        loss.backward()
        dense = 0.0
        A_ref = {m.name: m.lora_A.detach().clone().requires_grad_(True) for m in modules}
        B_ref = {m.name: m.lora_B.detach().clone().requires_grad_(True) for m in modules}
        for m in modules:
            delta = m.scaling * B_ref[m.name] @ A_ref[m.name]
            if anchor_set:
                a = anchor_set[m.name]
                delta = delta - a.scaling * a.lora_B @ a.lora_A
            dense = dense + lam / 2 * (fisher[m.name] * delta**2).sum()
        dense.backward()
        torch.testing.assert_close(loss, dense.detach(), rtol=1e-5, atol=0)
        value, kl, grads = penalty.value_and_grads()
        torch.testing.assert_close(value, dense.detach(), rtol=1e-5, atol=0)
        torch.testing.assert_close(kl, dense.detach() / lam, rtol=1e-5, atol=0)
        for m in modules:
            for param, ref in ((m.lora_A, A_ref[m.name]), (m.lora_B, B_ref[m.name])):
                # Tolerance: float32 round-off of chunked vs dense sums, relative to the largest gradient entry
                # (entries near zero cancel and carry no relative precision).
                atol = 1e-6 * float(ref.grad.abs().max())
                torch.testing.assert_close(param.grad, ref.grad, rtol=1e-4, atol=atol)
                torch.testing.assert_close(grads[param], ref.grad, rtol=1e-4, atol=atol)


def test_online_ewc_accumulates_gamma_times_old_plus_new():
    from trl_ext.ewc.fisher import FisherEstimate
    from trl_ext.ewc.io import combine_online

    old = FisherEstimate({"m": torch.full((2, 3), 2.0)}, "full", "true", 10, 100)
    new = FisherEstimate({"m": torch.full((2, 3), 1.0)}, "full", "true", 5, 50)
    both = combine_online(old, new, gamma=0.5)
    torch.testing.assert_close(both.tensors["m"], torch.full((2, 3), 2.0))
    assert (both.n_samples, both.n_tokens, both.extra["online_tasks"]) == (15, 150, 2)


# ---------------------------------------------------------------------------------------------------------------
# gradient accumulation
# ---------------------------------------------------------------------------------------------------------------


def _first_step_grads(batch: int, ga: int, lam: float, fisher_path: str, tmp_path) -> dict[str, torch.Tensor]:
    from transformers import TrainerCallback

    from trl_ext.data.loading import load_dataset_by_name
    from trl_ext.trainers.dpo import DPOConfig, DPOTrainer

    model, _, tok = tiny_lora(r=4)
    torch.manual_seed(11)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # away from the anchor so the penalty has a gradient

    captured = {}

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            for n, p in model.named_parameters():
                if p.requires_grad:
                    captured[n] = p.grad.detach().clone()

    args = DPOConfig(
        output_dir=str(tmp_path / f"ga{ga}-{lam}"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=ga,
        max_steps=1,
        learning_rate=1e-3,
        max_grad_norm=0.0,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_length=64,
        seed=5,
        bf16=False,
        use_cpu=True,
        ewc_lambda=lam,
        ewc_fisher_path=fisher_path if lam else None,
    )
    data = load_dataset_by_name("builtin:preferences")["train"].select(range(8))
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[Capture()])
    trainer.train()
    if lam:
        assert trainer.state.log_history[0]["ewc/penalty"] > 0
    return captured


@pytest.mark.slow
def test_ewc_gradient_is_the_same_for_gradient_accumulation_1_and_4(tmp_path):
    from trl_ext.ewc import adapted_modules, model_identity, save_fisher
    from trl_ext.ewc.fisher import FisherEstimate

    model, _, _ = tiny_lora(r=4)
    torch.manual_seed(2)
    fisher = FisherEstimate({m.name: torch.rand(m.shape) for m in adapted_modules(model)}, "full", "true", 1, 1)
    path = save_fisher(tmp_path / "f.safetensors", fisher, model_identity(model))
    lam = 50.0
    contributions = {}
    for batch, ga in ((4, 1), (1, 4)):
        with_ewc = _first_step_grads(batch, ga, lam, path, tmp_path)
        without = _first_step_grads(batch, ga, 0.0, path, tmp_path)
        contributions[ga] = {n: with_ewc[n] - without[n] for n in with_ewc}
    assert max(float(c.abs().max()) for c in contributions[1].values()) > 1e-3
    for n in contributions[1]:
        torch.testing.assert_close(contributions[4][n], contributions[1][n], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Fisher files
# ---------------------------------------------------------------------------------------------------------------


def test_fisher_file_round_trip_and_mismatch_errors(tiny, samples, tmp_path):
    from safetensors import safe_open

    from trl_ext.ewc import (
        FisherMismatchError,
        adapted_modules,
        estimate_fisher,
        load_fisher,
        model_identity,
        save_fisher,
    )

    model, _, tok = tiny
    modules = adapted_modules(model)
    est = estimate_fisher(model, samples[:3], batch_size=3, seed=0, pad_token_id=tok.pad_token_id)
    path = save_fisher(tmp_path / "f.safetensors", est, model_identity(model), revision="main")
    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata()
        assert sorted(fh.keys()) == sorted(m.name for m in modules)
        assert tuple(fh.get_slice("model.layers.0.mlp.down_proj").get_shape()) == (128, modules[1].shape[1])
    assert meta["base_model"] == "builtin:tiny-chat" and meta["base_model_revision"] == "main"
    assert meta["base_model_storage"] == "float32" and len(meta["base_model_fingerprint"]) == 64
    assert (meta["mode"], meta["fisher_type"]) == ("full", "true")
    assert (int(meta["n_samples"]), int(meta["n_tokens"])) == (est.n_samples, est.n_tokens)
    loaded = load_fisher(path, model, modules, mode="full")
    for k, v in est.tensors.items():
        assert torch.equal(loaded.tensors[k], v)

    other = save_fisher(tmp_path / "other.safetensors", est, {**model_identity(model), "base_model": "Qwen/Qwen2.5-7B"})
    with pytest.raises(FisherMismatchError, match=r"base model 'Qwen/Qwen2.5-7B'.*'builtin:tiny-chat'"):
        load_fisher(other, model, modules)
    with pytest.raises(FisherMismatchError, match=r"'full' Fisher but ewc_fisher_mode is 'kfac'"):
        load_fisher(path, model, modules, mode="kfac")
    attn_model, _, _ = tiny_lora(targets=["q_proj", "v_proj"])
    with pytest.raises(
        FisherMismatchError,
        match=r"missing from the file: model.layers.0.self_attn.v_proj.*"
        r"not adapted here: model.layers.0.mlp.down_proj",
    ):
        load_fisher(path, attn_model, adapted_modules(attn_model))
    bad = copy.deepcopy(est)
    bad.tensors["model.layers.0.self_attn.q_proj"] = torch.ones(3, 3)
    bad_path = save_fisher(tmp_path / "bad.safetensors", bad, model_identity(model))
    with pytest.raises(FisherMismatchError, match=r"model.layers.0.self_attn.q_proj has shape \(3, 3\)"):
        load_fisher(bad_path, model, modules)


@pytest.mark.parametrize("load_in_4bit", [False, True])
def test_fisher_file_is_refused_for_other_weights_at_the_same_path_and_accepted_for_the_same(tmp_path, load_in_4bit):
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl import ModelConfig

    from trl_ext.assets import resolve_builtin
    from trl_ext.ewc import FisherMismatchError, adapted_modules, load_fisher, model_identity, save_fisher
    from trl_ext.ewc.fisher import FisherEstimate
    from trl_ext.modeling import get_peft_config, load_model

    config = AutoConfig.from_pretrained(resolve_builtin(TINY_MODEL))
    path = tmp_path / "model"
    args = ModelConfig(
        model_name_or_path=str(path), load_in_4bit=load_in_4bit, use_peft=True, lora_r=4, lora_target_modules=TARGETS
    )

    def checkpoint(seed: int):
        """A model of the tiny architecture with random weights drawn from `seed`, saved over `path` and loaded."""
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
        return get_peft_model(load_model(args), get_peft_config(args))

    model = checkpoint(0)
    fisher = FisherEstimate({m.name: torch.rand(m.shape) for m in adapted_modules(model)}, "full", "true", 1, 1)
    fisher_path = save_fisher(tmp_path / "f.safetensors", fisher, model_identity(model))
    other = checkpoint(1)
    assert model_identity(other)["base_model"] == model_identity(model)["base_model"] == str(path.resolve())
    with pytest.raises(
        FisherMismatchError,
        match=rf"computed for other weights of '{path.resolve()}' \(weight "
        r"fingerprint [0-9a-f]{12}, this model's is [0-9a-f]{12}\)",
    ):
        load_fisher(fisher_path, other, adapted_modules(other))
    same = checkpoint(0)
    loaded = load_fisher(fisher_path, same, adapted_modules(same))
    assert all(torch.equal(loaded.tensors[key], tensor) for key, tensor in fisher.tensors.items())


def test_recipe_keys_validate_before_weights_load(tmp_path):
    from trl_ext.recipe import RecipeError, load_recipe

    recipe = REPO / "recipes" / "quickstart" / "dpo-ewc.yaml"
    r = load_recipe(recipe)
    assert (r.training.ewc_lambda, r.training.ewc_fisher_type, r.training.ewc_fisher_mode) == (100.0, "true", "full")
    with pytest.raises(RecipeError, match="Did you mean 'ewc_lambda'"):
        load_recipe(recipe, ["--ewc_lamda", "1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace('ewc_fisher_type: "true"', "ewc_fisher_type: fisher"))
    with pytest.raises(RecipeError, match=r"'ewc_fisher_type' has value 'fisher'; allowed values: true, empirical"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match=r"ewc_fisher_path .*does not exist.*trl-ext fisher"):
        load_recipe(recipe, ["--ewc_fisher_path", str(tmp_path / "nope.safetensors")])
    with pytest.raises(RecipeError, match="'ewc_lambda' has value -1.0, but it must be >= 0"):
        load_recipe(recipe, ["--ewc_lambda", "-1"])
    for method in ("grpo", "kto"):
        from trl_ext.recipe import recipe_fields

        assert {"ewc_lambda", "ewc_fisher_path", "forgetting_anchor_dataset"} <= set(recipe_fields(method))


# ---------------------------------------------------------------------------------------------------------------
# end to end: 4-bit base on CPU, trl-ext fisher, the Fisher file in a recipe
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_4bit_end_to_end_fisher_cli_then_training_with_the_file(tmp_path):
    recipe = str(REPO / "recipes" / "quickstart" / "dpo-ewc.yaml")
    fisher = tmp_path / "fisher.safetensors"
    proc = trl_ext_cli("fisher", recipe, "--output", str(fisher), "--ewc_fisher_samples", "16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "split-half agreement" in proc.stdout and fisher.is_file()
    again = trl_ext_cli("fisher", recipe, "--output", str(fisher))
    assert again.returncode == 2 and "--overwrite" in again.stderr

    out = tmp_path / "run"
    proc = run_command(
        [
            sys.executable,
            "-m",
            "trl_ext.train",
            "--config",
            recipe,
            "--ewc_fisher_path",
            str(fisher),
            "--max_steps",
            "4",
            "--logging_steps",
            "2",
            "--forgetting_eval_steps",
            "2",
            "--forgetting_eval_samples",
            "8",
            "--output_dir",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in logs if "ewc/penalty" in h]
    assert [h["step"] for h in steps] == [2, 4]
    assert all(h["ewc/penalty"] > 0 and h["ewc/predicted_kl"] > 0 for h in steps)
    assert steps[0]["ewc/fisher_q99"] >= steps[0]["ewc/fisher_q50"] > 0  # quantiles logged once, at start
    assert "ewc/fisher_q50" not in steps[1]
    assert all(h["forgetting/kl_to_reference"] > 0 for h in steps)
    assert all("forgetting/anchor_nll_delta" in h for h in steps)

    bad = run_command(
        [
            sys.executable,
            "-m",
            "trl_ext.train",
            "--config",
            recipe,
            "--ewc_fisher_path",
            str(fisher),
            "--lora_target_modules",
            "attention",
            "--max_steps",
            "1",
            "--output_dir",
            str(tmp_path / "b"),
        ]
    )
    assert bad.returncode != 0 and "covers other target modules" in bad.stderr


@pytest.mark.slow
def test_ewc_under_grpo_grows_from_zero_and_pulls_back_when_the_task_gradient_vanishes(tmp_path):
    out = tmp_path / "grpo-ewc"
    proc = trl_ext_cli(
        "train",
        str(REPO / "recipes" / "quickstart" / "grpo.yaml"),
        "--output_dir",
        str(out),
        "--ewc_lambda",
        "100",
        "--ewc_fisher_dataset",
        "builtin:general_text",
        "--ewc_fisher_samples",
        "32",
        "--ewc_fisher_max_length",
        "64",
        "--logging_steps",
        "1",
        "--max_steps",
        "12",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "ewc/penalty" in h]
    assert len(logs) == 12
    assert logs[0]["ewc/penalty"] == 0.0  # B = 0 at PEFT's init: the adapter is still the anchor
    assert logs[-1]["ewc/penalty"] > 0.0
    # steps where every completion got the same reward have no GRPO gradient; once the adapter has moved, the
    # gradient of such a step is EWC's alone, pulling the adapter back towards the anchor
    moved = [h for h in logs if h["ewc/penalty"] > 0]
    assert any(h["rewards/keyword_reward/std"] == 0 and h["grad_norm"] > 0 for h in moved)


def test_fisher_samples_take_a_row_slice_and_name_the_split_key(tiny):
    from trl_ext.data.samples import load_token_samples
    from trl_ext.recipe import RecipeError

    assert len(load_token_samples("builtin:general_text", tiny[2], 50, 32, split="train[:3]")) == 3
    with pytest.raises(RecipeError, match=r"no split 'nope' \(splits: .*\); set ewc_fisher_split"):
        load_token_samples("builtin:general_text", tiny[2], 4, 32, split="nope", split_key="ewc_fisher_split")


def test_fisher_quantiles_match_the_materialized_entries_without_materializing_them():
    """Exact on small Fisher tensors (kfac entries are the products of the two factors); on a large kfac factor pair
    the summary reads a sample, not the (out, in) product, which on an 8B model took 56 GB of host memory."""
    from trl_ext.ewc.fisher import fisher_quantiles
    from trl_ext.memory.trace import LiveBytesTracer

    g = torch.Generator().manual_seed(0)
    full = {"a.weight": torch.rand(6, 5, generator=g), "b.weight": torch.rand(3, 7, generator=g) * 4}
    kfac = {"a.kfac_out": torch.rand(6, generator=g), "a.kfac_in": torch.rand(5, generator=g) + 0.5}
    kfac |= {"b.kfac_out": torch.rand(3, generator=g) * 3, "b.kfac_in": torch.rand(7, generator=g)}
    dense = {
        "full": torch.cat([t.reshape(-1) for t in full.values()]),
        "kfac": torch.cat([torch.outer(kfac[f"{m}.kfac_out"], kfac[f"{m}.kfac_in"]).reshape(-1) for m in "ab"]),
    }
    for mode, tensors in (("full", full), ("kfac", kfac)):
        got = fisher_quantiles(tensors, mode)
        ref = dense[mode]
        q = torch.quantile(ref, torch.tensor([0.5, 0.9, 0.99]))
        assert got["ewc/fisher_entries"] == ref.numel() == 51
        assert got["ewc/fisher_mean"] == pytest.approx(float(ref.double().mean()), rel=1e-6)
        assert got["ewc/fisher_max"] == pytest.approx(float(ref.max()), rel=1e-6)
        assert [got[f"ewc/fisher_q{k}"] for k in (50, 90, 99)] == pytest.approx(q.tolist(), rel=1e-6)
        sampled = fisher_quantiles(tensors, mode, max_entries=40, seed=1)  # a sample of 40 of the 51 entries
        assert ref.min() <= sampled["ewc/fisher_q50"] <= ref.max()
        assert sampled["ewc/fisher_mean"] == got["ewc/fisher_mean"]  # mean and max stay exact

    big = {"m.kfac_out": torch.rand(4096, generator=g), "m.kfac_in": torch.rand(4096, generator=g)}
    tracer = LiveBytesTracer()
    with tracer, tracer.in_phase("fisher"):
        got = fisher_quantiles(big, "kfac", max_entries=100_000)
    assert got["ewc/fisher_entries"] == 4096 * 4096
    assert got["ewc/fisher_mean"] == pytest.approx(float(big["m.kfac_out"].mean() * big["m.kfac_in"].mean()), rel=1e-5)
    assert tracer.result()["peak_bytes"] < 8 * 4096 * 4096 / 20  # the dense product would be 67 MB, twice
