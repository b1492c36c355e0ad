"""Reward functions with TRL's signature `f(prompts, completions, **kwargs) -> list[float | None]`.

Recipes name them in `reward_funcs`; `load_reward_funcs` resolves the entries. The query-rewrite rewards live in
`trl_ext.rewards.query_rewrite` (imported on use: they need BM25 and jieba).
"""

from trl_ext.rewards.completions import completion_text
from trl_ext.rewards.keyword import KeywordReward
from trl_ext.rewards.registry import TRL_REWARDS, load_reward_funcs, resolve_reward_func

__all__ = ["TRL_REWARDS", "KeywordReward", "completion_text", "load_reward_funcs", "resolve_reward_func"]
