"""Query-rewrite rewards (see :mod:`trl_ext.rewards.query_rewrite.rewards`) and their BM25 retriever."""

from trl_ext.rewards.query_rewrite.retrieval import BM25Index, load_corpus, shared_index
