"""Pipelines (`stages:`): every stage validated before any weight loads, references, online EWC, resume, --stage.

The orchestration tests replace the stage launcher (`launch_stage`, the one place a stage's process starts) with a
recorder, so they run in seconds; tests/test_pipeline_run.py runs real stages.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import TINY_MODEL
from trl_ext import pipeline_cli
from trl_ext.pipeline import STAGE_COMPLETE_FILE, load_pipeline
from trl_ext.recipe import RecipeError, load_recipe

SHARED = {
    "model_name_or_path": TINY_MODEL,
    "load_in_4bit": True,
    "use_peft": True,
    "lora_r": 8,
    "max_steps": 2,
    "report_to": "none",
    "save_strategy": "no",
}
DPO = {"name": "dpo", "method": "dpo", "dataset_name": "builtin:preferences", "max_length": 64}
KTO = {"name": "kto", "method": "kto", "dataset_name": "builtin:kto", "max_length": 64}
PPO = {
    "name": "ppo",
    "method": "ppo",
    "dataset_name": "builtin:prompts",
    "reward_funcs": ["trl_ext.rewards.keyword.KeywordReward"],
    "reward_kwargs": {"KeywordReward": {"keywords": ["river"]}},
    "max_completion_length": 8,
}


def write_pipeline(tmp_path: Path, stages: list[dict], **shared) -> Path:
    path = tmp_path / "pipeline.yaml"
    raw = {**SHARED, "output_dir": str(tmp_path / "out"), **shared, "stages": stages}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Launcher:
    """Stands in for `launch_stage`: records each stage launched; `fail` maps a stage to what it does first."""

    def __init__(self, fail: dict[str, str] | None = None):
        self.launched: list[tuple[str, list[str]]] = []
        self.fail = dict(fail or {})

    def __call__(self, launch_args: list[str]) -> int:
        recipe = Path(launch_args[launch_args.index("--config") + 1])
        stage_dir = recipe.parent
        overrides = launch_args[launch_args.index("--config") + 2 :]
        self.launched.append((stage_dir.name, overrides))
        if self.fail.pop(stage_dir.name, None) == "killed after checkpoint-2":
            (stage_dir / "checkpoint-2").mkdir()
            return 137
        (stage_dir / "adapter_config.json").write_text("{}")
        return 0


@pytest.fixture
def launcher(monkeypatch):
    fake = Launcher()
    monkeypatch.setattr(pipeline_cli, "launch_stage", fake)
    return fake


def test_bad_key_in_third_stage_fails_before_the_first_stage_loads_weights(tmp_path, launcher, capsys):
    path = write_pipeline(tmp_path, [DPO, KTO, {**PPO, "learning_rat": 1e-3}])
    assert pipeline_cli.train_cli([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trl-ext: error: stage 'ppo' (3 of 3)") and len(err.splitlines()) == 1
    assert "Unknown key 'learning_rat'" in err and "Did you mean 'learning_rate'?" in err
    assert launcher.launched == [] and not (tmp_path / "out").exists()


def test_a_shared_key_no_stage_method_has_names_the_stage_and_the_key(tmp_path):
    path = write_pipeline(tmp_path, [DPO, PPO], beta=0.2)
    with pytest.raises(RecipeError, match=r"stage 'ppo' \(2 of 2\).*beta=0.2"):
        load_pipeline(path)
    path = write_pipeline(tmp_path, [DPO, PPO], desirable_weight=1.0)
    with pytest.raises(RecipeError, match=r"stage 'dpo'.*top-level key 'desirable_weight' is shared"):
        load_pipeline(path)


def test_every_stage_writes_under_output_dir_and_overrides_reach_the_stages_that_have_the_key(tmp_path):
    path = write_pipeline(tmp_path, [DPO, KTO, PPO])
    pipeline = load_pipeline(path, ["--max_steps", "3", "--kl_coef", "0.2", "--output_dir", str(tmp_path / "o2")])
    assert [s.name for s in pipeline.stages] == ["dpo", "kto", "ppo"]
    assert [s.recipe.training.output_dir for s in pipeline.stages] == [
        str(tmp_path / "o2" / n) for n in ("dpo", "kto", "ppo")
    ]
    assert [s.recipe.training.max_steps for s in pipeline.stages] == [3, 3, 3]
    assert pipeline.stages[2].recipe.training.kl_coef == 0.2 and "--kl_coef" not in pipeline.stages[0].overrides
    with pytest.raises(RecipeError, match="--no_such_key is a key of no stage"):
        load_pipeline(path, ["--no_such_key", "1"])


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{**DPO, "ewc_anchor_adapter": "kto"}, KTO], r"stage 'dpo'.*'kto' names a stage that does not run before"),
        ([DPO, {**KTO, "ewc_anchor_adapter": "dpp"}], r"stage 'kto'.*'dpp' names no stage.*Did you mean 'dpo'\?"),
        ([DPO, {**PPO, "reward_adapter_path": "dpo"}], r"stage 'ppo'.*stage 'dpo' \(method dpo\) trains no reward"),
        ([DPO, {**KTO, "ewc_fisher_path": "dpo"}], r"stage 'kto'.*stage 'dpo' writes no Fisher file"),
        ([DPO, {**KTO, "name": "dpo"}], r"stage name 'dpo' is used twice"),
        ([{**DPO, "output_dir": "x"}], r"stage 'dpo'.*sets 'output_dir'"),
        ([{**DPO, "method": "dop"}], r"unknown method 'dop'.*Did you mean 'dpo'\?"),
    ],
)
def test_bad_stage_references_and_names_fail_naming_the_stage(tmp_path, stages, message):
    with pytest.raises(RecipeError, match=message):
        load_pipeline(write_pipeline(tmp_path, stages))


def test_a_reference_resolves_to_the_earlier_stage_output(tmp_path):
    path = write_pipeline(tmp_path, [DPO, {**KTO, "ewc_anchor_adapter": "dpo"}])
    kto = load_pipeline(path).stage("kto")
    assert kto.references == {"ewc_anchor_adapter": "dpo"}
    assert kto.raw["ewc_anchor_adapter"] == kto.recipe.training.ewc_anchor_adapter == str(tmp_path / "out" / "dpo")


def test_ppo_takes_its_policy_and_its_reward_model_from_earlier_stages(tmp_path):
    sft = {"name": "sft", "method": "sft", "dataset_name": "builtin:instructions", "max_length": 64}
    reward = {"name": "reward", "method": "reward", "dataset_name": "builtin:preferences", "max_length": 64}
    ppo = {k: v for k, v in PPO.items() if not k.startswith("reward_")}
    path = write_pipeline(tmp_path, [sft, reward, {**ppo, "sft_adapter_path": "sft", "reward_adapter_path": "reward"}])
    pipeline = load_pipeline(path)
    ppo_stage = pipeline.stage("ppo")
    assert ppo_stage.recipe.training.sft_adapter_path == str(tmp_path / "out" / "sft")
    assert ppo_stage.recipe.training.reward_adapter_path == str(tmp_path / "out" / "reward")
    assert pipeline.dependencies(ppo_stage) == pipeline.stages[:2]
    # a key whose check needs the reward adapter is set with it, from the recipe or the command line
    critic_from_reward = load_pipeline(path, ["--critic_init_from_reward", "true"]).stage("ppo")
    assert critic_from_reward.recipe.training.critic_init_from_reward is True
    assert critic_from_reward.raw["critic_init_from_reward"] is True and critic_from_reward.overrides == []
    path = write_pipeline(tmp_path, [sft, reward, {**ppo, "sft_adapter_path": "reward"}])
    with pytest.raises(RecipeError, match=r"stage 'ppo'.*stage 'reward' trains a reward model, not a policy"):
        load_pipeline(path)


def test_ewc_anchors_each_stage_at_the_previous_policy_and_chains_the_fisher(tmp_path):
    ewc = {"ewc_lambda": 0.5, "ewc_fisher_samples": 4}
    path = write_pipeline(tmp_path, [{**DPO, **ewc}, KTO, {**PPO, **ewc}, {**DPO, "name": "dpo2", **ewc}])
    dpo, kto, ppo, dpo2 = load_pipeline(path).stages
    out = tmp_path / "out"
    # the first stage anchors at the base and saves its Fisher for the next one
    assert dpo.recipe.training.ewc_anchor_adapter is None and dpo.recipe.training.ewc_save_fisher is True
    assert kto.recipe.training.ewc_anchor_adapter is None  # no EWC in this stage
    # ppo: anchored at kto (the previous policy), which has no Fisher to pass on
    assert ppo.recipe.training.ewc_anchor_adapter == str(out / "kto") and ppo.recipe.training.ewc_fisher_path is None
    # dpo2: anchored at ppo and online EWC with ppo's Fisher
    assert dpo2.recipe.training.ewc_anchor_adapter == str(out / "ppo")
    assert dpo2.raw["ewc_fisher_path"] == str(out / "ppo" / "ewc_fisher.safetensors")
    assert dpo2.references == {"ewc_anchor_adapter": "ppo", "ewc_fisher_path": "ppo"}


def test_a_plain_recipe_loader_points_a_pipeline_to_trl_ext_train(tmp_path):
    with pytest.raises(RecipeError, match=r"is a pipeline \(it has stages:\); run it with `trl-ext train"):
        load_recipe(write_pipeline(tmp_path, [DPO]))


def test_a_pipeline_runs_its_stages_in_order_each_from_its_own_recipe(tmp_path, launcher, capsys):
    path = write_pipeline(tmp_path, [DPO, KTO, PPO])
    assert pipeline_cli.train_cli([str(path), "--max_steps", "1"]) == 0
    assert [name for name, _ in launcher.launched] == ["dpo", "kto", "ppo"]
    assert all(overrides == ["--max_steps", "1"] for _, overrides in launcher.launched)
    stage_recipe = load_recipe(tmp_path / "out" / "kto" / "stage_recipe.yaml")
    assert stage_recipe.method == "kto" and stage_recipe.training.output_dir == str(tmp_path / "out" / "kto")
    out = capsys.readouterr().out
    for name in ("dpo", "kto", "ppo"):
        assert f"{tmp_path / 'out' / name}  (complete)" in out


def test_a_pipeline_killed_during_stage_2_resumes_at_stage_2(tmp_path, monkeypatch, capsys):
    path = write_pipeline(tmp_path, [DPO, KTO, PPO])
    killed = Launcher(fail={"kto": "killed after checkpoint-2"})
    monkeypatch.setattr(pipeline_cli, "launch_stage", killed)
    assert pipeline_cli.train_cli([str(path)]) == 137
    assert [name for name, _ in killed.launched] == ["dpo", "kto"]
    assert "stage 'kto' (kto, 2 of 3) failed (exit code 137)" in capsys.readouterr().err

    assert pipeline_cli.train_cli([str(path)]) == 0  # the same command again
    assert [name for name, _ in killed.launched[2:]] == ["kto", "ppo"]
    assert killed.launched[2][1] == ["--resume_from_checkpoint", "true"] and killed.launched[3][1] == []
    out = capsys.readouterr().out
    assert "stage 'dpo' (dpo, 1 of 3) is complete, skipped" in out and "resuming from checkpoint-2" in out


def test_stage_runs_one_stage_once_its_inputs_are_complete(tmp_path, launcher, capsys):
    path = write_pipeline(tmp_path, [DPO, {**KTO, "ewc_anchor_adapter": "dpo"}, PPO])
    assert pipeline_cli.train_cli([str(path), "--stage", "kto"]) == 2
    assert "stage 'kto' reads the output of stage 'dpo'" in capsys.readouterr().err and launcher.launched == []

    assert pipeline_cli.train_cli([str(path), "--stage", "dpo"]) == 0
    assert pipeline_cli.train_cli([str(path), "--stage", "kto"]) == 0
    assert [name for name, _ in launcher.launched] == ["dpo", "kto"]
    assert (tmp_path / "out" / "kto" / STAGE_COMPLETE_FILE).is_file() and not (tmp_path / "out" / "ppo").exists()
    assert pipeline_cli.train_cli([str(path), "--stage", "kto"]) == 0  # asked by name: runs again
    assert [name for name, _ in launcher.launched] == ["dpo", "kto", "kto"]
    assert pipeline_cli.train_cli([str(path), "--stage", "kt"]) == 2
    assert "has no stage 'kt'; its stages are dpo, kto, ppo. Did you mean 'kto'?" in capsys.readouterr().err


def test_estimate_reports_the_peak_of_every_stage(tmp_path, capsys):
    path = write_pipeline(tmp_path, [DPO, KTO, PPO])
    assert pipeline_cli.estimate_cli([str(path)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().split(" ")[0] in ("dpo", "kto", "ppo")]
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [(n, n, "GiB", "fits") for n in ("dpo", "kto", "ppo")]
    peaks = {r[0]: float(r[2]) for r in rows}
    # each stage is estimated with its own method (printed to 0.01 GiB: PPO's critic and KTO's batch round alike)
    assert 0 < peaks["dpo"] < 24 and peaks["ppo"] >= peaks["kto"] and peaks["dpo"] != peaks["kto"]
    named = re.search(r"pipeline peak: ([\d.]+) GiB \(stage '(\w+)'\)", out)
    assert named and float(named.group(1)) == pytest.approx(max(peaks.values()), abs=0.005)
    assert peaks[named.group(2)] == max(peaks.values())  # the stage it names is (one of) the largest


def test_a_stage_predicted_not_to_fit_the_gpu_stops_the_pipeline_before_the_first_stage(
    tmp_path, launcher, monkeypatch, capsys
):
    import trl_ext.train

    def check_gpu_memory(recipe):
        if recipe.method == "ppo":
            raise RecipeError("This recipe is predicted to need 30.0 GiB of GPU memory but the GPU has 24.0 GiB.")

    monkeypatch.setattr(trl_ext.train, "check_gpu_memory", check_gpu_memory)
    path = write_pipeline(tmp_path, [DPO, KTO, PPO])
    assert pipeline_cli.train_cli([str(path)]) == 2
    assert "trl-ext: error: stage 'ppo': This recipe is predicted to need 30.0 GiB" in capsys.readouterr().err
    assert launcher.launched == []


def test_a_complete_stage_whose_keys_changed_is_skipped_with_a_warning(tmp_path, launcher, capsys):
    path = write_pipeline(tmp_path, [DPO, KTO])
    assert pipeline_cli.train_cli([str(path)]) == 0
    capsys.readouterr()
    assert pipeline_cli.train_cli([str(path)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert pipeline_cli.train_cli([str(path), "--beta", "0.3"]) == 0
    err = capsys.readouterr().err
    assert "stage 'dpo' ran with other keys" in err and "--stage dpo" in err
    assert [name for name, _ in launcher.launched] == ["dpo", "kto"]
