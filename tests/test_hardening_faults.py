"""Faults that must not lose or corrupt work: non-finite steps, half-written checkpoints, bad rewards, full disks."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import RECIPES
from trl_ext.checkpoints import (
    atomic_path,
    checkpoint_problem,
    disk_room_problem,
    list_checkpoints,
    newest_complete_checkpoint,
    resolve_resume_checkpoint,
    write_error_message,
)
from trl_ext.recipe import RecipeError, load_recipe


def write_checkpoint(output_dir: Path, step: int, complete: bool = True, truncate: bool = False) -> Path:
    """A checkpoint directory as transformers writes it: weights first, `trainer_state.json` last."""
    from safetensors.torch import save_file

    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.ones(64)}, str(path / "adapter_model.safetensors"))
    if truncate:
        data = (path / "adapter_model.safetensors").read_bytes()
        (path / "adapter_model.safetensors").write_bytes(data[:-10])
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


# ----------------------------------------------------------------------------------------------- checkpoints
def test_newest_complete_checkpoint_skips_half_written_ones_and_says_why(tmp_path):
    write_checkpoint(tmp_path, 9)
    write_checkpoint(tmp_path, 10, truncate=True)
    write_checkpoint(tmp_path, 35, complete=False)
    (tmp_path / "checkpoint-40").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-9",
        "checkpoint-10",
        "checkpoint-35",
        "checkpoint-40",
    ]
    newest, skipped = newest_complete_checkpoint(tmp_path)
    assert newest == tmp_path / "checkpoint-9"
    assert [(p.name, why) for p, why in skipped] == [
        ("checkpoint-40", "no trainer_state.json: its save was interrupted"),
        ("checkpoint-35", "no trainer_state.json: its save was interrupted"),
        ("checkpoint-10", "adapter_model.safetensors is truncated (318 of 328 bytes)"),  # 64 fp32 + header,
    ]
    (tmp_path / "checkpoint-9" / "trainer_state.json").write_text('{"global_step": 9, "log_hi')
    assert checkpoint_problem(tmp_path / "checkpoint-9") == "trainer_state.json is unreadable: its save was interrupted"


def test_resume_true_picks_the_newest_complete_checkpoint_and_names_the_skipped(tmp_path):
    write_checkpoint(tmp_path, 4)
    write_checkpoint(tmp_path, 8, complete=False)
    said = []
    assert resolve_resume_checkpoint(str(tmp_path), "true", say=said.append) == str(tmp_path / "checkpoint-4")
    assert said == ["Skipping incomplete checkpoints: checkpoint-8 (no trainer_state.json: its save was interrupted)"]
    assert resolve_resume_checkpoint(str(tmp_path), False) is None
    with pytest.raises(ValueError, match=r"cannot resume from .*checkpoint-8: no trainer_state.json.* newest complete"):
        resolve_resume_checkpoint(str(tmp_path), str(tmp_path / "checkpoint-8"))
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        resolve_resume_checkpoint(str(tmp_path), True, say=said.append)


def test_fresh_run_refusal_lists_checkpoints_in_numeric_order_and_never_suggests_a_broken_one(tmp_path):
    from trl_ext.train import check_output_dir

    recipe = load_recipe(str(RECIPES / "quickstart" / "dpo.yaml"), ["--output_dir", str(tmp_path)])
    write_checkpoint(tmp_path, 9)
    write_checkpoint(tmp_path, 10, complete=False)
    with pytest.raises(RecipeError) as refused:
        check_output_dir(recipe)
    message = str(refused.value)
    assert "(checkpoint-9, checkpoint-10)" in message
    assert "Resume from checkpoint-9, the newest complete one; incomplete, skipped: checkpoint-10" in message

    (tmp_path / "checkpoint-9" / "trainer_state.json").unlink()
    with pytest.raises(RecipeError) as refused:
        check_output_dir(recipe)
    assert "none of them complete" in str(refused.value) and "--resume_from_checkpoint" not in str(refused.value)

    resuming = load_recipe(
        str(RECIPES / "quickstart" / "dpo.yaml"), ["--output_dir", str(tmp_path), "--resume_from_checkpoint", "true"]
    )
    with pytest.raises(RecipeError, match="holds no complete checkpoint"):
        check_output_dir(resuming)


# ----------------------------------------------------------------------------------------------- atomic writes
def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "value_head.safetensors"
    target.write_text("old")
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]


def test_fisher_and_critic_files_are_written_through_a_rename(tmp_path, monkeypatch):
    """A write that fails half-way (disk full) leaves no file at the Fisher's path."""
    import safetensors.torch

    from trl_ext.ewc.fisher import FisherEstimate
    from trl_ext.ewc.io import save_fisher

    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 10)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    estimate = FisherEstimate(tensors={"m": torch.ones(2)}, mode="full", fisher_type="true", n_samples=1, n_tokens=1)
    path = tmp_path / "fisher.safetensors"
    with pytest.raises(OSError):
        save_fisher(path, estimate, {"base_model": "x"})
    assert not path.exists() and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- disk room
