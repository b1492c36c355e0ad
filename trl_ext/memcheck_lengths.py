"""The length axis of a reduced trace: which recipe key `--lengths` sets, and what else scales with it.

Also which methods generate (`GENERATING_METHODS`), whose depth axis starts at 2 layers.
"""

from __future__ import annotations

#: The recipe key a reduced-length trace scales, per method (GRPO/PPO: the completion, and the prompt in proportion,
#: so that every token count of the step -- KV cache, training tokens, scored tokens -- scales with it).
LENGTH_KEYS = {"grpo": "max_completion_length", "ppo": "max_completion_length"}
#: Token counts of other passes, scaled in proportion (the EWC Fisher pass, the forgetting monitor's samples):
#: key -> the key that turns that pass on.
PROPORTIONAL_KEYS = {
    "ewc_fisher_max_length": "ewc_fisher_dataset",
    "forgetting_max_length": "forgetting_anchor_dataset",
}


#: Methods that generate: their no-grad passes (generation, scoring) hold one extra residual-stream tensor from the
#: second layer on (the embedding output stays referenced while the first layer runs), so their depth axis starts at 2
#: (traced on Qwen2.5-1.5B's architecture, 32 x 128-token prefill: 1, 2, 3 layers hold 333.6, 346.2, 346.2 MB of
#: activations at the generation peak).
GENERATING_METHODS = ("grpo", "ppo")


def length_key(recipe) -> str:
    """The recipe key `--lengths` sets: `max_completion_length` for GRPO/PPO, `max_length` otherwise."""
    return LENGTH_KEYS.get(recipe.method, "max_length")


def recipe_length(recipe, settings) -> int:
    """The recipe's own value of its `length_key`, as the estimator reads it (`settings`)."""
    return settings.completion_length if length_key(recipe) == "max_completion_length" else settings.max_length


def length_overrides(recipe, length: int) -> list[str]:
    """Overrides that trace `recipe` at `length` tokens: its length key, and the Fisher/monitor passes in proportion."""
    from trl_ext.memory import settings_from_recipe

    real = recipe_length(recipe, settings_from_recipe(recipe))
    out = [f"--{length_key(recipe)}", str(length)]
    for other, enabled_by in PROPORTIONAL_KEYS.items():
        value = getattr(recipe.training, other, None)
        if value and getattr(recipe.training, enabled_by, None):
            out += [f"--{other}", str(max(1, round(int(value) * length / real)))]
    return out


def point_inputs(recipe, length: int, prompt_length: int | None = None) -> tuple[list[str], int | None]:
    """Overrides and prompt length of a trace at `length` (GRPO/PPO prompts scale with the completion)."""
    from trl_ext.memory import settings_from_recipe

    s = settings_from_recipe(recipe, prompt_length=prompt_length)
    if length_key(recipe) == "max_completion_length":
        prompt_length = max(1, round(s.prompt_length * length / s.completion_length))
    return length_overrides(recipe, length), prompt_length
