"""One reward-function policy for the online methods (GRPO, PPO), and checkpoints only at rollout boundaries.

The policy:

- A reward function that raises stops the run with a message naming the function, the sample (its index in this
  process's rollout) and the start of the completion, after saving a resumable checkpoint of the last finished step.
- A reward that is NaN or inf is an error in the same way, unless `nonfinite_rewards: drop`: then it is treated as
  `None` and counted (`faults/nonfinite_rewards`). A value that is not a number is always an error.
- `None` keeps TRL's meaning, "this function does not apply to this sample" (multi-task rewards). A completion that
  no function scores is dropped (advantage 0) and counted (`faults/unscored_completions`); a rollout in which none is
  scored is a loud warning, and `max_unscored_batches` of them in a row stop the run (after saving a checkpoint).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn
from trl.trainer.utils import is_async_callable

from trl_ext.checkpoints import checkpoint_problem
from trl_ext.configs.faults import FaultArguments
from trl_ext.rewards.completions import completion_text
from trl_ext.trainers.guards import (
    LIKELY_NONFINITE_CAUSES,
    RolloutBoundarySaves,
    TrainingStopped,
    last_good_checkpoint,
)

logger = logging.getLogger(__name__)


def _start(completion, length: int = 60) -> str:
    try:
        text = completion_text(completion)
    except TypeError:
        text = str(completion)
    return repr(text[:length] + ("..." if len(text) > length else ""))


class GuardedReward:
    """A reward function under the policy: exceptions and invalid values are recorded, not raised, so that every
    process reaches the rewards' all-gather; the trainer raises on every process right after it.

    Args:
        func (`Callable`):
            The reward function, called as TRL calls it (`prompts=`, `completions=`, ..., keyword arguments).
        name (`str`):
            Its name in TRL's logs.
        nonfinite (`str`):
            `error` or `drop` (`FaultArguments.nonfinite_rewards`).
    """

    def __init__(self, func, name: str, nonfinite: str = "error"):
        self.func = func
        self.__name__ = name
        self.nonfinite = nonfinite
        self.error: str | None = None
        self.dropped = 0

    def _failing_sample(self, completions, kwargs) -> int | None:
        """Call the function one sample at a time to find the first one it fails on."""
        n = len(completions)
        for i in range(n):
            one = {k: v[i : i + 1] if isinstance(v, list) and len(v) == n else v for k, v in kwargs.items()}
            try:
                self.func(completions=completions[i : i + 1], **one)
            except Exception:
                return i
        return None

    def __call__(self, completions, **kwargs):
        try:
            rewards = list(self.func(completions=completions, **kwargs))
        except Exception as err:
            i = self._failing_sample(completions, kwargs)
            where = f"on sample {i} (completion starts {_start(completions[i])})" if i is not None else "on the batch"
            self.error = f"reward function {self.__name__} raised {type(err).__name__}: {err} {where}"
            return [None] * len(completions)
        for i, reward in enumerate(rewards):
            if reward is None:
                continue
            try:
                value = float(reward)
            except (TypeError, ValueError):
                self.error = (
                    f"reward function {self.__name__} returned {reward!r}, not a number, for sample {i} (completion "
                    f"starts {_start(completions[i])}); return a float, or None where the function does not apply"
                )
                return [None] * len(completions)
            if math.isfinite(value):
                continue
            if self.nonfinite == "drop":
                rewards[i] = None
                self.dropped += 1
            elif self.error is None:
                self.error = (
                    f"reward function {self.__name__} returned {value} for sample {i} (completion starts "
                    f"{_start(completions[i])}); fix the function, or set nonfinite_rewards: drop to drop such values"
                )
        return rewards


class RewardPolicyMixin:
    """The reward policy of the module docstring for `GRPOTrainer` subclasses; place it before TRL's trainer.

    Also saves checkpoints only where a rollout ends (`RolloutBoundarySaves`), so a resumed run replays whole
    rollouts exactly as the uninterrupted run does.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        config = self.args
        policy = config.nonfinite_rewards if isinstance(config, FaultArguments) else "error"
        self._max_unscored = config.max_unscored_batches if isinstance(config, FaultArguments) else 3
        self.reward_funcs = [
            f if isinstance(f, nn.Module) or not callable(f) or is_async_callable(f) else GuardedReward(f, name, policy)
            for f, name in zip(self.reward_funcs, self.reward_func_names, strict=True)
        ]
        self._unscored_in_a_row = 0
        self._unscored_local: torch.Tensor | None = None
        micro_steps = config.steps_per_generation * self.num_iterations
        if micro_steps % config.gradient_accumulation_steps == 0 and micro_steps > config.gradient_accumulation_steps:
            self.add_callback(RolloutBoundarySaves(micro_steps // config.gradient_accumulation_steps))

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # gathered, (N, F)
        guarded = [f for f in self.reward_funcs if isinstance(f, GuardedReward)]
        error = next((f.error for f in guarded if f.error), None)
        dropped = sum(f.dropped for f in guarded)
        for f in guarded:
            f.error, f.dropped = None, 0
        flags = torch.tensor([float(error is not None), float(dropped)], device=rewards.device)
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        if flags[0] > 0:
            self._stop_after_checkpoint(error or "a reward function failed on another process", quiet=error is None)
        mode = "train" if self.model.training else "eval"
        unscored = torch.isnan(rewards).all(dim=1)
        n = len(prompts)
        self._unscored_local = unscored[self.accelerator.process_index * n :][:n]
        self._metrics[mode]["faults/nonfinite_rewards"].append(float(flags[1]))
        self._metrics[mode]["faults/unscored_completions"].append(float(unscored.sum()))
        if bool(unscored.all()):
            self._unscored_in_a_row += 1
            logger.warning(
                "No reward function scored any completion of this rollout (all returned None): it trains nothing "
                "(%d rollouts in a row; the run stops at %d).",
                self._unscored_in_a_row,
                self._max_unscored,
            )
            if self._unscored_in_a_row >= self._max_unscored:
                self._stop_after_checkpoint(
                    f"no reward function scored any completion in {self._unscored_in_a_row} rollouts in a row "
                    f"(max_unscored_batches={self._max_unscored}): check that reward_funcs fit the dataset's columns "
                    "and return a number, not None, for the samples they apply to"
                )
        else:
            self._unscored_in_a_row = 0
        return rewards

    def _drop_unscored(self, advantages: torch.Tensor) -> torch.Tensor:
        """Zero the advantages of this process's completions that no reward function scored."""
        if self._unscored_local is None or not bool(self._unscored_local.any()):
            return advantages
        keep = (~self._unscored_local).to(advantages.device, advantages.dtype)
        return advantages * keep.view(-1, *([1] * (advantages.dim() - 1)))

    def _generate_and_score_completions(self, inputs):
        try:
            output = super()._generate_and_score_completions(inputs)
        except RuntimeError as err:
            if "probability tensor contains" not in str(err):
                raise
            raise TrainingStopped(
                f"generation at step {self.state.global_step + 1} failed: the policy's next-token probabilities are "
                f"not finite ({err}). Likely causes: {LIKELY_NONFINITE_CAUSES.format(lr=self.args.learning_rate)}. "
                f"The last good checkpoint: {last_good_checkpoint(self.args.output_dir)}."
            ) from err
        output["advantages"] = self._drop_unscored(output["advantages"])
        return output

    def _stop_after_checkpoint(self, message: str, quiet: bool = False):
        """Save a resumable checkpoint of the last finished step (if training and none is there yet), then raise."""
        step = self.state.global_step
        checkpoint = Path(self.args.output_dir) / f"checkpoint-{step}"
        if not self.model.training or step == 0:
            raise TrainingStopped(f"{message}. Nothing was trained yet, so no checkpoint was saved.", quiet)
        if checkpoint_problem(checkpoint) is not None:
            # Transformers has no public "save a checkpoint now": `_save_checkpoint` writes the model, optimizer,
            # scheduler, RNG and trainer state exactly as a scheduled save does.
            # `test_transformers_save_checkpoint_keeps_the_parameters_the_reward_policy_calls` fails if it is renamed
            # or changes its parameters.
            self._save_checkpoint(self.model_wrapped, trial=None)
        raise TrainingStopped(
            f"{message}. Saved {checkpoint} (step {step}); fix the reward, then continue with "
            "--resume_from_checkpoint true.",
            quiet,
        )
