"""Text handling for query-rewrite rewards: tokenization (Chinese + English), format gate, language detection."""

from __future__ import annotations

import json
import logging
import re
import threading

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_RUN = re.compile(rf"[{_CJK}]+|[A-Za-z0-9]+(?:[.+#-][A-Za-z0-9]+)*")
_CJK_CHAR = re.compile(rf"[{_CJK}]")
_LATIN_CHAR = re.compile(r"[A-Za-z]")
_REWRITE_TAG = re.compile(r"<rewrite>(.*?)</rewrite>", re.S)
_THINK = re.compile(r"^\s*<think>.*?</think>", re.S)

#: Function words and interrogatives: never scored, never counted as content.
STOPWORDS = frozenset(
    "的 了 吗 呢 吧 啊 呀 么 嘛 是 在 和 与 及 或 我 你 他 她 它 我们 你们 这 那 这个 那个 这些 那些 这里 那里 这儿 "
    "一下 一个 有 就 都 也 还 又 把 被 给 让 从 对 请 帮 帮我 能 能不能 可以 会 要 想 该 得 着 过 "
    "a an the of to in on at for and or is are was were be do does did how what why which who where when "
    "i you we it this that these those my me can could should would please with by from as about".split()
)
#: Vague words a rewrite may drop: interrogatives and placeholders carry no content of the original query.
VAGUE = frozenset(
    "怎么 怎么样 怎样 如何 什么 为什么 为何 哪里 哪儿 哪个 多少 咋 咋办 怎么办 弄 搞 用 办 看 那块 这块 东西 情况 "
    "一直 老是 总是 啥 数 搞定 操作 怎么弄 怎么搞 怎么回事 有问题 问题 出来 下来 起来 一栏 意思 "
    "thing stuff use work doing".split()
)
#: Phrases that mark an answer instead of a query.
ANSWER_MARKERS = (
    "答：",
    "答:",
    "答案",
    "回答：",
    "您可以",
    "你可以",
    "首先",
    "步骤如下",
    "解决方法：",
    "answer:",
    "you can ",
    "you should ",
    "to do this",
    "here is",
    "here's",
)

_JIEBA = None
_JIEBA_LOCK = threading.Lock()


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


def tokenize(text: str, keep_stopwords: bool = False) -> list[str]:
    """Lower-cased tokens: jieba words for Chinese runs, alphanumeric words for Latin text; stopwords dropped."""
    tokens: list[str] = []
    for run in _RUN.findall(text or ""):
        if _CJK_CHAR.match(run):
            words = _jieba().lcut(run, HMM=True)
        else:
            words = [run.lower()]
        tokens.extend(w for w in words if w.strip() and (keep_stopwords or w not in STOPWORDS))
    return tokens


def content_tokens(text: str) -> list[str]:
    """Tokens without stopwords and vague words: what a query is about."""
    return [t for t in tokenize(text) if t not in VAGUE]


def language(text: str) -> str:
    """`"zh"` when CJK characters make at least 30 % of the letters (three Latin letters counting as one), else `"en"`
    when there are Latin letters, `""` when there are neither."""
    cjk = len(_CJK_CHAR.findall(text or ""))
    latin = len(_LATIN_CHAR.findall(text or ""))
    if cjk == 0 and latin == 0:
        return ""
    return "zh" if cjk / (cjk + latin / 3.0) >= 0.3 else "en"


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


def check_format(text: str, query: str, max_chars: int = 200) -> tuple[str | None, str]:
    """Format gate: one rewrite, one line, at most `max_chars`, same language as `query`, not an answer.

    Args:
        text (`str`):
            The completion's text.
        query (`str`):
            The original query; the rewrite must be in its language.
        max_chars (`int`, *optional*, defaults to `200`):
            Longest accepted rewrite.

    Returns:
        `tuple[str | None, str]`: The rewrite and `"ok"`, or `None` and the reason it failed (`"multi_line"`,
        `"wrong_language"`, `"answer_not_query"`, ...).
    """
    rewrite, reason = extract_rewrite(text)
    if rewrite is None:
        return None, reason
    if len(rewrite) > max_chars:
        return None, "too_long"
    if not tokenize(rewrite, keep_stopwords=True):
        return None, "empty"
    query_language = language(query)
    if query_language and language(rewrite) != query_language:
        return None, "wrong_language"
    lowered = rewrite.lower()
    if any(lowered.startswith(m) or (len(m) > 3 and m in lowered) for m in ANSWER_MARKERS):
        return None, "answer_not_query"
    return rewrite, "ok"
