"""Faults every trainer guards against: non-finite steps, non-finite weights at save, and resuming from a checkpoint
that is not complete. `SharedTrainerMixin` wires them into every method."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from trl_ext.checkpoints import newest_complete_checkpoint

logger = logging.getLogger(__name__)

LIKELY_NONFINITE_CAUSES = (
    "a learning rate too high (learning_rate={lr}), fp16 overflow (use bf16, or fp32 on CPU), a bad row in the data "
    "(an empty or extreme sample), or a reward function returning huge values"
)


class TrainingStopped(RuntimeError):
    """The run cannot go on (repeated non-finite steps, a reward function that fails, a refused write).

    The message says what happened and what to do; `trl_ext.train` prints it as one line and exits with code 1.
    `quiet` is set on the processes that only follow another process's decision (they print nothing).
    """

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


def last_good_checkpoint(output_dir: str) -> str:
    """`checkpoint-20 (resume with --resume_from_checkpoint true)` or why there is none, for stop messages."""
    checkpoint, _ = newest_complete_checkpoint(output_dir)
    if checkpoint is None:
        return "none was saved (set save_strategy: steps and save_steps to keep some)"
    return f"{checkpoint} (continue from it with --resume_from_checkpoint {checkpoint})"


def nonfinite_weights(model) -> list[str]:
    """Names of the trainable (and LoRA) floating-point weights of `model` holding a NaN or an infinity."""
    model = getattr(model, "module", model)
    return [
        name
        for name, param in model.named_parameters()
        if (param.requires_grad or "lora_" in name)
        and param.is_floating_point()
        and not bool(torch.isfinite(param.detach()).all())
    ]


class NonFiniteGuard(TrainerCallback):
    """Skip optimizer steps whose loss or gradient is not finite; stop the run after `max_in_a_row` in a row.

    The trainer reports each micro-step's loss (`record_loss`); before the optimizer step the guard checks the loss
    and the gradients (after DDP's all-reduce, and the finding is reduced over processes so every rank decides the
    same). A bad step's gradients are dropped (set to `None`, so the optimizer leaves those weights and their moments
    untouched); the count is logged as `faults/skipped_steps`. With an active fp16 loss scaler, an overflowing gradient
    is the scaler's business (it skips the step and lowers its scale); only a non-finite loss counts then.

    Args:
        trainer (`transformers.Trainer`):
            The trainer guarded.
        max_in_a_row (`int`):
            Non-finite steps in a row after which `TrainingStopped` is raised.
    """

    def __init__(self, trainer, max_in_a_row: int):
        self.trainer = trainer
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.skipped = 0
        self._loss_ok: torch.Tensor | None = None

    def record_loss(self, loss: torch.Tensor) -> None:
        ok = torch.isfinite(loss.detach()).all()
        self._loss_ok = ok if self._loss_ok is None else self._loss_ok & ok

    def _step_is_bad(self, params) -> tuple[bool, bool]:
        """(loss not finite, gradient not finite), the same on every process."""
        device = params[0].device if params else self.trainer.accelerator.device
        loss_ok = self._loss_ok if self._loss_ok is not None else torch.tensor(True)
        grads_ok = torch.stack([torch.isfinite(p.grad).all() for p in params]).all() if params else torch.tensor(True)
        flags = torch.stack([~loss_ok.to(device), ~grads_ok.to(device)]).float()
        if self.trainer.accelerator.num_processes > 1:
            flags = self.trainer.accelerator.reduce(flags, reduction="sum")
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        params = [p for p in trainer.model.parameters() if p.grad is not None]
        bad_loss, bad_grad = self._step_is_bad(params)
        self._loss_ok = None
        scaler = trainer.accelerator.scaler
        if scaler is not None and scaler.is_enabled():
            bad_grad = False  # the loss scaler skips overflowing steps itself and lowers its scale
        if not (bad_loss or bad_grad):
            self.in_a_row = 0
            return
        for param in params:
            param.grad = None  # the optimizer skips parameters without a gradient: no update, moments untouched
        self.skipped += 1
        self.in_a_row += 1
        what = "loss" if bad_loss else "gradient"
        logger.warning(
            "step %d: non-finite %s, optimizer step skipped (%d in a row; the run stops at %d)",
            state.global_step + 1,
            what,
            self.in_a_row,
            self.max_in_a_row,
        )
        if self.in_a_row >= self.max_in_a_row:
            raise TrainingStopped(
                f"stopped at step {state.global_step + 1} of {state.max_steps}: {self.in_a_row} optimizer steps in a "
                f"row had a non-finite loss or gradient (each was skipped; max_nonfinite_steps={self.max_in_a_row}). "
                f"Likely causes: {LIKELY_NONFINITE_CAUSES.format(lr=args.learning_rate)}. No result was saved; the "
                f"last good checkpoint: {last_good_checkpoint(args.output_dir)}."
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.skipped and logs is not None and not any(k.startswith("eval_") for k in logs):
            logs["faults/skipped_steps"] = self.skipped

    def on_train_begin(self, args, state, control, **kwargs):
        resumed = getattr(self.trainer, "_resumed_from", None)
        if resumed is not None:
            self.trainer.accelerator.print(
                f"Resuming from {Path(resumed).name} (step {state.global_step} of {state.max_steps})"
            )


class RolloutBoundarySaves(TrainerCallback):
    """Online methods (GRPO, PPO) save checkpoints only where a rollout ends.

    A rollout is used for `steps_per_rollout` optimizer steps (`num_iterations * steps_per_generation` micro-steps);
    a checkpoint in the middle would resume with the rest of that rollout lost and every later rollout shifted. A
    save that falls inside a rollout moves to the rollout's last step (the last step of training saves as usual).

    Args:
        steps_per_rollout (`int`):
            Optimizer steps between two rollouts.
    """

    def __init__(self, steps_per_rollout: int):
        self.steps_per_rollout = steps_per_rollout
        self._deferred = False

    def on_step_end(self, args, state, control, **kwargs):
        at_boundary = state.global_step % self.steps_per_rollout == 0 or state.global_step >= state.max_steps
        if control.should_save and not at_boundary:
            if not self._deferred:
                logger.info(
                    "checkpoint of step %d moves to the end of its rollout (every %d steps)",
                    state.global_step,
                    self.steps_per_rollout,
                )
            control.should_save = False
            self._deferred = True
        elif self._deferred and at_boundary:
            control.should_save = True
            self._deferred = False
