"""Scale-out stays real: every method runs under two-process DDP on CPU (gloo) and both ranks end with identical
trained weights (actor adapter; critic adapter, model and value head for PPO)."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import RECIPES, free_port, run_command

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.is_available(), reason="checks two-process DDP over gloo on CPU"),
]

#: Runs `trl_ext.train.run` on a recipe, then every rank writes its own trained tensors.
DRIVER = """
import os, sys
from safetensors.torch import save_file
from trl_ext.recipe import load_recipe
from trl_ext.runtime import apply_runtime
from trl_ext.train import run

recipe = apply_runtime(load_recipe(sys.argv[1], sys.argv[2:]))
trainer = run(recipe)
model = trainer.accelerator.unwrap_model(trainer.model)
state = {
    n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if "lora_" in n or "value_head" in n
}
rank = trainer.accelerator.process_index
save_file(state, os.path.join(recipe.training.output_dir, f"rank{rank}.safetensors"))  # run() ended the group
sys.stdout.flush()
os._exit(0)
"""

SHORT = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1"]
PPO = ["--num_ppo_epochs", "1", "--num_mini_batches", "1", "--max_completion_length", "8"]
CASES = {
    "dpo": ("dpo.yaml", []),
    "kto": ("kto.yaml", []),
    "grpo": ("grpo.yaml", ["--num_generations", "4", "--max_completion_length", "8"]),
    "ppo-adapter-critic": ("ppo.yaml", [*PPO, "--critic", "adapter"]),
    "ppo-shared-critic": ("ppo.yaml", [*PPO, "--critic", "shared"]),
    "ppo-model-critic": ("ppo.yaml", [*PPO, "--critic", "model", "--critic_model_name_or_path", "builtin:tiny-chat"]),
    "dpo-ewc": ("dpo-ewc.yaml", ["--ewc_fisher_samples", "16", "--ewc_fisher_max_length", "64"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_process_ddp_ends_with_identical_weights_on_both_ranks(case, tmp_path):
    from safetensors.torch import load_file

    recipe, overrides = CASES[case]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "out"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu"]
    launch += ["--main_process_port", str(free_port())]
    proc = run_command(
        [*launch, str(driver), str(RECIPES / "quickstart" / recipe), "--output_dir", str(out), *SHORT, *overrides],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rank0, rank1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between the ranks"
    assert (out / "adapter_model.safetensors").is_file()
    if case.startswith("ppo"):
        assert (out / "critic" / "value_head.safetensors").is_file()
        assert any("value_head" in name for name in rank0)