def _fake_trainer(output_dir, save_model, **args):
    accelerator = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    defaults = dict(output_dir=str(output_dir), save_only_model=False, max_steps=10, save_strategy="steps")
    defaults.update(save_steps=2, save_total_limit=None, num_train_epochs=1, world_size=1)
    defaults.update(per_device_train_batch_size=1, gradient_accumulation_steps=1)
    model = torch.nn.Linear(512, 512)  # 262,656 trainable fp32 weights: 1.0 MiB, Adam's moments 2.0 MiB
    return SimpleNamespace(
        model=model,
        args=SimpleNamespace(**{**defaults, **args}),
        accelerator=accelerator,
        save_model=save_model,
        save_state=lambda: None,
        train_dataset=list(range(10)),
    )


def test_a_failed_final_save_leaves_the_previous_result_whole(tmp_path):
    from trl_ext.train import save_result

    (tmp_path / "adapter_model.safetensors").write_text("previous result")

    def fills_the_disk(output_dir):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "adapter_model.safetensors").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        save_result(_fake_trainer(tmp_path, fills_the_disk), str(tmp_path))
    assert (tmp_path / "adapter_model.safetensors").read_text() == "previous result"

    def saves(output_dir):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "adapter_model.safetensors").write_text("new result")

    save_result(_fake_trainer(tmp_path, saves), str(tmp_path))
    assert (tmp_path / "adapter_model.safetensors").read_text() == "new result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_model.safetensors"]


def test_disk_room_counts_the_checkpoints_the_recipe_keeps(tmp_path, monkeypatch):
    import shutil

    from trl_ext.train import check_disk_room

    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=0, free=12 * 2**20))
    # 5 saves of (1.0 MiB weights + 2.0 MiB moments + 1 MiB) and the result: 6 x 4.0 MiB x 1.1 = 26.4 MiB > 12 MiB
    with pytest.raises(RecipeError, match=r"has 12.0 MiB free, .* about 26.4 MiB \(5 checkpoints of 4.0 MiB and the"):
        check_disk_room(_fake_trainer(tmp_path, None))
    # save_total_limit 1 keeps at most 2 at a time: 3 x 4.0 x 1.1 = 13.2 MiB; save_only_model drops the moments
    with pytest.raises(RecipeError, match=r"about 13.2 MiB \(2 checkpoints of 4.0 MiB"):
        check_disk_room(_fake_trainer(tmp_path, None, save_total_limit=1))
    assert check_disk_room(_fake_trainer(tmp_path, None, save_total_limit=1, save_only_model=True)) == 2 * 2**20 + 2048


def test_disk_room_refuses_too_little_space_and_an_unwritable_dir(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9, free=5 * 2**20))
    problem = disk_room_problem(tmp_path, 50 * 2**20, "4 checkpoints of 12.0 MiB and the result")
    assert problem == (
        f"output_dir {tmp_path} has 5.0 MiB free, but this run will write about 50.0 MiB (4 checkpoints of 12.0 MiB "
        "and the result). Free some space, set save_total_limit (or a larger save_steps), or choose another "
        "--output_dir."
    )
    assert disk_room_problem(tmp_path, 2**20, "the result") is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "is not writable" in disk_room_problem(blocker / "out", 1, "the result")


