"""EWC under 2-process DDP on CPU (gloo): the penalty is identical on every rank."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest


def _worker(argv: list[str]) -> None:
    """Run inside ``accelerate launch``: train the recipe, then dump this rank's EWC logs and LoRA checksum."""
    import torch

    from trl_ext.recipe import load_recipe
    from trl_ext.train import build_trainer

    recipe = load_recipe(argv[0], argv[1:])
    trainer = build_trainer(recipe)
    trainer.train()
    rank = trainer.accelerator.process_index
    logs = [
        {
            k: v
            for k, v in h.items()
            if (k.startswith(("ewc/", "forgetting/")) or k == "step") and k != "ewc/fisher_seconds"
        }  # wall time differs per rank
        for h in trainer.state.log_history
        if "ewc/penalty" in h
    ]
    lora = sum(float(p.double().sum()) for n, p in trainer.model.named_parameters() if "lora_" in n)
    fisher = sum(float(t.double().sum()) for t in trainer.ewc_fisher.tensors.values())
    out = Path(recipe.training.output_dir) / f"rank{rank}.json"
    out.write_text(
        json.dumps({"world": trainer.accelerator.num_processes, "logs": logs, "lora_sum": lora, "fisher_sum": fisher})
    )
    torch.distributed.barrier() if torch.distributed.is_initialized() else None


@pytest.mark.slow
def test_ddp_two_processes_log_the_same_penalty_on_both_ranks(tmp_path):
    from conftest import REPO, free_port, run_command

    out = tmp_path / "ddp"
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--multi_gpu",
        "--main_process_port",
        str(free_port()),
    ]
    proc = run_command(
        [
            *launch,
            str(Path(__file__).resolve()),
            str(REPO / "recipes" / "quickstart" / "dpo-ewc.yaml"),
            "--max_steps",
            "3",
            "--logging_steps",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--ewc_fisher_samples",
            "16",
            "--forgetting_eval_steps",
            "1",
            "--forgetting_eval_samples",
            "8",
            "--output_dir",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert [h["step"] for h in ranks[0]["logs"]] == [1, 2, 3]
    assert ranks[0]["logs"] == ranks[1]["logs"]  # every logged value, bit for bit
    assert ranks[0]["logs"][-1]["ewc/penalty"] > 0
    assert ranks[0]["fisher_sum"] == ranks[1]["fisher_sum"] > 0
    assert ranks[0]["lora_sum"] == ranks[1]["lora_sum"]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    _worker(sys.argv[1:])
    # as trl_ext.train.main does after a multi-process run: every rank has written its file and met at the
    # barrier; skip interpreter teardown, where the process group's destructor can block on an exited peer
    sys.stdout.flush()
    os._exit(0)
