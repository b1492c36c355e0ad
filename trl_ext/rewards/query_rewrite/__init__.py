"""Query-rewrite rewards for RAG with TRL's reward signature, their BM25 retriever and the bundled benchmark's paths.

Dataset row schema (columns arrive as keyword arguments, one value per completion):

- `query` (`str`): the original query. Required.
- `context` (`str`, optional): dialogue, page, role or date text the rewrite may draw entities from.
- `gold_doc_ids` (`list[str]`): ids of the corpus documents the query should retrieve. Rows without any are not
  scored on retrieval (`None`).
- `required_slots` (`dict`, optional): slot -> value or list of accepted synonyms the rewrite must state.
- `answer_terms` (`list[str]`, optional): terms of the answer; a rewrite must not contain them (values of a gold
  document in neither query nor context are caught without them).
- `reference_rewrites` (`list[str]`, optional): good rewrites: the length budget and a low-weight token F1.

The corpus (a list of `{"id", "text"}` or BEIR `{"_id", "title", "text"}`, a JSONL path or
`builtin:query_rewrite_corpus`) is indexed once with BM25. The formats, with an example on a user's own files, are
documented in `docs/query_rewrite.md`.
Completions may be plain strings or chat messages; a completion holds one rewrite, as plain text,
`<rewrite>...</rewrite>` or `{"query": "..."}`.

`QueryRewriteReward` (in `rewards.py`) is the weighted composite and the reward to train on; each of its components
is also a reward class of its own (in `components.py`) for logging and study, as each alone prefers some hack;
`RewriteScorer` (in `scorer.py`) computes them all.
"""

from trl_ext.rewards.query_rewrite.components import (
    FaithfulnessReward,
    FormatReward,
    GainReward,
    HallucinationPenalty,
    LeakagePenalty,
    LengthPenalty,
    MRRReward,
    NDCGReward,
    RankReward,
    RecallReward,
    ReferenceF1Reward,
    RewriteComponentReward,
    SlotCoverageReward,
)
from trl_ext.rewards.query_rewrite.retrieval import BM25Index, document_text, load_corpus, shared_index
from trl_ext.rewards.query_rewrite.rewards import DEFAULT_WEIGHTS, QueryRewriteReward
from trl_ext.rewards.query_rewrite.scorer import BUILTIN_CORPUS, COMPONENTS, RewriteScorer, rank_reward
from trl_ext.rewards.query_rewrite.text import check_format, extract_rewrite, language, tokenize

__all__ = [
    "BM25Index",
    "BUILTIN_CORPUS",
    "COMPONENTS",
    "DEFAULT_WEIGHTS",
    "FaithfulnessReward",
    "FormatReward",
    "GainReward",
    "HallucinationPenalty",
    "LeakagePenalty",
    "LengthPenalty",
    "MRRReward",
    "NDCGReward",
    "QueryRewriteReward",
    "RankReward",
    "RecallReward",
    "ReferenceF1Reward",
    "RewriteComponentReward",
    "RewriteScorer",
    "SlotCoverageReward",
    "check_format",
    "document_text",
    "extract_rewrite",
    "language",
    "load_corpus",
    "rank_reward",
    "shared_index",
    "tokenize",
]
