"""Reward functions with TRL's signature ``f(prompts, completions, **kwargs) -> list[float | None]``.

Recipes name them in ``reward_funcs``: a TRL reward by name (``accuracy_reward``, ``think_format_reward``, ...) or any
dotted import path. A class (such as a reward that needs a corpus) is instantiated with the matching entry of
``reward_kwargs``, keyed by the full path or the class name.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

#: TRL's own reward functions, by the names its `trl grpo` script accepts.
TRL_REWARDS = ("accuracy_reward", "reasoning_accuracy_reward", "think_format_reward")


def completion_text(completion) -> str:
    """Text of a plain (``str``) or conversational (``[{"role": ..., "content": ...}]``) completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    raise TypeError(f"completion must be a string or a list of messages, got {type(completion).__name__}")


def resolve_reward_func(name: str):
    """Import the object a ``reward_funcs`` entry names (a function, a callable instance or a class)."""
    if name in TRL_REWARDS:
        return getattr(importlib.import_module("trl.rewards"), name)
    if "." not in name:
        raise ValueError(
            f"expected one of {', '.join(TRL_REWARDS)} or a dotted import path such as "
            "trl_ext.rewards.query_rewrite.QueryRewriteReward"
        )
    module_path, attr = name.rsplit(".", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like TRL's script: local modules of the working directory are importable
    module = importlib.import_module(module_path)
    if not hasattr(module, attr):
        raise AttributeError(f"module {module_path!r} has no attribute {attr!r}")
    return getattr(module, attr)


def load_reward_funcs(names: list[str] | None, reward_kwargs: dict[str, Any] | None = None) -> list:
    """Resolve ``reward_funcs`` entries to callables, instantiating classes with their ``reward_kwargs``."""
    reward_kwargs = dict(reward_kwargs or {})
    funcs = []
    for name in names or []:
        obj = resolve_reward_func(name)
        kwargs = reward_kwargs.get(name, reward_kwargs.get(name.rsplit(".", 1)[-1], {}))
        if inspect.isclass(obj):
            obj = obj(**kwargs)
        elif kwargs:
            raise ValueError(f"reward_kwargs given for {name!r}, which is a function, not a class to instantiate.")
        funcs.append(obj)
    return funcs