def test_a_disk_full_error_names_the_cause_and_the_checkpoint_to_resume(tmp_path):
    write_checkpoint(tmp_path, 20)
    write_checkpoint(tmp_path, 30, complete=False)
    err = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoint-30" / "optimizer.pt"))
    message = write_error_message(err, tmp_path)
    assert message.startswith(f"writing to {tmp_path / 'checkpoint-30' / 'optimizer.pt'} failed: no space left")
    assert "Incomplete checkpoints (skipped on resume): checkpoint-30" in message
    assert "newest complete checkpoint is checkpoint-20" in message
    assert write_error_message(OSError(errno.ENOENT, "gone"), tmp_path) is None


# ----------------------------------------------------------------------------------------------- non-finite guard
def _guarded(max_in_a_row=3):
    from trl_ext.trainers.guards import NonFiniteGuard

    model = torch.nn.Linear(4, 2)
    trainer = SimpleNamespace(model=model, accelerator=SimpleNamespace(num_processes=1, scaler=None, device="cpu"))
    return model, NonFiniteGuard(trainer, max_in_a_row)


def _step(model, guard, optimizer, loss_value):
    args = SimpleNamespace(learning_rate=1e4, output_dir="/nonexistent")
    state = SimpleNamespace(global_step=0, max_steps=10)
    loss = model(torch.ones(1, 4)).sum() * loss_value
    loss.backward()
    guard.record_loss(loss)
    guard.on_pre_optimizer_step(args, state, None)
    optimizer.step()
    optimizer.zero_grad()


def test_nonfinite_guard_skips_the_update_and_stops_after_n_in_a_row():
    from trl_ext.trainers.guards import TrainingStopped

    model, guard = _guarded(max_in_a_row=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    _step(model, guard, optimizer, 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    moments = [optimizer.state[p]["exp_avg"].clone() for p in model.parameters()]
    _step(model, guard, optimizer, float("nan"))
    _step(model, guard, optimizer, float("inf"))
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))  # no update
    assert all(torch.equal(m, optimizer.state[p]["exp_avg"]) for m, p in zip(moments, model.parameters()))
    assert (guard.skipped, guard.in_a_row) == (2, 2)
    _step(model, guard, optimizer, 1.0)  # a good step resets the run of bad ones
    assert (guard.skipped, guard.in_a_row) == (2, 0)
    _step(model, guard, optimizer, float("nan"))
    _step(model, guard, optimizer, float("nan"))
    with pytest.raises(TrainingStopped) as stopped:
        _step(model, guard, optimizer, float("nan"))
    message = str(stopped.value)
    assert "3 optimizer steps in a row had a non-finite loss or gradient" in message
    assert "learning rate too high (learning_rate=10000.0)" in message and "fp16 overflow" in message
    assert "last good checkpoint: none was saved" in message


def test_a_model_with_a_nonfinite_weight_is_named():
    from trl_ext.trainers.guards import nonfinite_weights

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert nonfinite_weights(model) == []
    with torch.no_grad():
        model[1].bias[0] = math.nan
    assert nonfinite_weights(model) == ["1.bias"]


# ----------------------------------------------------------------------------------------------- reward policy
def test_a_raising_reward_is_named_with_the_failing_sample_and_the_completion_start():
    from trl_ext.trainers.reward_policy import GuardedReward

    def picky(completions, **kwargs):
        return [1.0 / ("!" not in c) for c in completions]  # ZeroDivisionError on a completion with "!"

    reward = GuardedReward(picky, "picky")
    completions = ["fine", "also fine", "boom! " + "x" * 100]
    assert reward(prompts=["p"] * 3, completions=completions, completion_ids=[[1]] * 3) == [None, None, None]
    assert reward.error == (
        "reward function picky raised ZeroDivisionError: float division by zero on sample 2 (completion starts "
        f"'boom! {'x' * 54}...')"
    )


