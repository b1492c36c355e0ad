"""Text handling for query-rewrite rewards: tokenization (Chinese + English), format gate, language detection.

English words are lower-cased, stopwords (NLTK's English list as shipped by `bm25s`) dropped and the rest stemmed with
the Snowball English stemmer (`PyStemmer`, the stemmer `bm25s` supports); identifiers (`pg_dump`, `v1.2`, `Ctrl+K7`,
`crm-0-export`) stay whole and unstemmed. Chinese runs are segmented with jieba. Retrieval, slot, faithfulness,
hallucination and length checks all use these tokens.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from functools import lru_cache

from bm25s.stopwords import STOPWORDS_EN_PLUS

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_LATIN_WORD = r"[A-Za-z0-9]+(?:[_.+#-][A-Za-z0-9]+)*(?:['\u2019][A-Za-z]+)?"
_RUN = re.compile(rf"[{_CJK}]+|{_LATIN_WORD}")
_CJK_CHAR = re.compile(rf"[{_CJK}]")
_LATIN_CHAR = re.compile(r"[A-Za-z]")
_REWRITE_TAG = re.compile(r"<rewrite>(.*?)</rewrite>", re.S)
_THINK = re.compile(r"^\s*<think>.*?</think>", re.S)

#: Chinese function words and interrogatives, plus NLTK's English stopwords: never scored, never content.
STOPWORDS = (
    frozenset(
        "的 了 吗 呢 吧 啊 呀 么 嘛 是 在 和 与 及 或 我 你 他 她 它 我们 你们 这 那 这个 那个 这些 那些 "
        "这里 那里 这儿 一下 一个 有 就 都 也 还 又 把 被 给 让 从 对 "
        "请 帮 帮我 能 能不能 可以 会 要 想 该 得 着 过 ".split()
    )
    | frozenset(w.replace("'", "") for w in STOPWORDS_EN_PLUS)
    | frozenset(STOPWORDS_EN_PLUS)
    | frozenset(
        # query fillers NLTK's list lacks
        "can could would shall may might must please one ones much many make makes made get gets got thing things "
        "stuff lot lots".split()
    )
)
#: Vague words a rewrite may drop: interrogatives, placeholders and query fillers carry no content of the query.
VAGUE = frozenset(
    "怎么 怎么样 怎样 如何 什么 为什么 为何 哪里 哪儿 哪个 多少 咋 咋办 怎么办 弄 搞 用 办 看 那块 这块 东西 情况 "
    "一直 老是 总是 啥 数 搞定 操作 怎么弄 怎么搞 怎么回事 有问题 问题 出来 下来 起来 一栏 意思 "
    "use using used work working doing way ways keep keeps kind anything something somewhere anyone someone "
    "help need want know".split()
)
#: Phrases that mark an answer instead of a query, per language; they count at the start of the text or of a
#: sentence only, so "Where is the guide?" does not match "here is".
ANSWER_MARKERS = {
    "zh": (
        "答：",
        "答:",
        "答案是",
        "答案：",
        "回答：",
        "您可以",
        "你可以",
        "首先",
        "步骤如下",
        "解决方法：",
        "解决方法:",
    ),
    "en": (
        "answer:",
        "the answer is",
        "you can",
        "you should",
        "you need to",
        "you have to",
        "to do this",
        "here is",
        "here's",
        "here are",
        "first,",
        "step 1",
        "sure,",
        "sure!",
    ),
}
_SENTENCE_START = r"(?:^|[.!?;:\u3002\uff01\uff1f\uff1b\uff1a]\s*)"
_MARKER_RE = re.compile(
    _SENTENCE_START
    + "(?:"
    + "|".join(
        [re.escape(m) for m in ANSWER_MARKERS["zh"]]
        + [re.escape(m) + (r"(?=\W|$)" if m[-1].isalnum() else "") for m in ANSWER_MARKERS["en"]]
    )
    + ")",
    re.I,
)

_JIEBA = None
_JIEBA_LOCK = threading.Lock()
_STEMMER = None


def _jieba():
    global _JIEBA
    if _JIEBA is None:
        with _JIEBA_LOCK:
            if _JIEBA is None:
                import jieba

                jieba.setLogLevel(logging.WARNING)
                tokenizer = jieba.Tokenizer()
                tokenizer.initialize()
                _JIEBA = tokenizer
    return _JIEBA


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """Snowball English stem of a lower-case alphabetic word (`restarting` -> `restart`); other tokens unchanged."""
    global _STEMMER
    if not word.isascii() or not word.isalpha():
        return word
    if _STEMMER is None:
        import Stemmer

        _STEMMER = Stemmer.Stemmer("english")
    return _STEMMER.stemWord(word)


def _latin_word(run: str) -> str:
    """A Latin run without its clitic: `what's` -> `what`, `don't` -> `don't` (a stopword as a whole)."""
    word = run.lower().replace("\u2019", "'")
    if "'" in word and word not in STOPWORDS:
        word = word.split("'", 1)[0]
    return word


@lru_cache(maxsize=65536)
def _surface_words(text: str) -> tuple[str, ...]:
    """Lower-cased surface words: jieba words of Chinese runs, Latin words and identifiers, stopwords included
    (memoised: rewards tokenize the same query, context and reference many times)."""
    words: list[str] = []
    for run in _RUN.findall(text or ""):
        if _CJK_CHAR.match(run):
            words.extend(w for w in _jieba().lcut(run, HMM=True) if w.strip())
        else:
            words.append(_latin_word(run))
    return tuple(words)


def tokenize(text: str, keep_stopwords: bool = False) -> list[str]:
    """Retrieval tokens: jieba words for Chinese runs; stemmed lower-case words and whole identifiers for Latin text;
    stopwords dropped unless `keep_stopwords`."""
    return [stem(w) for w in _surface_words(text) if keep_stopwords or w not in STOPWORDS]


def content_tokens(text: str) -> list[str]:
    """Tokens without stopwords and vague words: what a query is about."""
    return [stem(w) for w in _surface_words(text) if w not in STOPWORDS and w not in VAGUE]


def language(text: str) -> str:
    """`"zh"` when CJK characters make at least 30 % of the letters (three Latin letters counting as one), else `"en"`
    when there are Latin letters, `""` when there are neither."""
    cjk = len(_CJK_CHAR.findall(text or ""))
    latin = len(_LATIN_CHAR.findall(text or ""))
    if cjk == 0 and latin == 0:
        return ""
    return "zh" if cjk / (cjk + latin / 3.0) >= 0.3 else "en"


def in_language_of(rewrite: str, query: str, context: str = "") -> bool:
    """Whether `rewrite` is written in the language of `query`; names copied from the query or context do not count.

    Words of the rewrite that also occur in the query or context (product names such as `云雀CRM` in an English
    query) are left out; of the other words, those in the query's script must not be outnumbered by those in the
    other script. Mixed English/Chinese rewrites with the same names therefore pass.
    """
    query_language = language(query)
    if not query_language:
        return True
    source = set(_surface_words(f"{query} {context}"))
    own = other = 0
    for word in _surface_words(rewrite):
        if word in source or not (_CJK_CHAR.search(word) or _LATIN_CHAR.search(word)):
            continue
        is_cjk = bool(_CJK_CHAR.search(word))
        if is_cjk == (query_language == "zh"):
            own += 1
        else:
            other += 1
    return own >= other


def is_answer(rewrite: str) -> bool:
    """Whether a rewrite opens, or has a sentence that opens, with an answer marker (`ANSWER_MARKERS`)."""
    return _MARKER_RE.search(rewrite.strip()) is not None


def extract_rewrite(text: str) -> tuple[str | None, str]:
    """The single rewrite in a completion, or `(None, reason)`.

    Accepted: a plain one-line query, `<rewrite>query</rewrite>`, or a JSON object `{"query": "..."}`; an optional
    leading `<think>...</think>` block is ignored.
    """
    text = _THINK.sub("", text or "").strip()
    if "<rewrite>" in text or "</rewrite>" in text:
        found = _REWRITE_TAG.findall(text)
        if len(found) != 1:
            return None, "multiple_rewrites" if len(found) > 1 else "malformed_tag"
        if _REWRITE_TAG.sub("", text).strip():
            return None, "text_outside_tag"
        text = found[0].strip()
    elif text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return None, "malformed_json"
        if not isinstance(obj, dict) or not isinstance(obj.get("query"), str) or len(obj) != 1:
            return None, "malformed_json"
        text = obj["query"].strip()
    if not text:
        return None, "empty"
    if "\n" in text or "\r" in text:
        return None, "multi_line"
    return text, "ok"


def check_format(text: str, query: str, max_chars: int = 200, context: str = "", max_tokens: int = 40):
    """Format gate: one rewrite, one line, at most `max_chars` and `max_tokens`, in the language of `query`, not an
    answer.

    Args:
        text (`str`):
            The completion's text.
        query (`str`):
            The original query; the rewrite must be in its language (see `in_language_of`).
        max_chars (`int`, *optional*, defaults to `200`):
            Longest accepted rewrite in characters.
        context (`str`, *optional*, defaults to `""`):
            The row's context: names copied from it do not count against the language check.
        max_tokens (`int`, *optional*, defaults to `40`):
            Longest accepted rewrite in words of the retrieval tokenizer (stopwords included), so that Chinese and
            English get the same room.

    Returns:
        `tuple[str | None, str]`: The rewrite and `"ok"`, or `None` and the reason it failed (`"multi_line"`,
        `"wrong_language"`, `"answer_not_query"`, ...).
    """
    rewrite, reason = extract_rewrite(text)
    if rewrite is None:
        return None, reason
    words = tokenize(rewrite, keep_stopwords=True)
    if len(rewrite) > max_chars or len(words) > max_tokens:
        return None, "too_long"
    if not words:
        return None, "empty"
    if not in_language_of(rewrite, query, context):
        return None, "wrong_language"
    if is_answer(rewrite):
        return None, "answer_not_query"
    return rewrite, "ok"
