"""Query-rewrite rewards for RAG with TRL's reward signature, their BM25 retriever and the bundled benchmark's paths.

See :mod:`trl_ext.rewards.query_rewrite.rewards` for the dataset row schema and the components.
"""

from trl_ext.rewards.query_rewrite.retrieval import BM25Index, load_corpus, shared_index
from trl_ext.rewards.query_rewrite.rewards import (
    BUILTIN_CORPUS,
    DEFAULT_WEIGHTS,
    FaithfulnessReward,
    FormatReward,
    GainReward,
    HallucinationPenalty,
    LeakagePenalty,
    LengthPenalty,
    MRRReward,
    NDCGReward,
    QueryRewriteReward,
    RankReward,
    RecallReward,
    ReferenceF1Reward,
    RewriteScorer,
    SlotCoverageReward,
    rank_reward,
)
from trl_ext.rewards.query_rewrite.text import check_format, extract_rewrite, language, tokenize

__all__ = [
    "BM25Index", "BUILTIN_CORPUS", "DEFAULT_WEIGHTS", "FaithfulnessReward", "FormatReward", "GainReward",
    "HallucinationPenalty", "LeakagePenalty", "LengthPenalty", "MRRReward", "NDCGReward", "QueryRewriteReward",
    "RankReward", "RecallReward", "ReferenceF1Reward", "RewriteScorer", "SlotCoverageReward", "check_format",
    "extract_rewrite", "language", "load_corpus", "rank_reward", "shared_index", "tokenize",
]
