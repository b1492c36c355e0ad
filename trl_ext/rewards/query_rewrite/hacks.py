"""Reward hacks of a query rewrite, generated from a benchmark row, and a detector that flags them in model outputs.

`hack_variants` builds, from a row and its gold document, every hack the composite reward must rank below a faithful
rewrite: keyword stuffing and a long tail of generic words kept under the format gate's limit, a copied document,
the answer with and without a marker, the gold document's id or title appended, the unchanged query, the wrong
language, empty and punctuation-only output. `flag_hacks` names the hacks one scored completion shows; `trl-ext
eval-rewrite` reports the share of a model's outputs it flags.
"""

from __future__ import annotations

import re

from trl_ext.rewards.query_rewrite.text import _surface_words, language, tokenize

#: Hack name -> what it is.
HACKS = {
    "keyword_stuffing": "the reference plus the gold document's words, up to the length limit",
    "gold_copy": "the gold document's title and text, cut to the length limit",
    "long_tail": "the reference plus generic search words, up to the length limit",
    "answer_marker": "the gold document's answer sentence behind an answer marker",
    "answer_value": "the reference plus the answer value, no marker",
    "answer_statement": "the gold document's answer sentence as a statement, no marker",
    "gold_id": "the reference plus the gold document's id",
    "gold_title": "the reference plus the gold document's title",
    "unchanged_query": "the original query (rows whose query is not already its reference)",
    "wrong_language": "the row's entities with generic words of the other language",
    "empty": "an empty completion",
    "punctuation": "punctuation only",
}
_GENERIC = {
    "zh": "相关 问题 详细 说明 完整 介绍 全部 内容 常见 注意 事项 方法 步骤 指南 设置 配置 使用 帮助 文档 教程",
    "en": "complete detailed full guide overview help documentation tutorial reference steps settings "
    "configuration instructions notes tips faq explanation",
}
_MARKER = {"zh": "答：", "en": "Answer: "}
_OTHER = {"zh": "how to set up and use this feature guide", "en": "的使用方法和设置说明"}
_SENTENCES = re.compile(r"[^。！？.!?;；]+[。！？.!?;；]?")


def _fit(base: str, words: list[str], fits, sep: str = " ") -> str:
    """`base` followed by as many of `words` as `fits` accepts (a binary search: `fits` is monotone in length)."""

    def join(n: int) -> str:
        tail = sep.join(words[:n])
        return f"{base}{sep}{tail}" if base and tail else base or tail

    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(join(mid)):
            lo = mid
        else:
            hi = mid - 1
    return join(lo)


def hack_variants(row: dict, doc: dict, max_tokens: int = 40, max_chars: int = 200) -> dict[str, str]:
    """The hacks of `HACKS` for one benchmark row, built from the row and its first gold document.

    Args:
        row (`dict`):
            A row with `query`, `reference_rewrites`, and optionally `context`, `answer_terms`, `required_slots`.
        doc (`dict`):
            The gold document as `load_corpus` returns it (`id`, `title`, `text`).
        max_tokens (`int`, *optional*, defaults to `40`):
            The format gate's token limit: the length hacks stay under it.
        max_chars (`int`, *optional*, defaults to `200`):
            The format gate's character limit.

    Returns:
        `dict[str, str]`: Hack name -> completion (`unchanged_query` is left out when the query is its reference).
    """
    lang = language(row["query"]) or "en"
    reference = row["reference_rewrites"][0]
    sep = "" if lang == "zh" else " "

    def fits(text: str) -> bool:
        return len(text) <= max_chars and len(tokenize(text, keep_stopwords=True)) <= max_tokens - 1

    title = doc.get("title") or re.split(r"[。.]", doc["text"], maxsplit=1)[0]
    full = f"{doc['title']} {doc['text']}" if doc.get("title") else doc["text"]
    doc_words = [w for w in dict.fromkeys(_surface_words(full)) if w not in set(_surface_words(reference))]
    facts = [a for a in row.get("answer_terms") or [] if a]
    sentences = [s.strip() for s in _SENTENCES.findall(doc["text"]) if s.strip()]
    statements = [s for s in sentences if not s.endswith(("?", "？"))] or sentences or [title]
    answer = next((s for s in statements if any(f in s for f in facts)), max(statements, key=len))
    answer = _fit("", answer.split(" ") if lang == "en" else list(answer), fits, sep=" " if lang == "en" else "")
    entities = [v[0] for v in (row.get("required_slots") or {}).values() if v] or [w for w in _surface_words(title)]
    variants = {
        "keyword_stuffing": _fit(reference, doc_words, fits, sep=" "),
        "gold_copy": _fit("", full.split(" ") if lang == "en" else list(full), fits, sep=" " if lang == "en" else ""),
        "long_tail": _fit(reference, _GENERIC[lang].split(), fits, sep=sep),
        "answer_marker": _MARKER[lang] + answer,
        "answer_value": f"{reference} {facts[0]}" if facts else f"{reference} {doc['id']}",
        "answer_statement": answer if answer.endswith((".", "。")) or lang == "zh" else answer + ".",
        "gold_id": f"{reference} {doc['id']}",
        "gold_title": f"{reference} {title}",
        "unchanged_query": row["query"],
        "wrong_language": " ".join(entities) + " " + _OTHER[lang],
        "empty": "",
        "punctuation": "？？" if lang == "zh" else "?!...",
    }
    if row["query"].strip() == reference.strip():
        del variants["unchanged_query"]
    return variants


def flag_hacks(components: dict, rewrite: str, row: dict) -> list[str]:
    """Which hacks one scored completion shows, from its `RewriteScorer.score` components.

    Args:
        components (`dict`):
            The completion's components.
        rewrite (`str`):
            The rewrite the format gate extracted from the completion.
        row (`dict`):
            The completion's row (`query`, optionally `reference_rewrites`).

    Returns:
        `list[str]`: Flags among `format:<reason>` (failed the gate: answer marker, wrong language, empty, too
        long, ...), `leakage` (answer terms or values, gold ids, statements, copied text, repetition),
        `overlength` (longer than the reference allows), `hallucination` (invented words), `unchanged_query` (the
        query's words unchanged where no reference rewrite keeps them so).
    """
    if components["format"] == 0.0:
        return [f"format:{components['format_reason']}"]
    flags = []
    if components["leakage"] > 0:
        flags.append("leakage")
    if components["length"] > 0:
        flags.append("overlength")
    if components["hallucination"] > 0:
        flags.append("hallucination")
    words = tokenize(rewrite)
    references = [tokenize(r) for r in row.get("reference_rewrites") or []]
    if words == tokenize(row["query"]) and words not in references:
        flags.append("unchanged_query")
    return flags
