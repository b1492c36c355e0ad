"""Query-rewrite reward functions with TRL's signature ``f(prompts, completions, **kwargs) -> list[float | None]``.

Dataset row schema (columns arrive as keyword arguments, one value per completion):

* ``query`` (str): the original query. Required.
* ``context`` (str, optional): dialogue, page, role or date text the rewrite may draw entities from.
* ``gold_doc_ids`` (list[str]): ids of the corpus documents the query should retrieve. Rows without any are not
  scored on retrieval (``None``).
* ``required_slots`` (dict, optional): slot -> value or list of accepted synonyms the rewrite must state.
* ``answer_terms`` (list[str], optional): terms of the answer; a rewrite must not contain them.
* ``reference_rewrites`` (list[str], optional): good rewrites, used for a low-weight token F1.

The corpus (a list of ``{"id", "text"}``, a JSONL path or ``builtin:query_rewrite_corpus``) is indexed once with BM25.
Completions may be plain strings or chat messages; a completion holds one rewrite, as plain text,
``<rewrite>...</rewrite>`` or ``{"query": "..."}``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

from trl_ext.rewards.completions import completion_text
from trl_ext.rewards.query_rewrite.retrieval import shared_index
from trl_ext.rewards.query_rewrite.text import check_format, content_tokens, tokenize

BUILTIN_CORPUS = "builtin:query_rewrite_corpus/corpus.jsonl"
#: Rank of the best gold document -> reward (rank-incentive shaping); worse ranks get 0.
RANK_TIERS = ((1, 1.0), (2, 0.8), (3, 0.7), (5, 0.5), (10, 0.3), (20, 0.1))
#: Generic words a rewrite may add without being counted as invented entities.
REWRITE_VOCAB = frozenset("方法 步骤 指南 说明 如何 设置 配置 查询 查看 问题 原因 排查 流程 含义 系统 功能 指标 报表 分析 "
                          "相关 文档 帮助 介绍 使用 定义 口径 维度 时间 数据 guide how setup configure settings".split())

DEFAULT_WEIGHTS = {
    "rank": 1.0, "ndcg": 0.5, "recall": 0.25, "mrr": 0.25, "gain": 0.5,  # retrieval
    "slots": 0.5, "faithfulness": 0.25, "reference_f1": 0.1,  # content
    "length": 0.5, "leakage": 1.0, "hallucination": 0.5,  # penalties (subtracted)
}
PENALTIES = ("length", "leakage", "hallucination")
COMPONENTS = tuple(DEFAULT_WEIGHTS) + ("format",)


def rank_reward(rank: int, tiers=RANK_TIERS) -> float:
    """Shape the 1-based rank of the best gold document into [0, 1]."""
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


def _f1(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    common = len(sa & sb)
    if not common:
        return 0.0
    p, r = common / len(sa), common / len(sb)
    return 2 * p * r / (p + r)


class RewriteScorer:
    """Computes every component for one (row, rewrite); shared by the reward classes. See the module docstring.

    Args:
        corpus: list of ``{"id", "text"}``, a JSONL path or ``builtin:...``. Default: the bundled corpus.
        k_recall, k_ndcg, k_mrr: cut-offs of recall, NDCG and MRR.
        max_length_ratio: rewrites longer than ``max(max_length_ratio * query tokens, min_length_allowance)``
            content tokens are penalised linearly, reaching 1 at twice that length.
        min_length_allowance: see above.
        copy_ngram: token n-gram length that counts as copying a gold document.
        copy_budget: tokens absent from query and context that a rewrite may share with gold-document n-grams (a
            title's words) before the copy penalty starts; it reaches 1 at twice the budget.
        max_chars: longer rewrites fail the format gate.
    """

    def __init__(self, corpus=BUILTIN_CORPUS, k_recall: int = 5, k_ndcg: int = 10, k_mrr: int = 10,
                 max_length_ratio: float = 2.0, min_length_allowance: int = 9, copy_ngram: int = 4, copy_budget: int = 4,
                 max_chars: int = 200, rank_tiers=RANK_TIERS):
        self.corpus = corpus
        self.k_recall, self.k_ndcg, self.k_mrr = k_recall, k_ndcg, k_mrr
        self.max_length_ratio, self.min_length_allowance = max_length_ratio, min_length_allowance
        self.copy_ngram, self.copy_budget, self.max_chars = copy_ngram, copy_budget, max_chars
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
        m = self.index.metrics(text, gold, self.k_recall, self.k_ndcg, self.k_mrr)
        m["rank_reward"] = rank_reward(m["rank"], self.rank_tiers)
        return m

    @staticmethod
    def _slots(row: dict) -> dict[str, list[str]]:
        slots = row.get("required_slots")
        if isinstance(slots, str):
            slots = json.loads(slots) if slots.strip() else {}
        if slots and not isinstance(slots, dict):
            raise ValueError(f"required_slots must be a dict of slot -> value or list of synonyms, got {slots!r:.80}")
        return {k: _as_list(v) for k, v in (slots or {}).items() if _as_list(v)}

    def score(self, row: dict, completion) -> dict:
        """All components for one completion. When the format gate fails (``format`` 0), every other component takes
        its worst value: 0 for rewards, 1 for penalties, minus the original query's rank reward for ``gain``."""
        query = row.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ValueError("each row needs a non-empty 'query' column (the original query); the dataset has "
                             f"query={query!r}. See trl_ext.rewards.query_rewrite for the row schema.")
        rewrite, reason = check_format(completion_text(completion), query, self.max_chars)
        out: dict = {"format": 0.0 if rewrite is None else 1.0, "format_reason": reason}
        gold = _as_list(row.get("gold_doc_ids"))
        if rewrite is None:  # every component at its worst value, so logged means count gated completions too
            if gold:
                old = self.retrieval(query, gold)
                out.update(rank=0.0, ndcg=0.0, recall=0.0, mrr=0.0, gain=-old["rank_reward"], gold_rank=None)
            if self._slots(row):
                out["slots"] = 0.0
            if _as_list(row.get("reference_rewrites")):
                out["reference_f1"] = 0.0
            out.update(faithfulness=0.0, length=1.0, leakage=1.0, hallucination=1.0)
            return out
        context = row.get("context") or ""
        index = self.index
        rw_tokens = content_tokens(rewrite)
        q_content = content_tokens(query)
        source = set(tokenize(query)) | set(tokenize(context))

        if gold:
            new, old = self.retrieval(rewrite, gold), self.retrieval(query, gold)
            out.update(rank=new["rank_reward"], ndcg=new["ndcg"], recall=new["recall"], mrr=new["mrr"],
                       gain=new["rank_reward"] - old["rank_reward"],
                       gold_rank=new["rank"] if math.isfinite(new["rank"]) else None)
        # slots: share of required slots stated (any synonym, case-insensitive substring)
        slots = self._slots(row)
        if slots:
            low = rewrite.lower()
            out["slots"] = sum(any(s.lower() in low for s in syn) for syn in slots.values()) / len(slots)
        # faithfulness: share of the query's content words the rewrite keeps
        rw_set = set(rw_tokens) | set(tokenize(rewrite))
        out["faithfulness"] = (sum(t in rw_set for t in set(q_content)) / len(set(q_content))) if q_content else 1.0
        refs = _as_list(row.get("reference_rewrites"))
        if refs:
            out["reference_f1"] = max(_f1(rw_tokens, content_tokens(r)) for r in refs)
        # length: content tokens beyond the allowance
        allowed = max(self.max_length_ratio * len(q_content), self.min_length_allowance)
        out["length"] = min(1.0, max(0.0, (len(rw_tokens) - allowed) / allowed))
        # hallucination: share of content tokens found in neither query, context, corpus nor generic rewrite words
        invented = [t for t in set(rw_tokens) if t not in source and t not in index.vocab and t not in REWRITE_VOCAB]
        out["hallucination"] = len(invented) / max(len(set(rw_tokens)), 1)
        # leakage: answer terms, n-grams copied from gold documents, repetition
        low = rewrite.lower()
        source_text = (query + " " + context).lower()
        answers = [a for a in _as_list(row.get("answer_terms")) if a.strip()]
        leaked = [a for a in answers if a.lower() in low and a.lower() not in source_text]
        all_tokens = tokenize(rewrite)
        grams = _ngrams(all_tokens, self.copy_ngram)
        novel = [g for g in grams if any(t not in source for t in g)]
        gold_grams = set()
        for doc_id in gold:
            if doc_id in index.position:
                gold_grams |= _ngrams(index.doc_tokens[index.position[doc_id]], self.copy_ngram)
        copied = {t for g in novel if g in gold_grams for t in g if t not in source}
        copy = max(0.0, len(copied) - self.copy_budget) / self.copy_budget
        repetition = 1.0 - len(set(all_tokens)) / len(all_tokens) if all_tokens else 0.0
        out["leakage"] = min(1.0, (1.0 if leaked else 0.0) + copy + 2.0 * repetition)
        return out


def _rows(prompts, completions, kwargs) -> list[dict]:
    n = len(completions)
    cols = {k: v for k, v in kwargs.items() if isinstance(v, (list, tuple)) and len(v) == n}
    if "query" not in cols:
        raise ValueError("query-rewrite rewards need a 'query' column (the original query) in the dataset; the "
                         f"reward got columns {sorted(cols)}. See trl_ext.rewards.query_rewrite for the row schema.")
    return [{k: v[i] for k, v in cols.items()} for i in range(n)]


class _RewriteReward:
    """Base: memoises components per (row, rewrite) within one call, logs per-component means through TRL."""

    component = "format"
    default_name = "query_rewrite"

    def __init__(self, corpus=BUILTIN_CORPUS, **scorer_kwargs):
        self.scorer = RewriteScorer(corpus, **scorer_kwargs)
        self.__name__ = self.default_name

    def _components(self, completions, rows) -> list[dict]:
        memo: dict = {}
        out = []
        for row, completion in zip(rows, completions):
            key = (row.get("query"), row.get("context"), str(row.get("gold_doc_ids")), completion_text(completion))
            if key not in memo:
                memo[key] = self.scorer.score(row, completion)
            out.append(memo[key])
        return out

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float | None]:
        rows = _rows(prompts, completions, kwargs)
        comps = self._components(completions, rows)
        return [self.value(c) for c in comps]

    def value(self, comps: dict) -> float | None:
        v = comps.get(self.component)
        return None if v is None else (-v if self.component in PENALTIES else float(v))