def test_nonfinite_and_non_numeric_rewards_are_errors_unless_dropped():
    from trl_ext.trainers.reward_policy import GuardedReward

    values = iter([[1.0, math.nan, None], [math.inf, 0.5, None], ["high", 1.0, 1.0]])
    strict = GuardedReward(lambda completions, **kw: next(values), "r")
    strict(completions=["a", "b", "c"])
    assert strict.error.startswith("reward function r returned nan for sample 1 (completion starts 'b')")
    assert "set nonfinite_rewards: drop" in strict.error
    dropping = GuardedReward(lambda completions, **kw: next(values), "r", nonfinite="drop")
    assert dropping(completions=["a", "b", "c"]) == [None, 0.5, None]
    assert (dropping.error, dropping.dropped) == (None, 1)
    dropping(completions=["a", "b", "c"])
    assert dropping.error.startswith("reward function r returned 'high', not a number, for sample 0")


def test_fault_keys_are_recipe_keys_with_checked_values(tmp_path):
    recipe = load_recipe(
        str(RECIPES / "quickstart" / "grpo.yaml"),
        ["--output_dir", str(tmp_path), "--max_nonfinite_steps", "2", "--nonfinite_rewards", "drop"],
    )
    assert (recipe.training.max_nonfinite_steps, recipe.training.nonfinite_rewards) == (2, "drop")
    assert recipe.training.max_unscored_batches == 3
    with pytest.raises(RecipeError, match="max_nonfinite_steps must be a positive integer; got 0"):
        load_recipe(
            str(RECIPES / "quickstart" / "dpo.yaml"), ["--output_dir", str(tmp_path), "--max_nonfinite_steps", "0"]
        )


