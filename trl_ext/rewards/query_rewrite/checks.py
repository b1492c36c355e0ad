"""Content checks of one rewrite against its query and context: faithfulness, length cost, answers without markers.

Every check works on the tokens of the retrieval tokenizer (`trl_ext.rewards.query_rewrite.tokenize`: stemmed English,
jieba Chinese), so a rewrite is measured the way the retriever reads it.
"""

from __future__ import annotations

import re
from functools import cache

from trl_ext.rewards.query_rewrite.text import content_tokens, tokenize

#: Generic words a rewrite may add without being counted as invented entities or as unfaithful.
REWRITE_WORDS = (
    "方法 步骤 指南 说明 如何 设置 配置 查询 查看 问题 原因 排查 流程 含义 系统 功能 指标 报表 分析 "
    "相关 文档 帮助 介绍 使用 定义 口径 维度 时间 数据 guide how setup configure configuration settings "
    "steps troubleshooting documentation docs reference overview explanation meaning definition"
)
#: Relative time and reference words: resolved (not dropped) when the rewrite names a value taken from the context.
RELATIVE_WORDS = (
    "last next previous current this that it its these those today yesterday tomorrow now recent latest year "
    "years month months week weeks quarter day days ago 去年 今年 明年 上个月 本月 下个月 上周 本周 昨天 今天 明天 "
    "最近 当前 那块 这块 那里 这里"
)


@cache
def vocabulary(words: str) -> frozenset:
    """The retrieval tokens (stopwords kept) of a space-separated word list, tokenized once on first use."""
    return frozenset(tokenize(words, keep_stopwords=True))


_QUESTION_START = re.compile(
    r"^\s*(how|what|why|when|where|which|who|whom|whose|is|are|was|were|can|could|do|does|did|should|will|would)\b",
    re.I,
)
_STATEMENT = re.compile(r"\b(is|are|was|were|equals|means|has|have|must|will)\b", re.I)


def has_value(token: str) -> bool:
    """A token holding a digit: a number, code, limit or date (`2420`, `e1234`, `ctrl+k7`, `2023`)."""
    return any(c.isdigit() for c in token)


def faithfulness(rewrite: str, query: str, context: str = "") -> float:
    """Faithfulness of `rewrite` to the query **plus its context**, in [0, 1].

    The mean of two shares: support (the rewrite's content tokens found in the query, the context or
    `REWRITE_WORDS`; a value or entity found in neither is unfaithful) and coverage (the query's content words the
    rewrite keeps; a relative word such as `last year` counts as kept when the rewrite names a value from the context,
    which resolves it). When the context names entities the query lacks and the rewrite takes none of them, the score
    is halved: the unchanged query leaves the context out, it is not a faithful resolution.

    Args:
        rewrite (`str`):
            The rewrite (format gate passed).
        query (`str`):
            The original query.
        context (`str`, *optional*, defaults to `""`):
            Dialogue, page or date text the rewrite may draw from.

    Returns:
        `float`: The faithfulness score.
    """
    rewrite_content = content_tokens(rewrite)
    rewrite_vocab = set(rewrite_content) | set(tokenize(rewrite, keep_stopwords=True))
    query_all = set(tokenize(query, keep_stopwords=True))
    query_content = set(content_tokens(query))
    context_tokens = set(tokenize(context, keep_stopwords=True))
    source = query_all | context_tokens
    generic, relative = vocabulary(REWRITE_WORDS), vocabulary(RELATIVE_WORDS)
    support = (
        sum(t in source or t in generic for t in rewrite_content) / len(rewrite_content) if rewrite_content else 0.0
    )
    from_context = {t for t in rewrite_vocab if t in context_tokens and t not in query_all}
    resolved_value = any(has_value(t) for t in from_context)
    kept = [t in rewrite_vocab or (t in relative and resolved_value) for t in query_content]
    coverage = sum(kept) / len(kept) if kept else 1.0
    score = 0.5 * support + 0.5 * coverage
    context_entities = set(content_tokens(context)) - query_all - generic
    if context_entities and not (from_context & context_entities):
        score *= 0.5
    return score


def length_budget(query: str, references: list[str], ratio: float, min_allowance: int, slack: int) -> float:
    """Tokens a rewrite may have before it pays: the longest reference rewrite plus `slack`, or without references
    `max(ratio * query tokens, min_allowance)`."""
    if references:
        return float(max(len(tokenize(r)) for r in references) + slack)
    return float(max(ratio * len(tokenize(query)), min_allowance))


def length_cost(rewrite: str, budget: float) -> float:
    """Linear cost in [0, 1] of the retrieval tokens beyond `budget`: 0 within it, 1 at twice it."""
    return min(1.0, max(0.0, len(tokenize(rewrite)) - budget) / max(budget, 1.0))


def answer_values(rewrite: str, source_tokens: set, gold_tokens: set) -> list[str]:
    """Values (tokens with a digit) the rewrite asserts that are in a gold document but in neither query nor context:
    an answer written without any marker."""
    return sorted({t for t in tokenize(rewrite) if has_value(t) and t in gold_tokens and t not in source_tokens})


def is_declarative(rewrite: str) -> bool:
    """Whether an English rewrite reads as a statement rather than a search query: it does not open with a question
    word, it has a finite verb (`is`, `are`, `must`, ...) after its first word and ends with a period."""
    text = rewrite.strip()
    if not text.endswith(".") or _QUESTION_START.match(text):
        return False
    return _STATEMENT.search(text.split(None, 1)[-1]) is not None


def slot_stated(rewrite: str, synonyms: list[str]) -> bool:
    """Whether the rewrite states a slot: one synonym as a case-insensitive substring or all its tokens (stemmed)."""
    lower = rewrite.lower()
    tokens = set(tokenize(rewrite))
    for synonym in synonyms:
        if synonym.lower() in lower:
            return True
        synonym_tokens = tokenize(synonym)
        if synonym_tokens and all(t in tokens for t in synonym_tokens):
            return True
    return False
