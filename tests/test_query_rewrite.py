"""Query-rewrite reward components on hand-made examples: the expected numbers are worked out in the comments."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from trl_ext.rewards.query_rewrite import (
    BM25Index,
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
    SlotCoverageReward,
    check_format,
    language,
    rank_reward,
    tokenize,
)

DOCS = [
    {"id": "d1", "text": "云雀CRM 客户画像 数据导出 说明，单次最多导出2420条"},
    {"id": "d2", "text": "云雀CRM 商机管理 数据导出 说明，单次最多导出5000条"},
    {"id": "d3", "text": "青鸟OA 请假审批 流程设置"},
    {"id": "d4", "text": "reset the password of the vpn client"},
    {"id": "d5", "text": "install the vpn client on linux"},
]


def call(reward, completions, **row):
    """Score completions that all belong to one row."""
    return reward(
        prompts=[None] * len(completions),
        completions=completions,
        **{k: [v] * len(completions) for k, v in row.items()},
    )


def one(reward, completion, **row):
    return call(reward, [completion], **row)[0]


# --- tokenization, format gate ----------------------------------------------------------------------------------


def test_tokenize_segments_chinese_and_lowercases_english_and_drops_stopwords():
    assert tokenize("云雀CRM客户画像的数据导出") == ["云雀", "crm", "客户", "画像", "数据", "导出"]
    assert tokenize("Reset the VPN password") == ["reset", "vpn", "password"]
    assert language("云雀CRM客户画像") == "zh" and language("reset VPN") == "en" and language("123") == ""


def test_english_words_are_stemmed_identifiers_kept_and_stopwords_dropped():
    # Snowball stems: "pods restarting" meets "pod restarts" in a document
    assert tokenize("pods restarting") == tokenize("Pod restarts") == ["pod", "restart"]
    # identifiers stay whole and unstemmed; the clitic of "What's" and NLTK's stopwords go
    assert tokenize("What's the pg_dump flag for v1.2 exports?") == ["pg_dump", "flag", "v1.2", "export"]
    assert tokenize("which ones make much difference") == ["differ"]


def test_stemming_ranks_the_gold_document_first_and_keeps_slots_and_hallucination_consistent():
    docs = [
        {"id": "gold", "title": "Nimbus pod restarts", "text": "Why a pod restarts and how to read its restart log."},
        {"id": "neg1", "text": "Pods overview for Nimbus clusters."},
        {"id": "neg2", "text": "Restarting the Nimbus dashboard service."},
    ]
    assert RankReward(corpus=docs)(prompts=None, completions=["Nimbus pods restarting"], query=["pods restarting"],
                                   gold_doc_ids=[["gold"]]) == [1.0]  # fmt: skip
    row = dict(query="why do they keep restarting", context="User: my Nimbus pods", gold_doc_ids=["gold"])
    assert one(HallucinationPenalty(corpus=docs), "Nimbus pod restarts", **row) == 0.0
    slots = {"object": ["pod restart"]}
    assert one(SlotCoverageReward(corpus=docs), "Nimbus pods restarting", **row, required_slots=slots) == 1.0


@pytest.mark.parametrize(
    "text, rewrite, reason",
    [
        ("云雀CRM客户画像数据导出", "云雀CRM客户画像数据导出", "ok"),
        ("<rewrite>云雀CRM客户画像数据导出</rewrite>", "云雀CRM客户画像数据导出", "ok"),
        ('{"query": "云雀CRM客户画像数据导出"}', "云雀CRM客户画像数据导出", "ok"),
        ("<think>想一想</think><rewrite>云雀CRM数据导出</rewrite>", "云雀CRM数据导出", "ok"),
        ("<rewrite>云雀CRM</rewrite><rewrite>青鸟OA</rewrite>", None, "multiple_rewrites"),
        ("<rewrite>云雀CRM数据导出", None, "malformed_tag"),
        ("改写：<rewrite>云雀CRM数据导出</rewrite>", None, "text_outside_tag"),
        ('{"query": "云雀CRM", "answer": "2420条"}', None, "malformed_json"),
        ("云雀CRM数据导出\n青鸟OA流程设置", None, "multi_line"),
        ("   ", None, "empty"),
        ("<rewrite>？？</rewrite>", None, "empty"),
        ("How to export CRM customer profile data", None, "wrong_language"),
        ("答：在设置里点导出即可", None, "answer_not_query"),
        ("您可以在页面右上角点击导出", None, "answer_not_query"),
        ("云雀CRM" + "数据导出" * 60, None, "too_long"),
        ("云雀CRM" + "数据导出" * 30, None, "too_long"),  # 61 tokens in 122 characters: the token limit
    ],
)
def test_format_gate(text, rewrite, reason):
    assert check_format(text, "数据怎么导出？") == (rewrite, reason)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Where is the Nimbus CRM export guide?", "ok"),  # contains "here is"
        ("why there is no data in the Nimbus CRM report", "ok"),
        ("things you can export from Nimbus CRM", "ok"),
        ("Here is how: open Settings", "answer_not_query"),
        ("Nimbus CRM export. You can click Export", "answer_not_query"),
        ("Answer: at most 2420 records", "answer_not_query"),
        ("Export 客户画像 from 云雀CRM", "ok"),  # names taken from the context, English around them
        ("云雀CRM客户画像的数据导出", "wrong_language"),
        ("这个系统功能的使用方法", "wrong_language"),
    ],
)
def test_english_answer_markers_match_phrases_at_sentence_starts_and_mixed_names_keep_the_language(text, reason):
    assert check_format(text, "how do I export this?", context="当前页面：云雀CRM > 客户画像")[1] == reason


def test_format_reward_is_one_for_a_valid_rewrite_and_zero_otherwise():
    reward = FormatReward(corpus=DOCS)
    assert call(reward, ["<rewrite>云雀CRM数据导出</rewrite>", "第一行\n第二行", ""], query="数据怎么导出？") == [
        1.0,
        0.0,
        0.0,
    ]
    assert reward.__name__ == "query_rewrite_format"


# --- retrieval ------------------------------------------------------------------------------------------------


def test_rank_tiers():
    assert [rank_reward(r) for r in (1, 2, 3, 4, 5, 10, 11, 20, 21, 300)] == [
        1.0,
        0.8,
        0.7,
        0.5,
        0.5,
        0.3,
        0.1,
        0.1,
        0.0,
        0.0,
    ]


def test_retrieval_components_with_a_tie_count_the_tied_document_above_the_gold_one():
    row = dict(query="数据导出", gold_doc_ids=["d1"])
    # "数据导出" matches d1 and d2 equally (same length, same terms): pessimistic rank 2
    assert one(RankReward(corpus=DOCS), "数据导出", **row) == 0.8
    assert one(MRRReward(corpus=DOCS), "数据导出", **row) == 0.5
    assert one(RecallReward(corpus=DOCS), "数据导出", **row) == 1.0
    assert one(NDCGReward(corpus=DOCS), "数据导出", **row) == pytest.approx(1 / math.log2(3))
    # naming the feature puts d1 first: every metric is 1, and the gain over the original is 1.0 - 0.8
    assert one(RankReward(corpus=DOCS), "云雀CRM客户画像数据导出", **row) == 1.0
    assert one(NDCGReward(corpus=DOCS), "云雀CRM客户画像数据导出", **row) == 1.0
    assert one(GainReward(corpus=DOCS), "云雀CRM客户画像数据导出", **row) == pytest.approx(0.2)
    # a rewrite that matches nothing ranks the gold document last: every metric 0, gain -0.8
    assert one(RankReward(corpus=DOCS), "青鸟OA流程设置", **row) == 0.0
    assert one(GainReward(corpus=DOCS), "青鸟OA流程设置", **row) == pytest.approx(-0.8)


def test_recall_and_ndcg_with_two_gold_documents():
    row = dict(query="vpn", gold_doc_ids=["d4", "d5"])
    # "reset vpn password": d4 first (three terms), d5 second (vpn) -> recall 1, NDCG 1
    assert one(RecallReward(corpus=DOCS), "reset vpn password", **row) == 1.0
    assert one(NDCGReward(corpus=DOCS), "reset vpn password", **row) == pytest.approx(1.0)
    # "reset password" does not retrieve d5 at all: recall 1/2, NDCG 1 / (1 + 1/log2(3))
    assert one(RecallReward(corpus=DOCS), "reset password", **row) == 0.5
    assert one(NDCGReward(corpus=DOCS), "reset password", **row) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert one(MRRReward(corpus=DOCS), "reset password", **row) == 1.0
    # a Chinese rewrite of an English query fails the gate: worst values
    assert one(RecallReward(corpus=DOCS), "重置密码", **row) == 0.0


def test_repeated_query_tokens_add_no_score():
    index = BM25Index(DOCS)
    once = index.scores("客户画像 数据导出")
    assert np.array_equal(index.scores("客户画像 客户画像 客户画像 数据导出 数据导出"), once)
    # bm25s itself would add the repeats: the deduplication is ours
    raw = index._bm25.get_scores(["客户", "客户", "画像", "数据", "导出"])
    assert raw[0] > once[0]


def test_rows_without_gold_documents_are_not_scored_on_retrieval():
    completions = ["云雀CRM客户画像数据导出"] * 2
    kwargs = dict(query=["数据导出"] * 2, gold_doc_ids=[[], ["d1"]])
    assert QueryRewriteReward(corpus=DOCS)(prompts=None, completions=completions, **kwargs)[0] is None
    assert RankReward(corpus=DOCS)(prompts=None, completions=completions, **kwargs) == [None, 1.0]
    assert FormatReward(corpus=DOCS)(prompts=None, completions=completions, **kwargs) == [1.0, 1.0]


# --- content components ---------------------------------------------------------------------------------------


def test_slot_coverage_counts_slots_with_any_synonym():
    slots = {"系统": ["云雀CRM", "CRM"], "功能": "客户画像", "时间": ["月度", "每月"]}
    reward = SlotCoverageReward(corpus=DOCS)
    assert one(reward, "云雀CRM客户画像数据导出", query="数据导出", required_slots=slots) == pytest.approx(2 / 3)
    assert one(reward, "crm客户画像每月数据导出", query="数据导出", required_slots=slots) == 1.0
    assert one(reward, "云雀CRM客户画像", query="数据导出", required_slots=json.dumps(slots)) == pytest.approx(2 / 3)
    assert one(reward, "云雀CRM客户画像", query="数据导出", required_slots={}) is None


def test_faithfulness_is_to_the_query_plus_its_context():
    reward = FaithfulnessReward(corpus=DOCS)
    # mean of support (rewrite words in query, context or generic words) and coverage (query content words kept);
    # content words of "客户画像怎么导出数据": 客户, 画像, 导出, 数据 ("怎么" is vague)
    assert one(reward, "客户画像数据导出", query="客户画像怎么导出数据") == 1.0
    assert one(reward, "客户画像", query="客户画像怎么导出数据") == 0.75  # support 1, coverage 2/4
    # 云雀 and crm are in neither query nor context: support 4/6
    assert one(reward, "云雀CRM客户画像数据导出", query="客户画像怎么导出数据") == pytest.approx(0.5 * 4 / 6 + 0.5)
    row = dict(query="这个怎么弄？", context="当前页面：云雀CRM > 客户画像")
    assert one(reward, "云雀CRM客户画像", **row) == 1.0  # entities from the context are faithful
    # the unchanged query: no content word (support 0), nothing to keep (coverage 1), halved for leaving the
    # context's entities out
    assert one(reward, "这个怎么弄？", **row) == 0.25
    # a relative date resolved to the year the context names is faithful; a year found nowhere is not
    row = dict(query="revenue report for last year", context="User: we closed fiscal 2023 in Beacon Analytics")
    assert one(reward, "Beacon Analytics revenue report fiscal 2023", **row) == 1.0
    assert one(reward, "Beacon Analytics revenue report 2021", **row) < 0.85


def test_hallucination_is_the_share_of_tokens_found_in_neither_query_context_nor_corpus():
    reward = HallucinationPenalty(corpus=DOCS)
    # tokens 飞鱼 crm 客户 画像 数据 导出: only 飞鱼 is invented -> -1/6
    assert one(reward, "飞鱼CRM客户画像数据导出", query="数据导出", context="") == pytest.approx(-1 / 6)
    assert one(reward, "飞鱼CRM客户画像数据导出", query="数据导出", context="用户：我用飞鱼CRM") == 0.0
    assert one(reward, "云雀CRM客户画像数据导出", query="数据导出") == 0.0


def test_length_penalty_is_relative_to_the_original_query():
    reward = LengthPenalty(corpus=DOCS)
    # no reference: query has 2 tokens -> allowance max(2 * 2, 9) = 9 tokens; 13 tokens -> (13 - 9) / 9
    long_rewrite = "云雀CRM客户画像数据导出说明青鸟OA请假审批流程设置"
    assert len(tokenize(long_rewrite)) == 13
    assert one(reward, long_rewrite, query="数据导出") == pytest.approx(-4 / 9)
    assert one(reward, "云雀CRM客户画像数据导出", query="数据导出") == 0.0
    assert one(reward, long_rewrite * 2, query="数据导出") == -1.0


def test_length_cost_counts_retrieval_tokens_beyond_the_reference_rewrite_smoothly():
    reward = LengthPenalty(corpus=DOCS)
    # reference: 6 tokens + slack 2 = budget 8; each token beyond costs 1/8, in both languages alike
    row = dict(query="数据导出", reference_rewrites=["云雀CRM客户画像数据导出"])
    costs = [one(reward, "云雀CRM客户画像数据导出" + "说明流程设置审批"[: 2 * k], **row) for k in range(5)]
    assert costs == [0.0, 0.0, 0.0, -1 / 8, -2 / 8]  # 6, 7, 8 tokens free; 9, 10 pay
    row = dict(query="export data", reference_rewrites=["Nimbus CRM customer profiles data export"])
    assert one(reward, "Nimbus CRM customer profiles data export guide settings overview help", **row) == -2 / 8


def test_leakage_penalises_answer_terms_gold_copies_and_repetition():
    reward = LeakagePenalty(corpus=DOCS)
    row = dict(query="数据导出", context="当前页面：云雀CRM > 客户画像", gold_doc_ids=["d1"], answer_terms=["2420条"])
    assert one(reward, "云雀CRM客户画像数据导出", **row) == 0.0
    assert one(reward, "云雀CRM客户画像数据导出 2420条", **row) == -1.0
    # an answer term the user already wrote is not a leak
    assert one(reward, "云雀CRM客户画像导出2420条", **{**row, "query": "导出2420条"}) == 0.0
    # repetition: 云雀 crm 客户 画像 twice -> 4 of 8 tokens repeated -> 2 * 0.5, capped at 1
    assert one(reward, "云雀CRM客户画像 云雀CRM客户画像", **row) == -1.0
    # one repeated token of 6 -> 2 * (1 - 5/6)
    assert one(reward, "云雀CRM客户画像数据数据", **row) == pytest.approx(-2 * (1 - 5 / 6))
    # copying the gold document: novel tokens inside copied 4-grams (说明 单次 最多 导出? ...) beyond a budget of 4
    assert one(reward, DOCS[0]["text"], **{**row, "answer_terms": []}) < -0.2


def test_answers_without_markers_and_gold_ids_are_leaks():
    reward = LeakagePenalty(corpus=DOCS)
    row = dict(query="数据导出", context="当前页面：云雀CRM > 客户画像", gold_doc_ids=["d1"])  # no answer_terms
    assert one(reward, "云雀CRM客户画像数据导出", **row) == 0.0
    # a value of the gold document in neither query nor context
    assert one(reward, "云雀CRM客户画像数据导出上限2420条", **row) == -1.0
    assert one(reward, "云雀CRM客户画像数据导出 d1", **row) == -1.0  # the gold document's id
    row = dict(query="how do I reset it", context="User: my VPN client", gold_doc_ids=["d4"])
    assert one(reward, "reset the password of the vpn client", **row) == 0.0
    assert one(reward, "The vpn client password is reset from the login page.", **row) == -1.0  # a statement


def test_reference_f1():
    reward = ReferenceF1Reward(corpus=DOCS)
    row = dict(query="数据导出", reference_rewrites=["云雀CRM客户画像数据导出"])
    assert one(reward, "云雀CRM客户画像数据导出", **row) == 1.0
    # rewrite {云雀, crm, 客户, 画像} vs reference 6 tokens: P = 1, R = 4/6 -> F1 = 0.8
    assert one(reward, "云雀CRM客户画像", **row) == pytest.approx(0.8)
    assert one(reward, "云雀CRM客户画像", query="数据导出") is None


# --- composite ------------------------------------------------------------------------------------------------


def test_composite_is_the_weighted_sum_and_invalid_format_gets_the_minimum():
    row = dict(
        query="数据导出",
        gold_doc_ids=["d1"],
        required_slots={"功能": "客户画像"},
        reference_rewrites=["云雀CRM客户画像数据导出"],
    )
    reward = QueryRewriteReward(corpus=DOCS)
    # rank 1 (1.0) + ndcg .5 + recall .25 + mrr .25 + gain .5 * 0.2 + slots .5 + faithfulness .25 * (2/6 + 1) / 2
    # + ref_f1 .1
    assert one(reward, "云雀CRM客户画像数据导出", **row) == pytest.approx(
        1 + 0.5 + 0.25 + 0.25 + 0.1 + 0.5 + 0.25 * (2 / 6 + 1) / 2 + 0.1
    )
    assert reward.min_reward == -2.5  # -(length .5 + leakage 1 + hallucination .5) - gain .5
    assert one(reward, "第一行\n第二行", **row) == -2.5
    assert one(reward, "Export CRM data", **row) == -2.5
    only_rank = QueryRewriteReward(corpus=DOCS, weights={k: 0 for k in reward.weights} | {"rank": 2.0})
    assert one(only_rank, "数据导出", **row) == pytest.approx(1.6)
    assert only_rank.min_reward == 0.0
    assert QueryRewriteReward(corpus=DOCS, min_reward=-5)([], ["x\ny"], query=["q"], gold_doc_ids=[["d1"]]) == [-5.0]


def test_plain_and_conversational_completions_score_the_same():
    row = dict(
        query="数据导出",
        context="当前页面：云雀CRM > 客户画像",
        gold_doc_ids=["d1"],
        answer_terms=["2420条"],
        required_slots={"功能": "客户画像"},
        reference_rewrites=["云雀CRM客户画像数据导出"],
    )
    texts = ["<rewrite>云雀CRM客户画像数据导出</rewrite>", "数据导出", "云雀CRM客户画像 2420条", "bad\nformat"]
    chats = [[{"role": "assistant", "content": t}] for t in texts]
    for cls in (QueryRewriteReward, RankReward, LeakagePenalty, SlotCoverageReward):
        assert call(cls(corpus=DOCS), texts, **row) == call(cls(corpus=DOCS), chats, **row)


def test_pickle_round_trip_keeps_name_settings_and_scores(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in DOCS), encoding="utf-8")
    reward = QueryRewriteReward(corpus=str(path), weights={"leakage": 2.0})
    row = dict(query="数据导出", gold_doc_ids=["d1"], answer_terms=["2420条"])
    before = call(reward, ["云雀CRM客户画像数据导出", "数据导出 2420条"], **row)
    clone = pickle.loads(pickle.dumps(reward))
    assert clone.__name__ == "query_rewrite" and clone.weights["leakage"] == 2.0
    assert call(clone, ["云雀CRM客户画像数据导出", "数据导出 2420条"], **row) == before
    assert pickle.loads(pickle.dumps(LengthPenalty(corpus=str(path)))).__name__ == "query_rewrite_length"


def test_scores_are_deterministic_and_memoised_within_a_call(monkeypatch):
    reward = QueryRewriteReward(corpus=DOCS)
    calls = []
    original = reward.scorer.score
    monkeypatch.setattr(reward.scorer, "score", lambda row, c: calls.append(c) or original(row, c))
    out = call(reward, ["云雀CRM客户画像数据导出"] * 8 + ["数据导出"] * 8, query="数据导出", gold_doc_ids=["d1"])
    assert len(calls) == 2 and out[:8] == [out[0]] * 8
    assert call(reward, ["云雀CRM客户画像数据导出"], query="数据导出", gold_doc_ids=["d1"]) == [out[0]]


def test_component_means_are_logged_through_log_metric():
    logged = {}
    reward = QueryRewriteReward(corpus=DOCS)
    reward(
        prompts=None,
        completions=["云雀CRM客户画像数据导出", "a\nb"],
        query=["数据导出"] * 2,
        gold_doc_ids=[["d1"]] * 2,
        log_metric=lambda name, value: logged.setdefault(name, value),
    )
    assert logged["query_rewrite/format"] == 0.5
    assert logged["query_rewrite/rank"] == 0.5  # 1.0 and the gated completion's worst value 0
    assert logged["query_rewrite/leakage"] == 0.5
    assert logged["query_rewrite/gain"] == pytest.approx((0.2 - 0.8) / 2)
    assert {"query_rewrite/" + c for c in ("ndcg", "recall", "mrr", "faithfulness", "length", "hallucination")} <= set(
        logged
    )


# --- bad input ------------------------------------------------------------------------------------------------


def test_bad_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="'query' column"):
        RankReward(corpus=DOCS)(prompts=None, completions=["x"], gold_doc_ids=[["d1"]])
    with pytest.raises(ValueError, match="unknown QueryRewriteReward weight.*'rnak'"):
        QueryRewriteReward(corpus=DOCS, weights={"rnak": 1})
    with pytest.raises(ValueError, match=r"'id' \(or BEIR's '_id'\) and 'text'"):
        RankReward(corpus=[{"id": 1}])(prompts=None, completions=["x"], query=["q"], gold_doc_ids=[["1"]])
    with pytest.raises(ValueError, match="appears twice"):
        BM25Index([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BM25Index("/nonexistent/corpus.jsonl")
    with pytest.raises(KeyError, match="not in the corpus"):
        RankReward(corpus=DOCS)(prompts=None, completions=["数据导出"], query=["数据导出"], gold_doc_ids=[["d9"]])


# --- every component as a class of its own, on the bundled corpus ---------------------------------------------

#: A benchmark row (train split, crm-0-export-q) and six completions: the reference, the original query, an answer
#: (fails the format gate), a leaked answer term, an invented system name, an overlong rewrite.
BENCHMARK_ROW = dict(
    query="能导出成表格吗？",
    context="当前页面：云雀CRM > 客户画像",
    gold_doc_ids=["crm-0-export"],
    required_slots={"系统": ["云雀CRM", "CRM"], "功能": ["客户画像"]},
    answer_terms=["2420"],
    reference_rewrites=["云雀CRM客户画像的数据导出"],
)
BENCHMARK_COMPLETIONS = [
    "<rewrite>云雀CRM客户画像的数据导出</rewrite>",
    "能导出成表格吗？",
    "答：点右上角的导出按钮",
    "云雀CRM客户画像表格导出 2420",
    "飞鱼CRM客户画像的数据导出",
    "云雀CRM客户画像的数据导出方法和全部字段说明以及权限配置和报错排查的操作指南",
]
#: Scores of each class on those completions, recorded when faithfulness became relative to query + context and
#: length relative to the reference rewrite.
RECORDED_SCORES = {
    "FormatReward": [1.0, 1.0, 0.0, 1.0, 1.0, 1.0],
    "RankReward": [1.0, 0.0, 0.0, 1.0, 1.0, 0.5],
    "RecallReward": [1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
    "NDCGReward": [1.0, 0.0, 0.0, 1.0, 1.0, 0.43067655807339306],
    "MRRReward": [1.0, 0.0, 0.0, 1.0, 1.0, 0.25],
    "GainReward": [1.0, 0.0, 0.0, 1.0, 1.0, 0.5],
    "SlotCoverageReward": [1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
    # faithfulness to query + context: the unchanged query leaves the context's entities out (0.5)
    "FaithfulnessReward": [2 / 3, 0.5, 0.0, 0.7619047619047619, 0.5833333333333334, 0.4901960784313726],
    "ReferenceF1Reward": [1.0, 0.2222222222222222, 0.0, 0.7692307692307692, 0.8333333333333334, 0.5217391304347826],
    "LengthPenalty": [0.0, 0.0, -1.0, 0.0, 0.0, -1.0],  # relative to the 6-token reference
    "LeakagePenalty": [0.0, 0.0, -1.0, -1.0, 0.0, 0.0],
    "HallucinationPenalty": [0.0, 0.0, -1.0, 0.0, -0.16666666666666666, -0.11764705882352941],
    "QueryRewriteReward": [
        3.2666666666666666,
        0.14722222222222223,
        -2.5,
        2.267399267399268,
        3.1458333333333335,
        1.393737682276253,
    ],
}


@pytest.mark.parametrize("name", sorted(RECORDED_SCORES))
def test_each_reward_class_is_importable_by_name_pickles_and_keeps_its_recorded_scores(name):
    from trl_ext.rewards import query_rewrite, resolve_reward_func

    cls = resolve_reward_func(f"trl_ext.rewards.query_rewrite.{name}")
    assert cls is getattr(query_rewrite, name) and cls.__name__ == name and cls.__doc__
    reward = cls()
    scores = call(reward, BENCHMARK_COMPLETIONS, **BENCHMARK_ROW)
    assert scores == RECORDED_SCORES[name]
    clone = pickle.loads(pickle.dumps(reward))
    assert type(clone) is cls and clone.__name__ == reward.__name__
    assert call(clone, BENCHMARK_COMPLETIONS, **BENCHMARK_ROW) == scores
