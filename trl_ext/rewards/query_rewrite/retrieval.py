"""The fixed retriever the rewards score against: BM25 (`bm25s`) over a corpus of `{"id", "text"}` documents.

Corpus files are JSONL, one document a line: `{"id": ..., "text": ...}`, or BEIR's `{"_id": ..., "title": ...,
"text": ...}`; a non-empty `title` is indexed with the text. See `docs/query_rewrite.md`.
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from trl_ext.rewards.query_rewrite.text import tokenize


def load_corpus(corpus) -> list[dict]:
    """A corpus as a list of `{"id", "title", "text"}`.

    Args:
        corpus (`list[dict]` or `str`):
            The documents, a JSONL path, a folder holding one `.jsonl` (a BEIR dataset folder holding `corpus.jsonl`
            works) or `builtin:<asset>[/file.jsonl]`. A document has `id` (or BEIR's `_id`), `text` and optionally
            `title`.

    Returns:
        `list[dict]`: The documents with string `id`, `title` (`""` when absent) and `text`.
    """
    if isinstance(corpus, (str, os.PathLike)):
        from trl_ext.assets import resolve_builtin

        path = Path(resolve_builtin(str(corpus)))
        if path.is_dir():
            files = [path / "corpus.jsonl"] if (path / "corpus.jsonl").is_file() else sorted(path.glob("*.jsonl"))
            if len(files) != 1:
                raise ValueError(
                    f"corpus directory {path} must hold corpus.jsonl or exactly one .jsonl file, found {len(files)}; "
                    "pass the file path instead."
                )
            path = files[0]
        if not path.is_file():
            raise FileNotFoundError(
                f"corpus file {path} does not exist; pass a JSONL file of {{'id', 'text'}} (or BEIR "
                "{'_id', 'title', 'text'}) lines or builtin:query_rewrite_corpus."
            )
        with open(path, encoding="utf-8") as fh:
            corpus = [json.loads(line) for line in fh if line.strip()]
    if not isinstance(corpus, (list, tuple)) or not corpus:
        raise ValueError("corpus must be a non-empty list of {'id': ..., 'text': ...} documents or a JSONL path.")
    seen = set()
    out = []
    for i, doc in enumerate(corpus):
        doc_id = doc.get("id", doc.get("_id")) if isinstance(doc, dict) else None
        if doc_id is None or "text" not in doc:
            raise ValueError(
                f"corpus document {i} must be a dict with 'id' (or BEIR's '_id') and 'text' keys, got {doc!r:.80}"
            )
        if str(doc_id) in seen:
            raise ValueError(f"corpus document id {doc_id!r} appears twice; ids must be unique.")
        seen.add(str(doc_id))
        out.append({"id": str(doc_id), "title": str(doc.get("title") or ""), "text": str(doc["text"])})
    return out


def document_text(doc: dict) -> str:
    """What the index reads of a document: its title (when it has one) and its text."""
    return f"{doc['title']}\n{doc['text']}" if doc.get("title") else doc["text"]


class BM25Index:
    """BM25 over `corpus` with query tokens deduplicated (a repeated token adds nothing).

    Ranks are pessimistic: a document tied with the gold one counts as ranked above it. A gold document the query
    shares no term with is not retrieved at all: rank `len(corpus) + 1`.
    """

    def __init__(self, corpus, k1: float = 1.5, b: float = 0.75):
        import bm25s

        self.docs = load_corpus(corpus)
        self.ids = [d["id"] for d in self.docs]
        self.position = {doc_id: i for i, doc_id in enumerate(self.ids)}
        self.doc_tokens = [tokenize(document_text(d)) for d in self.docs]
        self.vocab = frozenset(t for toks in self.doc_tokens for t in toks)
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self._bm25.index([toks or ["<empty>"] for toks in self.doc_tokens], show_progress=False)
        self._zeros = np.zeros(len(self.docs), dtype=np.float32)
        self.scores = lru_cache(maxsize=8192)(self._scores)

    def _scores(self, query: str) -> np.ndarray:
        tokens = [t for t in dict.fromkeys(tokenize(query)) if t in self.vocab]  # dedup, keep order
        if not tokens:
            return self._zeros
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)

    def ranking(self, query: str) -> list[str]:
        scores = self.scores(query)
        return [self.ids[i] for i in np.argsort(-scores, kind="stable")]

    def gold_ranks(self, query: str, gold_ids) -> list[int]:
        """1-based pessimistic rank of each gold document (`len(corpus) + 1` when its score is 0)."""
        scores = self.scores(query)
        ranks = []
        for doc_id in gold_ids:
            if doc_id not in self.position:
                raise KeyError(
                    f"gold document id {doc_id!r} is not in the corpus; check gold_doc_ids against the corpus ids."
                )
            s = scores[self.position[doc_id]]
            ranks.append(len(scores) + 1 if s <= 0 else int((scores >= s).sum()))
        return ranks

    def metrics(self, query: str, gold_ids, k_recall: int = 5, k_ndcg: int = 10, k_mrr: int = 10) -> dict:
        """`rank` (best gold; `inf` when none is retrieved), `recall` @k_recall, `ndcg` @k_ndcg and `mrr` @k_mrr
        for binary relevance."""
        n = len(self.docs)
        ranks = sorted(r if r <= n else math.inf for r in self.gold_ranks(query, gold_ids))  # inf: not retrieved
        # ties may give several gold documents one pessimistic rank: spread them so DCG stays <= IDCG
        placed = []
        for r in ranks:
            placed.append(max(r, placed[-1] + 1) if placed else r)
        best = placed[0]
        dcg = sum(1.0 / math.log2(r + 1) for r in placed if r <= k_ndcg)
        idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(placed), k_ndcg)))
        return {
            "rank": best,
            "recall": sum(r <= k_recall for r in placed) / len(placed),
            "ndcg": dcg / idcg if idcg else 0.0,
            "mrr": 1.0 / best if best <= k_mrr else 0.0,
        }


_INDEXES: dict = {}


def shared_index(corpus, k1: float = 1.5, b: float = 0.75) -> BM25Index:
    """One index per corpus path and BM25 parameters in this process (reward classes share it)."""
    if isinstance(corpus, (str, os.PathLike)):
        key = (str(corpus), k1, b)
        if key not in _INDEXES:
            _INDEXES[key] = BM25Index(corpus, k1=k1, b=b)
        return _INDEXES[key]
    return BM25Index(corpus, k1=k1, b=b)