def _component_class(name: str, component: str, doc: str):
    cls = type(name, (_RewriteReward,), {"component": component, "default_name": f"query_rewrite_{component}",
                                         "__doc__": doc, "__module__": __name__})
    return cls


FormatReward = _component_class("FormatReward", "format", "1.0 when the completion passes the format gate, else 0.0.")
RankReward = _component_class("RankReward", "rank", "Rank of the best gold document shaped into [0, 1] (RANK_TIERS).")
RecallReward = _component_class("RecallReward", "recall", "Recall@k_recall of the gold documents.")
NDCGReward = _component_class("NDCGReward", "ndcg", "NDCG@k_ndcg of the gold documents.")
MRRReward = _component_class("MRRReward", "mrr", "MRR@k_mrr of the gold documents.")
GainReward = _component_class("GainReward", "gain", "Rank reward of the rewrite minus that of the original query.")
SlotCoverageReward = _component_class("SlotCoverageReward", "slots", "Share of required slots the rewrite states.")
FaithfulnessReward = _component_class("FaithfulnessReward", "faithfulness",
                                      "Share of the original query's content words the rewrite keeps.")
ReferenceF1Reward = _component_class("ReferenceF1Reward", "reference_f1", "Best token F1 against reference_rewrites.")
LengthPenalty = _component_class("LengthPenalty", "length", "Minus the overlength penalty in [0, 1].")
LeakagePenalty = _component_class("LeakagePenalty", "leakage",
                                  "Minus the leakage penalty: answer terms, gold-document n-gram copies, repetition.")
