"""The query-rewrite reward components, one class each: retrieval, content and penalty terms of a rewrite.

Each class is a TRL reward function that returns one component of `RewriteScorer.score`; a recipe can log or weight
them on their own (`reward_funcs: [trl_ext.rewards.query_rewrite.RankReward, ...]`). `QueryRewriteReward` combines
them. The row schema is documented in `trl_ext.rewards.query_rewrite`.
"""

from __future__ import annotations

from trl_ext.rewards.query_rewrite.scorer import BUILTIN_CORPUS, PENALTIES, RewriteScorer


class RewriteComponentReward:
    """One component of `RewriteScorer` as a TRL reward function; each subclass names its `component`.

    A reward returns the component's value and a penalty minus it. A row without the data a component needs (no
    `gold_doc_ids` for the retrieval components, no `required_slots`, no `reference_rewrites`) gets `None`, which TRL
    leaves out of the sum. Completions of one call are scored once per distinct text and row. Instances pickle without
    their BM25 index, which is rebuilt on first use. These classes are for logging and study: train on
    `QueryRewriteReward`, the composite, since every component alone prefers some hack.

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        **scorer_kwargs:
            Cut-offs and thresholds of `RewriteScorer`.
    """

    #: Key of the component in `RewriteScorer.score`'s output.
    component: str

    def __init__(self, corpus=BUILTIN_CORPUS, **scorer_kwargs):
        self.scorer = RewriteScorer(corpus, **scorer_kwargs)
        self.__name__ = f"query_rewrite_{self.component}"

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float | None]:
        return [self.reward_from_components(c) for c in self.scorer.score_completions(completions, kwargs)]

    def reward_from_components(self, components: dict) -> float | None:
        """The component's value for a reward, minus it for a penalty, `None` when the row does not define it."""
        value = components.get(self.component)
        if value is None:
            return None
        return 0.0 - value if self.component in PENALTIES else float(value)


class FormatReward(RewriteComponentReward):
    """1.0 when the completion passes the format gate, else 0.0.

    The gate (`trl_ext.rewards.query_rewrite.check_format`) accepts one rewrite on one line, as plain text,
    `<rewrite>...</rewrite>` or `{"query": "..."}`, within `max_chars` characters and `max_tokens` tokens, in the
    language of the query (names copied from the query or context count for neither language), that does not open a
    sentence with an answer marker. Every other component takes its worst value for a completion that fails it.

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        max_chars (`int`, *optional*, defaults to `200`):
            Longer rewrites fail the gate.
        **scorer_kwargs:
            Other settings of `RewriteScorer`.

    Example:
    ```python
    >>> from trl_ext.rewards.query_rewrite import FormatReward

    >>> reward = FormatReward()
    >>> reward(prompts=None, completions=["<rewrite>云雀CRM客户画像的数据导出</rewrite>", "答：点右上角的导出按钮"],
    ...        query=["能导出成表格吗？"] * 2)
    [1.0, 0.0]
    ```
    """

    component = "format"


class RankReward(RewriteComponentReward):
    """Rank of the best gold document under the rewrite, shaped into [0, 1] by `RANK_TIERS`.

    Rank 1 gives 1.0, rank 2 0.8, rank 3 0.7, up to 5 0.5, up to 10 0.3, up to 20 0.1, worse 0. Ties count against the
    gold document.

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        rank_tiers (`tuple[tuple[int, float], ...]`, *optional*, defaults to `RANK_TIERS`):
            `(worst rank, reward)` pairs, best first.
        **scorer_kwargs:
            Other settings of `RewriteScorer`.

    Example:
    ```python
    >>> from trl_ext.rewards.query_rewrite import RankReward

    >>> reward = RankReward()
    >>> reward(prompts=None, completions=["云雀CRM客户画像的数据导出", "能导出成表格吗？"], query=["能导出成表格吗？"] * 2,
    ...        gold_doc_ids=[["crm-0-export"]] * 2)
    [1.0, 0.0]
    ```
    """

    component = "rank"


class RecallReward(RewriteComponentReward):
    """Share of the gold documents the rewrite retrieves in the top `k_recall`.

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        k_recall (`int`, *optional*, defaults to `5`):
            Cut-off.
        **scorer_kwargs:
            Other settings of `RewriteScorer`.

    Example:
    ```python
    >>> from trl_ext.rewards.query_rewrite import RecallReward

    >>> reward = RecallReward()
    >>> reward(prompts=None, completions=["云雀CRM客户画像的数据导出", "能导出成表格吗？"], query=["能导出成表格吗？"] * 2,
    ...        gold_doc_ids=[["crm-0-export"]] * 2)
    [1.0, 0.0]
    ```
    """

    component = "recall"


