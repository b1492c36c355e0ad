"""Recipe keys of the fault policy every method shares: non-finite steps and reward functions that misbehave."""

from __future__ import annotations

from dataclasses import dataclass, field

INVALID_REWARD_POLICIES = ("error", "drop")


@dataclass
class FaultArguments:
    """What a run does when training goes numerically wrong or a reward function misbehaves (every method).

    Args:
        max_nonfinite_steps (`int`, *optional*, defaults to `5`):
            An optimizer step whose loss or gradient is NaN or infinite is skipped (no update, logged as
            `faults/skipped_steps`); after this many in a row the run stops with exit code 1, naming the likely
            causes and the newest complete checkpoint. A model with a non-finite weight is never saved.
        nonfinite_rewards (`str`, *optional*, defaults to `"error"`):
            A reward function that returns NaN or inf: `error` stops the run (after saving a resumable checkpoint)
            naming the function, the sample and the start of the completion; `drop` treats the value as "does not
            apply" (like `None`) and counts it in `faults/nonfinite_rewards`.
        max_unscored_batches (`int`, *optional*, defaults to `3`):
            A rollout in which no reward function scored any completion (all `None`) is a warning; after this many
            in a row the run stops (after saving a resumable checkpoint). Completions that no function scores are
            dropped (advantage 0) and counted in `faults/unscored_completions`.
    """

    max_nonfinite_steps: int = field(
        default=5, metadata={"help": "Non-finite optimizer steps in a row (each skipped) before the run stops."}
    )
    nonfinite_rewards: str = field(
        default="error",
        metadata={"help": "NaN/inf rewards: error (stop) or drop.", "choices": list(INVALID_REWARD_POLICIES)},
    )
    max_unscored_batches: int = field(
        default=3, metadata={"help": "Rollouts in a row with no scored completion before the run stops."}
    )

    def __post_init__(self):
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        for key in ("max_nonfinite_steps", "max_unscored_batches"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive integer; got {getattr(self, key)}.")
        if self.nonfinite_rewards not in INVALID_REWARD_POLICIES:
            raise ValueError(
                f"nonfinite_rewards must be one of {', '.join(INVALID_REWARD_POLICIES)}; "
                f"got {self.nonfinite_rewards!r}."
            )
