"""`QueryRewriteReward`: the weighted query-rewrite reward, with every component logged through TRL."""

from __future__ import annotations

import math
from collections import defaultdict

from trl_ext.rewards.query_rewrite.scorer import BUILTIN_CORPUS, COMPONENTS, PENALTIES, RewriteScorer

DEFAULT_WEIGHTS = {
    "rank": 1.0,
    "ndcg": 0.5,
    "recall": 0.25,
    "mrr": 0.25,
    "gain": 0.5,  # retrieval
    "slots": 0.5,
    "faithfulness": 0.25,
    "reference_f1": 0.1,  # content
    "length": 0.5,
    "leakage": 1.0,
    "hallucination": 0.5,  # penalties (subtracted)
}


class QueryRewriteReward:
    """Composite query-rewrite reward: weighted retrieval and content components minus weighted penalties.

    This is the reward to train on: each component alone prefers some hack (retrieval pays for stuffing the gold
    document's words, faithfulness for the unchanged query, the penalties for saying nothing), the composite ranks a
    faithful rewrite above every hack `hacks.hack_variants` generates on both bundled benchmarks.

    A completion that fails the format gate gets `min_reward` (by default the lowest score a valid rewrite can get);
    a row without gold documents gets `None`. Per-component means are logged through TRL's `log_metric` as
    `query_rewrite/<component>`. Instances pickle without their BM25 index, which is rebuilt on first use.

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        weights (`dict[str, float]` or `None`, *optional*):
            Overrides of `DEFAULT_WEIGHTS` (`rank`, `ndcg`, `recall`, `mrr`, `gain`, `slots`, `faithfulness`,
            `reference_f1`, `length`, `leakage`, `hallucination`); 0 switches one off.
        min_reward (`float` or `None`, *optional*):
            Reward of completions that fail the format gate; default: minus the penalty and gain weights.
        **scorer_kwargs:
            Cut-offs and thresholds of `RewriteScorer`.

    Example:
    ```python
    >>> from trl_ext.rewards.query_rewrite import QueryRewriteReward

    >>> reward = QueryRewriteReward()
    >>> reward(prompts=None, completions=["<rewrite>云雀CRM客户画像的数据导出</rewrite>", "答：点右上角的导出按钮"],
    ...        query=["能导出成表格吗？"] * 2, context=["当前页面：云雀CRM > 客户画像"] * 2,
    ...        gold_doc_ids=[["crm-0-export"]] * 2)
    [2.6666666666666665, -2.5]
    ```
    """

    def __init__(
        self, corpus=BUILTIN_CORPUS, weights: dict | None = None, min_reward: float | None = None, **scorer_kwargs
    ):
        self.scorer = RewriteScorer(corpus, **scorer_kwargs)
        self.__name__ = "query_rewrite"
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(
                f"unknown QueryRewriteReward weight(s) {sorted(unknown)}; valid: {sorted(DEFAULT_WEIGHTS)}"
            )
        self.weights = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in (weights or {}).items()}}
        lowest = -sum(self.weights[p] for p in PENALTIES) - self.weights["gain"]
        self.min_reward = float(lowest if min_reward is None else min_reward)

    def reward_from_components(self, components: dict) -> float | None:
        """The weighted sum of one completion's components (`RewriteScorer.score`)."""
        if components["format"] == 0.0:
            return self.min_reward
        if components.get("rank") is None:
            return None
        total = 0.0
        for name, weight in self.weights.items():
            value = components.get(name)
            if value is not None and weight:
                total += -weight * value if name in PENALTIES else weight * value
        return total

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float | None]:
        scored = self.scorer.score_completions(completions, kwargs)
        rewards = [self.reward_from_components(components) for components in scored]
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            values_by_component: dict = defaultdict(list)
            for components in scored:
                for name in COMPONENTS:
                    value = components.get(name)
                    if value is not None and not (isinstance(value, float) and math.isnan(value)):
                        values_by_component[name].append(float(value))
            for name in COMPONENTS:
                values = values_by_component[name]
                if values:
                    log_metric(f"query_rewrite/{name}", sum(values) / len(values))
        return rewards