HallucinationPenalty = _component_class("HallucinationPenalty", "hallucination",
                                        "Minus the share of invented tokens (in neither query, context nor corpus).")


class QueryRewriteReward(_RewriteReward):
    """Composite query-rewrite reward: weighted retrieval and content components minus weighted penalties.

    A completion that fails the format gate gets ``min_reward`` (by default the lowest score a valid rewrite can get);
    a row without gold documents gets ``None``. Per-component means are logged through TRL's ``log_metric`` as
    ``query_rewrite/<component>``.

    Args:
        corpus: list of ``{"id", "text"}``, JSONL path, or ``builtin:query_rewrite_corpus/corpus.jsonl`` (default).
        weights: overrides of :data:`DEFAULT_WEIGHTS` (``rank``, ``ndcg``, ``recall``, ``mrr``, ``gain``, ``slots``,
            ``faithfulness``, ``reference_f1``, ``length``, ``leakage``, ``hallucination``); 0 switches one off.
        min_reward: reward for completions that fail the format gate.
        **scorer_kwargs: see :class:`RewriteScorer`.

    Example:
        >>> reward = QueryRewriteReward()
        >>> reward(prompts=None, completions=["<rewrite>云雀CRM客户画像的数据导出方法</rewrite>", "随便"],
        ...        query=["数据怎么导出来？"] * 2, context=["当前页面：云雀CRM > 客户画像"] * 2,
        ...        gold_doc_ids=[["crm-0-export"]] * 2)  # doctest: +SKIP
    """

    default_name = "query_rewrite"

    def __init__(self, corpus=BUILTIN_CORPUS, weights: dict | None = None, min_reward: float | None = None,
                 **scorer_kwargs):
        super().__init__(corpus, **scorer_kwargs)
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown QueryRewriteReward weight(s) {sorted(unknown)}; valid: {sorted(DEFAULT_WEIGHTS)}")
        self.weights = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in (weights or {}).items()}}
        lowest = -sum(self.weights[p] for p in PENALTIES) - self.weights["gain"]
        self.min_reward = float(lowest if min_reward is None else min_reward)

    def value(self, comps: dict) -> float | None:
        if comps["format"] == 0.0:
            return self.min_reward
        if comps.get("rank") is None:
            return None
        total = 0.0
        for name, w in self.weights.items():
            v = comps.get(name)
            if v is not None and w:
                total += -w * v if name in PENALTIES else w * v
        return total

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float | None]:
        rows = _rows(prompts, completions, kwargs)
        comps = self._components(completions, rows)
        rewards = [self.value(c) for c in comps]
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            sums: dict = defaultdict(list)
            for c in comps:
                for name in COMPONENTS:
                    v = c.get(name)
                    if v is not None and not (isinstance(v, float) and math.isnan(v)):
                        sums[name].append(float(v))
            for name in COMPONENTS:
                if sums[name]:
                    log_metric(f"query_rewrite/{name}", sum(sums[name]) / len(sums[name]))
        return rewards
