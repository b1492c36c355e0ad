"""Scoring of one query rewrite: every component the query-rewrite rewards are made of, computed once per completion.

The row schema is documented in `trl_ext.rewards.query_rewrite`.
"""

from __future__ import annotations

import json
import math

from trl_ext.rewards.completions import completion_text
from trl_ext.rewards.query_rewrite.checks import (
    REWRITE_WORDS,
    answer_values,
    faithfulness,
    is_declarative,
    length_budget,
    length_cost,
    slot_stated,
    vocabulary,
)
from trl_ext.rewards.query_rewrite.retrieval import shared_index
from trl_ext.rewards.query_rewrite.text import check_format, content_tokens, tokenize

BUILTIN_CORPUS = "builtin:query_rewrite_corpus/corpus.jsonl"
#: Rank of the best gold document -> reward (rank-incentive shaping); worse ranks get 0.
RANK_TIERS = ((1, 1.0), (2, 0.8), (3, 0.7), (5, 0.5), (10, 0.3), (20, 0.1))
#: Every component `RewriteScorer.score` computes, in logging order.
COMPONENTS = (
    "rank",
    "ndcg",
    "recall",
    "mrr",
    "gain",  # retrieval
    "slots",
    "faithfulness",
    "reference_f1",  # content
    "length",
    "leakage",
    "hallucination",  # penalties
    "format",
)
#: Components that measure a fault in [0, 1]: rewards subtract them.
PENALTIES = ("length", "leakage", "hallucination")


def rank_reward(rank: int, tiers=RANK_TIERS) -> float:
    """Shape the 1-based rank of the best gold document into [0, 1].

    Args:
        rank (`int` or `float`):
            Rank of the best gold document (`inf` when none is retrieved).
        tiers (`tuple[tuple[int, float], ...]`, *optional*, defaults to `RANK_TIERS`):
            `(worst rank, reward)` pairs, best first; ranks beyond the last tier get 0.

    Returns:
        `float`: The reward of the first tier the rank falls in.
    """
    for limit, value in tiers:
        if rank <= limit:
            return value
    return 0.0


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value if v is not None]


def _ngrams(tokens: list[str], n: int) -> set[tuple]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _f1(tokens: list[str], reference_tokens: list[str]) -> float:
    token_set, reference_set = set(tokens), set(reference_tokens)
    common = len(token_set & reference_set)
    if not common:
        return 0.0
    precision, recall = common / len(token_set), common / len(reference_set)
    return 2 * precision * recall / (precision + recall)


def rows_from_columns(completions: list, columns: dict) -> list[dict]:
    """One dict per completion from the dataset columns TRL passes a reward function as keyword arguments.

    Args:
        completions (`list`):
            The completions; only their number is used.
        columns (`dict`):
            The reward function's keyword arguments; those holding one value per completion are the row's columns.

    Returns:
        `list[dict]`: The row of each completion.
    """
    n = len(completions)
    per_completion = {k: v for k, v in columns.items() if isinstance(v, (list, tuple)) and len(v) == n}
    if "query" not in per_completion:
        raise ValueError(
            "query-rewrite rewards need a 'query' column (the original query) in the dataset; the "
            f"reward got columns {sorted(per_completion)}. See trl_ext.rewards.query_rewrite for the "
            "row schema."
        )
    return [{k: v[i] for k, v in per_completion.items()} for i in range(n)]