class NDCGReward(RewriteComponentReward):
    """NDCG of the gold documents (binary relevance) in the rewrite's top `k_ndcg`.

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        k_ndcg (`int`, *optional*, defaults to `10`):
            Cut-off.
        **scorer_kwargs:
            Other settings of `RewriteScorer`.

    Example:
    ```python
    >>> from trl_ext.rewards.query_rewrite import NDCGReward

    >>> reward = NDCGReward()
    >>> reward(prompts=None, completions=["云雀CRM客户画像的数据导出", "能导出成表格吗？"], query=["能导出成表格吗？"] * 2,
    ...        gold_doc_ids=[["crm-0-export"]] * 2)
    [1.0, 0.0]
    ```
    """

    component = "ndcg"


class MRRReward(RewriteComponentReward):
    """Reciprocal rank of the best gold document under the rewrite, 0 beyond `k_mrr`.

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        k_mrr (`int`, *optional*, defaults to `10`):
            Cut-off.
        **scorer_kwargs:
            Other settings of `RewriteScorer`.

    Example:
    ```python
    >>> from trl_ext.rewards.query_rewrite import MRRReward

    >>> reward = MRRReward()
    >>> reward(prompts=None, completions=["云雀CRM客户画像的数据导出", "云雀CRM客户画像的数据导出方法和全部字段说明以及权限配置"],
    ...        query=["能导出成表格吗？"] * 2, gold_doc_ids=[["crm-0-export"]] * 2)
    [1.0, 0.5]
    ```
    """

    component = "mrr"


class GainReward(RewriteComponentReward):
    """Rank reward of the rewrite minus that of the original query, in [-1, 1].

    Positive when the rewrite retrieves the gold document better than the query did; a completion that fails the
    format gate gets minus the query's rank reward.

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        rank_tiers (`tuple[tuple[int, float], ...]`, *optional*, defaults to `RANK_TIERS`):
            See `RankReward`.
        **scorer_kwargs:
            Other settings of `RewriteScorer`.

    Example:
    ```python
    >>> from trl_ext.rewards.query_rewrite import GainReward

    >>> reward = GainReward()
    >>> reward(prompts=None, completions=["云雀CRM客户画像的数据导出", "能导出成表格吗？"], query=["能导出成表格吗？"] * 2,
    ...        gold_doc_ids=[["crm-0-export"]] * 2)
    [1.0, 0.0]
    ```
    """

    component = "gain"


class SlotCoverageReward(RewriteComponentReward):
    """Share of the row's `required_slots` the rewrite states (any synonym, case-insensitive).

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        **scorer_kwargs:
            Other settings of `RewriteScorer`.

    Example:
    ```python
    >>> from trl_ext.rewards.query_rewrite import SlotCoverageReward

    >>> reward = SlotCoverageReward()
    >>> reward(prompts=None, completions=["云雀CRM客户画像的数据导出", "客户画像的数据导出"], query=["能导出成表格吗？"] * 2,
    ...        required_slots=[{"系统": ["云雀CRM", "CRM"], "功能": ["客户画像"]}] * 2)
    [1.0, 0.5]
    ```
    """

    component = "slots"


class FaithfulnessReward(RewriteComponentReward):
    """Faithfulness of the rewrite to the query **plus its context** (`trl_ext.rewards.query_rewrite.checks`).

    The mean of support (the rewrite's content words found in the query, the context or generic search words: an
    entity or value found in neither is unfaithful) and coverage (the query's content words kept; a relative date
    resolved to a value the context names counts as kept), halved when the context names entities the query lacks and
    the rewrite takes none of them. Not meant to be trained on alone (the composite is).

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        **scorer_kwargs:
            Other settings of `RewriteScorer`.

    Example:
    ```python
    >>> from trl_ext.rewards.query_rewrite import FaithfulnessReward

    >>> reward = FaithfulnessReward()
    >>> reward(prompts=None, completions=["云雀CRM客户画像数据导出", "客户画像数据导出", "能导出吗"],
    ...        query=["客户画像怎么导出数据"] * 3, context=["当前页面：云雀CRM > 客户画像"] * 3)
    [1.0, 0.5, 0.3125]
    ```
    """

    component = "faithfulness"