def test_transformers_save_checkpoint_keeps_the_parameters_the_reward_policy_calls():
    """The reward policy saves a resumable checkpoint through `Trainer._save_checkpoint(model, trial)`, the only way
    to write one on demand; this fails when transformers renames it or changes its parameters."""
    import inspect

    import transformers

    assert list(inspect.signature(transformers.Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]


# ----------------------------------------------------------------------------------------------- end to end
GRPO_SHORT = ["--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "8"]
PPO_SHORT = ["--per_device_train_batch_size", "4", "--num_ppo_epochs", "1", "--num_mini_batches", "1"]
PPO_SHORT += ["--max_completion_length", "8"]


def _build(recipe_name, output_dir, *overrides):
    from trl_ext.train import build_trainer

    args = ["--output_dir", str(output_dir), "--logging_steps", "1", *overrides]
    recipe = load_recipe(str(RECIPES / "quickstart" / recipe_name), args)
    return build_trainer(recipe)


@pytest.mark.slow
def test_dpo_at_an_exploding_learning_rate_stops_nonzero_and_saves_no_result(tmp_path, capsys):
    from trl_ext.train import main

    out = tmp_path / "dpo"
    # On this CPU stack, learning_rate 1e4 kills the model without a NaN (grad_norm 0); 1e20 gives the NaN loss and
    # gradient of the report (loss logged as 0, grad_norm nan) from step 2 on.
    code = main(
        ["--config", str(RECIPES / "quickstart" / "dpo.yaml"), "--output_dir", str(out), "--learning_rate", "1e20"]
        + ["--max_steps", "8", "--max_nonfinite_steps", "2", "--save_strategy", "steps", "--save_steps", "1"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "trl-ext: training stopped: stopped at step 3 of 8: 2 optimizer steps in a row had a non-finite" in err
    assert f"the last good checkpoint: {out / 'checkpoint-2'} (continue from it" in err
    assert not (out / "adapter_model.safetensors").exists()
    # step 2 was skipped (its checkpoint holds step 1's weights); the run stopped before step 3 saved anything
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    from safetensors.torch import load_file

    for checkpoint in list_checkpoints(out):
        saved = load_file(str(checkpoint / "adapter_model.safetensors"))
        assert len(saved) == 28 and all(bool(torch.isfinite(t).all()) for t in saved.values())


@pytest.mark.slow
def test_reward_exception_in_grpo_saves_a_checkpoint_that_resumes(tmp_path):
    from trl_ext.trainers.guards import TrainingStopped

    out = tmp_path / "grpo"
    trainer = _build("grpo.yaml", out, *GRPO_SHORT, "--max_steps", "3")
    original = trainer.reward_funcs[0].func

    def fails_on_the_second_rollout(completions, **kwargs):
        if kwargs["trainer_state"].global_step >= 1:
            raise KeyError("answer")
        return original(completions=completions, **kwargs)

    trainer.reward_funcs[0].func = fails_on_the_second_rollout
    with pytest.raises(TrainingStopped) as stopped:
        trainer.train()
    message = str(stopped.value)
    assert message.startswith("reward function keyword_reward raised KeyError: 'answer' on sample 0 (completion")
    assert f"Saved {out / 'checkpoint-1'} (step 1)" in message and "--resume_from_checkpoint true" in message
    assert checkpoint_problem(out / "checkpoint-1") is None

    resumed = _build("grpo.yaml", out, *GRPO_SHORT, "--max_steps", "3", "--resume_from_checkpoint", "true")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3


@pytest.mark.slow
def test_ppo_nan_reward_stops_and_dropped_or_unscored_rewards_are_counted(tmp_path):
    from trl_ext.trainers.guards import TrainingStopped

    strict = _build("ppo.yaml", tmp_path / "strict", *PPO_SHORT, "--max_steps", "2")
    strict.reward_funcs[0].func = lambda completions, **kw: [math.nan] + [1.0] * (len(completions) - 1)
    with pytest.raises(TrainingStopped, match=r"keyword_reward returned nan for sample 0 .* Nothing was trained yet"):
        strict.train()

    dropping = _build("ppo.yaml", tmp_path / "drop", *PPO_SHORT, "--max_steps", "2", "--nonfinite_rewards", "drop")
    dropping.reward_funcs[0].func = lambda completions, **kw: [math.nan] + [1.0] * (len(completions) - 1)
    dropping.train()
    logs = [h for h in dropping.state.log_history if "faults/nonfinite_rewards" in h]
    assert [h["faults/nonfinite_rewards"] for h in logs] == [1.0, 1.0]
    assert [h["faults/unscored_completions"] for h in logs] == [1.0, 1.0]

    # PPO cannot leave a completion out of GAE: without the opt-in, an unscored completion stops the run at once
    unscored = _build("ppo.yaml", tmp_path / "none", *PPO_SHORT, "--max_steps", "4", "--max_unscored_batches", "2")
    unscored.reward_funcs[0].func = lambda completions, **kw: [None] * len(completions)
    with pytest.raises(TrainingStopped, match="completions of this rollout have no reward.*Nothing was trained yet"):
        unscored.train()
    assert unscored.state.global_step == 0


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_says_so_and_the_half_written_checkpoint_is_skipped(
    tmp_path, monkeypatch, capsys
):
    import transformers

    from trl_ext.train import check_output_dir, run
    from trl_ext.trainers.guards import TrainingStopped

    out = tmp_path / "dpo"
    saves = []

    def optimizer_save_fills_the_disk(self, output_dir):
        saves.append(output_dir)
        if len(saves) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", f"{output_dir}/optimizer.pt")

    monkeypatch.setattr(transformers.Trainer, "_save_optimizer_and_scheduler", optimizer_save_fills_the_disk)
    args = ["--output_dir", str(out), "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1"]
    recipe = load_recipe(str(RECIPES / "quickstart" / "dpo.yaml"), args)
    with pytest.raises(TrainingStopped) as stopped:
        run(recipe)
    message = str(stopped.value)
    assert message.startswith(f"writing to {out / 'checkpoint-2' / 'optimizer.pt'} failed: no space left on device.")
    assert "skipped on resume): checkpoint-2 (no trainer_state.json" in message
    assert "The newest complete checkpoint is checkpoint-1" in message
    with pytest.raises(RecipeError, match="Resume from checkpoint-1, the newest complete one; incomplete, skipped"):
        check_output_dir(recipe)

    monkeypatch.undo()  # room again: resuming skips the half-written checkpoint-2 and says so
    capsys.readouterr()
    trainer = run(load_recipe(str(RECIPES / "quickstart" / "dpo.yaml"), [*args, "--resume_from_checkpoint", "true"]))
    printed = capsys.readouterr().out
    assert "Skipping incomplete checkpoints: checkpoint-2 (no trainer_state.json: its save was interrupted)" in printed
    assert "Resuming from checkpoint-1 (step 1 of 3)" in printed
    assert trainer.state.global_step == 3 and (out / "adapter_model.safetensors").is_file()