class RewriteScorer:
    """Computes every component for one (row, rewrite); the reward classes share it.

    When the format gate fails (`format` 0), every other component takes its worst value: 0 for rewards, 1 for
    penalties, minus the original query's rank reward for `gain`. The BM25 index is built on first use and shared by
    every scorer of the same corpus path in the process; it is not pickled.

    Args:
        corpus (`list[dict]` or `str`, *optional*, defaults to `BUILTIN_CORPUS`):
            A list of `{"id", "text"}` documents, a JSONL path or `builtin:...`.
        k_recall (`int`, *optional*, defaults to `5`):
            Cut-off of recall.
        k_ndcg (`int`, *optional*, defaults to `10`):
            Cut-off of NDCG.
        k_mrr (`int`, *optional*, defaults to `10`):
            Cut-off of MRR.
        max_length_ratio (`float`, *optional*, defaults to `2.0`):
            For rows without `reference_rewrites`: rewrites longer than `max(max_length_ratio * query tokens,
            min_length_allowance)` retrieval tokens pay a linear cost, reaching 1 at twice that length.
        min_length_allowance (`int`, *optional*, defaults to `9`):
            See `max_length_ratio`.
        copy_ngram (`int`, *optional*, defaults to `4`):
            Token n-gram length that counts as copying a gold document.
        copy_budget (`int`, *optional*, defaults to `4`):
            Tokens absent from query and context that a rewrite may share with gold-document n-grams (a title's
            words) before the copy penalty starts; it reaches 1 at twice the budget.
        max_chars (`int`, *optional*, defaults to `200`):
            Longer rewrites fail the format gate.
        rank_tiers (`tuple[tuple[int, float], ...]`, *optional*, defaults to `RANK_TIERS`):
            See `rank_reward`.
        max_tokens (`int`, *optional*, defaults to `40`):
            Rewrites with more retrieval tokens (stopwords included) fail the format gate.
        length_slack (`int`, *optional*, defaults to `2`):
            Tokens beyond the longest reference rewrite a rewrite may have before the length cost starts; it reaches 1
            at twice that budget.
    """

    def __init__(
        self,
        corpus=BUILTIN_CORPUS,
        k_recall: int = 5,
        k_ndcg: int = 10,
        k_mrr: int = 10,
        max_length_ratio: float = 2.0,
        min_length_allowance: int = 9,
        copy_ngram: int = 4,
        copy_budget: int = 4,
        max_chars: int = 200,
        rank_tiers=RANK_TIERS,
        max_tokens: int = 40,
        length_slack: int = 2,
    ):
        self.corpus = corpus
        self.k_recall, self.k_ndcg, self.k_mrr = k_recall, k_ndcg, k_mrr
        self.max_length_ratio, self.min_length_allowance = max_length_ratio, min_length_allowance
        self.copy_ngram, self.copy_budget, self.max_chars = copy_ngram, copy_budget, max_chars
        self.max_tokens, self.length_slack = max_tokens, length_slack
        self.rank_tiers = tuple(tuple(t) for t in rank_tiers)
        self._index = None

    @property
    def index(self):
        if self._index is None:
            self._index = shared_index(self.corpus)
        return self._index

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_index"} | {"_index": None}

    def retrieval(self, text: str, gold: list[str]) -> dict:
        """Retrieval metrics of `text` for the `gold` document ids, plus its shaped `rank_reward`."""
        metrics = self.index.metrics(text, gold, self.k_recall, self.k_ndcg, self.k_mrr)
        metrics["rank_reward"] = rank_reward(metrics["rank"], self.rank_tiers)
        return metrics

    @staticmethod
    def _slots(row: dict) -> dict[str, list[str]]:
        slots = row.get("required_slots")
        if isinstance(slots, str):
            slots = json.loads(slots) if slots.strip() else {}
        if slots and not isinstance(slots, dict):
            raise ValueError(f"required_slots must be a dict of slot -> value or list of synonyms, got {slots!r:.80}")
        return {k: _as_list(v) for k, v in (slots or {}).items() if _as_list(v)}

    def score(self, row: dict, completion) -> dict:
        """All components for one completion.

        Args:
            row (`dict`):
                The completion's dataset row (see `trl_ext.rewards.query_rewrite` for the schema).
            completion (`str` or `list[dict]`):
                A plain or conversational completion.

        Returns:
            `dict`: Component name -> value (a component the row has no data for is absent), plus `format_reason`
            and `gold_rank`.
        """
        query = row.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ValueError(
                "each row needs a non-empty 'query' column (the original query); the dataset has "
                f"query={query!r}. See trl_ext.rewards.query_rewrite for the row schema."
            )
        context = row.get("context") or ""
        rewrite, reason = check_format(
            completion_text(completion), query, self.max_chars, context=context, max_tokens=self.max_tokens
        )
        out: dict = {"format": 0.0 if rewrite is None else 1.0, "format_reason": reason}
        gold = _as_list(row.get("gold_doc_ids"))
        references = _as_list(row.get("reference_rewrites"))
        if rewrite is None:  # every component at its worst value, so logged means count gated completions too
            if gold:
                original = self.retrieval(query, gold)
                out.update(rank=0.0, ndcg=0.0, recall=0.0, mrr=0.0, gain=-original["rank_reward"], gold_rank=None)
            if self._slots(row):
                out["slots"] = 0.0
            if references:
                out["reference_f1"] = 0.0
            out.update(faithfulness=0.0, length=1.0, leakage=1.0, hallucination=1.0)
            return out
        index = self.index
        rewrite_content = content_tokens(rewrite)
        source_tokens = set(tokenize(query, keep_stopwords=True)) | set(tokenize(context, keep_stopwords=True))

        if gold:
            rewritten, original = self.retrieval(rewrite, gold), self.retrieval(query, gold)
            out.update(
                rank=rewritten["rank_reward"],
                ndcg=rewritten["ndcg"],
                recall=rewritten["recall"],
                mrr=rewritten["mrr"],
                gain=rewritten["rank_reward"] - original["rank_reward"],
                gold_rank=rewritten["rank"] if math.isfinite(rewritten["rank"]) else None,
            )
        slots = self._slots(row)
        if slots:
            out["slots"] = sum(slot_stated(rewrite, synonyms) for synonyms in slots.values()) / len(slots)
        out["faithfulness"] = faithfulness(rewrite, query, context)
        if references:
            out["reference_f1"] = max(_f1(rewrite_content, content_tokens(r)) for r in references)
        budget = length_budget(query, references, self.max_length_ratio, self.min_length_allowance, self.length_slack)
        out["length"] = length_cost(rewrite, budget)
        # hallucination: share of content tokens found in neither query, context, corpus nor generic rewrite words
        generic = vocabulary(REWRITE_WORDS)
        invented = [
            t for t in set(rewrite_content) if t not in source_tokens and t not in index.vocab and t not in generic
        ]
        out["hallucination"] = len(invented) / max(len(set(rewrite_content)), 1)
        out["leakage"] = self._leakage(row, rewrite, gold, source_tokens, query + " " + context)
        return out

    def _leakage(self, row: dict, rewrite: str, gold: list[str], source_tokens: set, source_text: str) -> float:
        """Answer terms, gold ids, answer values or statements, n-grams copied from gold documents, repetition."""
        index = self.index
        rewrite_lower, source_lower = rewrite.lower(), source_text.lower()
        answers = [a for a in _as_list(row.get("answer_terms")) if a.strip()]
        leaked = [a for a in answers if a.lower() in rewrite_lower and a.lower() not in source_lower]
        leaked += [d for d in gold if len(d) > 2 and d.lower() in rewrite_lower and d.lower() not in source_lower]
        gold_docs = [index.position[d] for d in gold if d in index.position]
        gold_tokens = {t for i in gold_docs for t in index.doc_tokens[i]}
        leaked += answer_values(rewrite, source_tokens, gold_tokens)
        if is_declarative(rewrite):
            leaked.append(rewrite)
        all_tokens = tokenize(rewrite)
        novel_grams = [g for g in _ngrams(all_tokens, self.copy_ngram) if any(t not in source_tokens for t in g)]
        gold_grams = set()
        for i in gold_docs:
            gold_grams |= _ngrams(index.doc_tokens[i], self.copy_ngram)
        copied = {t for g in novel_grams if g in gold_grams for t in g if t not in source_tokens}
        copy_penalty = max(0.0, len(copied) - self.copy_budget) / self.copy_budget
        repetition = 1.0 - len(set(all_tokens)) / len(all_tokens) if all_tokens else 0.0
        return min(1.0, (1.0 if leaked else 0.0) + copy_penalty + 2.0 * repetition)

    def score_completions(self, completions: list, columns: dict) -> list[dict]:
        """`score` for a batch, computed once per distinct (query, context, gold documents, completion text).

        Args:
            completions (`list`):
                Plain or conversational completions.
            columns (`dict`):
                The dataset columns TRL passes a reward function as keyword arguments (see `rows_from_columns`).

        Returns:
            `list[dict]`: The components of each completion.
        """
        rows = rows_from_columns(completions, columns)
        memo: dict = {}
        out = []
        for row, completion in zip(rows, completions):
            key = (row.get("query"), row.get("context"), str(row.get("gold_doc_ids")), completion_text(completion))
            if key not in memo:
                memo[key] = self.score(row, completion)
            out.append(memo[key])
        return out