class ReferenceF1Reward(RewriteComponentReward):
    """Best content-token F1 of the rewrite against the row's `reference_rewrites`.

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        **scorer_kwargs:
            Other settings of `RewriteScorer`.

    Example:
    ```python
    >>> from trl_ext.rewards.query_rewrite import ReferenceF1Reward

    >>> reward = ReferenceF1Reward()
    >>> reward(prompts=None, completions=["云雀CRM客户画像的数据导出", "云雀CRM客户画像"], query=["能导出成表格吗？"] * 2,
    ...        reference_rewrites=[["云雀CRM客户画像的数据导出"]] * 2)
    [1.0, 0.8]
    ```
    """

    component = "reference_f1"


class LengthPenalty(RewriteComponentReward):
    """Minus the length cost of the rewrite, in [-1, 0], counted in tokens of the retrieval tokenizer.

    The budget is the longest reference rewrite plus `length_slack` tokens (without references: `max(max_length_ratio
    * query tokens, min_length_allowance)`); each token beyond it costs `1 / budget`, up to 1 at twice the budget.
    Chinese and English get the same room.

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        max_length_ratio (`float`, *optional*, defaults to `2.0`):
            Allowance per query token, for rows without `reference_rewrites`.
        min_length_allowance (`int`, *optional*, defaults to `9`):
            Smallest allowance without `reference_rewrites`.
        **scorer_kwargs:
            Other settings of `RewriteScorer`.

    Example:
    ```python
    >>> from trl_ext.rewards.query_rewrite import LengthPenalty

    >>> reward = LengthPenalty()
    >>> reward(prompts=None, completions=["云雀CRM客户画像的数据导出", "云雀CRM客户画像的数据导出说明青鸟OA请假审批流程设置"],
    ...        query=["数据导出"] * 2)
    [0.0, -0.4444444444444444]
    ```
    """

    component = "length"


class LeakagePenalty(RewriteComponentReward):
    """Minus the leakage of the rewrite, in [-1, 0]: answers, gold ids, gold-document copies, repetition.

    An answer term of the row (`answer_terms`) the user did not write, a gold document's id, a value (a token with a
    digit) of a gold document found in neither query nor context, or an English statement instead of a query (see
    `checks.is_declarative`) costs 1: answers are caught without markers and without `answer_terms`. Tokens new to
    the query and context inside n-grams copied from a gold document cost beyond a budget; repeated tokens cost twice
    their share.

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        copy_ngram (`int`, *optional*, defaults to `4`):
            Token n-gram length that counts as copying a gold document.
        copy_budget (`int`, *optional*, defaults to `4`):
            Copied new tokens allowed before the penalty starts; it reaches 1 at twice the budget.
        **scorer_kwargs:
            Other settings of `RewriteScorer`.

    Example:
    ```python
    >>> from trl_ext.rewards.query_rewrite import LeakagePenalty

    >>> reward = LeakagePenalty()
    >>> reward(prompts=None, completions=["云雀CRM客户画像的数据导出", "云雀CRM客户画像的数据导出 2420"],
    ...        query=["能导出成表格吗？"] * 2, answer_terms=[["2420"]] * 2)
    [0.0, -1.0]
    ```
    """

    component = "leakage"


class HallucinationPenalty(RewriteComponentReward):
    """Minus the share of the rewrite's content tokens found in neither query, context, corpus nor generic words.

    Generic words a rewrite may add (`方法`, `步骤`, `guide`, ...) are listed in `checks.REWRITE_WORDS`.

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            Documents to retrieve from: a list of `{"id", "text"}`, a JSONL path or `builtin:...`.
        **scorer_kwargs:
            Other settings of `RewriteScorer`.

    Example:
    ```python
    >>> from trl_ext.rewards.query_rewrite import HallucinationPenalty

    >>> reward = HallucinationPenalty()
    >>> reward(prompts=None, completions=["云雀CRM客户画像的数据导出", "飞鱼CRM客户画像的数据导出"], query=["能导出成表格吗？"] * 2,
    ...        context=["当前页面：云雀CRM > 客户画像"] * 2)
    [0.0, -0.16666666666666666]
    ```
    """

    component = "hallucination"
