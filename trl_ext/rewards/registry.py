"""Resolution of a recipe's `reward_funcs` entries to callables with TRL's reward signature.

An entry is a TRL reward by name (`accuracy_reward`, `think_format_reward`, ...) or any dotted import path. A class
(such as a reward that needs a corpus) is instantiated with the matching entry of `reward_kwargs`, keyed by the full
path or the class name.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

#: TRL's own reward functions, by the names its `trl grpo` script accepts.
TRL_REWARDS = ("accuracy_reward", "reasoning_accuracy_reward", "think_format_reward")


def resolve_reward_func(name: str):
    """Import the object a `reward_funcs` entry names.

    Args:
        name (`str`):
            One of `TRL_REWARDS` or a dotted import path such as `trl_ext.rewards.query_rewrite.QueryRewriteReward`.
            Modules of the working directory are importable, as in TRL's scripts.

    Returns:
        The named function, callable instance or class (not instantiated).
    """
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
    """Resolve `reward_funcs` entries to callables, instantiating classes with their `reward_kwargs`.

    Args:
        names (`list[str]` or `None`):
            The recipe's `reward_funcs` entries (see `resolve_reward_func`).
        reward_kwargs (`dict[str, dict]` or `None`):
            Constructor arguments per class, keyed by the entry as written or by the class name.

    Returns:
        `list`: One callable per entry, in order.
    """
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
