"""The bundled query-rewrite benchmarks (Chinese and English), the hacks the composite reward must rank below a
faithful rewrite, `trl-ext eval-rewrite`, reward memoisation, the quickstart."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import RECIPES, trl_ext_cli
from trl_ext.assets import resolve_builtin
from trl_ext.data import build_query_rewrite, build_query_rewrite_en
from trl_ext.rewards.eval_rewrite import BENCHMARK_CORPORA, evaluate, load_rows, reciprocal_ranks
from trl_ext.rewards.query_rewrite import (
    COMPONENTS,
    QueryRewriteReward,
    check_format,
    document_text,
    load_corpus,
    tokenize,
)
from trl_ext.rewards.query_rewrite.hacks import HACKS, hack_variants

COLUMNS = ("query", "context", "gold_doc_ids", "required_slots", "answer_terms", "reference_rewrites")
#: language -> (dataset, builder, the slot keys naming a feature or metric, the prefix of generic documents)
BENCHMARKS = {
    "zh": ("builtin:query_rewrite", build_query_rewrite, ("功能", "指标"), "generic-"),
    "en": ("builtin:query_rewrite_en", build_query_rewrite_en, ("feature", "metric"), "en-generic-"),
}


@pytest.fixture(scope="module", params=sorted(BENCHMARKS))
def bench(request):
    """One bundled benchmark: its language, rows per split, corpus (id -> document) and composite reward."""
    dataset = BENCHMARKS[request.param][0]
    corpus_path = BENCHMARK_CORPORA[dataset]
    return {
        "lang": request.param,
        "dataset": dataset,
        "corpus_path": corpus_path,
        "splits": {s: load_rows(s, dataset) for s in ("train", "test")},
        "docs": {d["id"]: d for d in load_corpus(corpus_path)},
        "reward": QueryRewriteReward(corpus=corpus_path),
    }


@pytest.fixture(scope="module")
def reward():
    return QueryRewriteReward()


@pytest.fixture(scope="module")
def splits():
    return {s: load_rows(s) for s in ("train", "test")}


def score_row(reward, row, completions):
    return reward(prompts=None, completions=completions, **{k: [row.get(k)] * len(completions) for k in COLUMNS})


def test_benchmark_shape_categories_and_schema(bench):
    rows = bench["splits"]["train"] + bench["splits"]["test"]
    generic = BENCHMARKS[bench["lang"]][3]
    assert 150 <= len(bench["docs"]) <= 400 and 200 <= len(rows) <= 500
    cats = Counter(r["category"] for r in rows)
    assert set(cats) == {"missing_entity", "ambiguity", "metric_clarification", "clear", "unresolvable"}
    assert 0.08 <= cats["clear"] / len(rows) <= 0.18 and 0.08 <= cats["unresolvable"] / len(rows) <= 0.13
    for r in rows:
        assert set(COLUMNS) <= set(r) and r["gold_doc_ids"] and all(g in bench["docs"] for g in r["gold_doc_ids"])
        assert r["language"] == bench["lang"]
        assert r["prompt"][-1]["role"] == "user" and "<rewrite>" in r["prompt"][-1]["content"]
        # the SFT target: the reference in the format the gate accepts
        assert r["completion"] == [{"role": "assistant", "content": f"<rewrite>{r['reference_rewrites'][0]}</rewrite>"}]
        if r["category"] == "clear":
            assert r["reference_rewrites"] == [r["query"]]
        if r["category"] == "unresolvable":  # the reference invents no system or feature
            assert r["gold_doc_ids"][0].startswith(generic) and r["required_slots"] == {}


def test_english_benchmark_has_multi_turn_context_and_a_beir_corpus_with_titles():
    rows = load_rows("train", "builtin:query_rewrite_en")
    assert sum("\nAssistant:" in r["context"] for r in rows) >= 20
    with open(resolve_builtin(BENCHMARK_CORPORA["builtin:query_rewrite_en"]), encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    assert set(first) == {"_id", "title", "text"} and first["title"]


def test_every_gold_document_has_three_hard_negatives_sharing_the_querys_words(bench):
    for r in bench["splits"]["train"] + bench["splits"]["test"]:
        negatives = r["hard_negative_ids"]
        assert len(negatives) == 3 and not set(negatives) & set(r["gold_doc_ids"])
        words = set(tokenize(r["query"]))
        assert all(words & set(tokenize(document_text(bench["docs"][d]))) for d in negatives), r["id"]


def test_test_split_names_features_no_train_row_names(bench):
    keys = BENCHMARKS[bench["lang"]][2]

    def entities(rows):
        return {v for r in rows for k in keys for v in (r["required_slots"].get(k) or [])}

    train, test = entities(bench["splits"]["train"]), entities(bench["splits"]["test"])
    assert len(test) == 10 and not train & test


def test_generator_is_seeded_and_reproduces_the_shipped_files(bench):
    builder = BENCHMARKS[bench["lang"]][1]
    docs, rows = builder.build()
    builder.finalize(docs, rows, prompt=builder.build_prompt)
    assert rows["train"] == bench["splits"]["train"] and rows["test"] == bench["splits"]["test"]
    assert load_corpus(docs) == list(bench["docs"].values())


def test_sanity_thresholds_original_vs_reference_mrr(bench):
    index = bench["reward"].scorer.index
    for split, rows in bench["splits"].items():
        original = sum(index.metrics(r["query"], r["gold_doc_ids"])["mrr"] for r in rows) / len(rows)
        reference = sum(index.metrics(r["reference_rewrites"][0], r["gold_doc_ids"])["mrr"] for r in rows) / len(rows)
        assert original < 0.3 and reference > 0.8, (split, original, reference)


@pytest.mark.parametrize("split", ["train", "test"])
def test_composite_ranks_the_faithful_rewrite_strictly_above_every_hack_generated_from_the_data(bench, split):
    """For every query: keyword stuffing and a long tail kept under the length limit, a copied document, the answer
    with and without a marker, the gold id or title appended, the unchanged query, the wrong language, empty and
    punctuation-only output all score strictly below the reference rewrite."""
    failures, seen = [], Counter()
    for row in bench["splits"][split]:
        variants = hack_variants(row, bench["docs"][row["gold_doc_ids"][0]])
        assert set(variants) | {"unchanged_query"} == set(HACKS)
        for name, text in variants.items():  # the length hacks really stay under the format gate's limits
            if name in ("keyword_stuffing", "long_tail", "gold_copy"):
                assert check_format(text, row["query"], context=row["context"])[1] == "ok", (row["id"], name, text)
        ref, *hacks = score_row(bench["reward"], row, [row["reference_rewrites"][0], *variants.values()])
        seen.update(variants.keys())
        failures += [(row["id"], name, s, ref) for name, s in zip(variants, hacks) if not s < ref]
    assert failures == []
    assert seen["unchanged_query"] >= 0.8 * len(bench["splits"][split])  # only clear rows leave it out


def test_already_clear_query_rewritten_as_itself_scores_well(reward, splits):
    clear = [r for r in splits["train"] + splits["test"] if r["category"] == "clear"]
    scores = [score_row(reward, r, [f"<rewrite>{r['query']}</rewrite>"])[0] for r in clear]
    # rank 1 + ndcg .5 + recall .25 + mrr .25 + slots .5 + faithfulness <= .25 + ref .1 = 2.85, gain 0
    assert min(scores) >= 2.5 and sum(scores) / len(scores) > 2.75


def test_inventing_an_entity_for_an_unresolvable_query_scores_below_the_generic_rewrite(bench):
    rows = [r for r in bench["splits"]["test"] if r["category"] == "unresolvable"]
    # the references of rows that do name a system: real entities of the corpus, but not in this row's context
    named = [r["reference_rewrites"][0] for r in bench["splits"]["test"] if r["category"] == "missing_entity"][:3]
    for row in rows:
        ref, *invented = score_row(bench["reward"], row, [row["reference_rewrites"][0], *named])
        assert max(invented) < ref, row["id"]


def test_eval_rewrite_numbers_follow_the_models_outputs(bench):
    rows = bench["splits"]["test"]
    docs = bench["docs"]
    identity = evaluate(rows, [r["query"] for r in rows], bench["corpus_path"])
    references = evaluate(
        rows, [f"<rewrite>{r['reference_rewrites'][0]}</rewrite>" for r in rows], bench["corpus_path"]
    )
    copies = evaluate(
        rows, [hack_variants(r, docs[r["gold_doc_ids"][0]])["gold_copy"] for r in rows], bench["corpus_path"]
    )
    answers = evaluate(
        rows, [hack_variants(r, docs[r["gold_doc_ids"][0]])["answer_marker"] for r in rows], bench["corpus_path"]
    )
    # the original and reference rows do not depend on the outputs; the model row does
    for result in (references, copies, answers):
        assert result["metrics"]["original"] == identity["metrics"]["original"]
        assert result["metrics"]["reference"] == identity["metrics"]["reference"]
    assert identity["metrics"]["model"] == identity["metrics"]["original"]
    assert references["metrics"]["model"] == references["metrics"]["reference"]
    assert answers["metrics"]["model"]["MRR@10"] == 0.0 and answers["format_valid"] == 0.0
    # the detector flags the model's hacks, not the data's references
    assert references["hack_flagged"] == 0.0 and references["format_valid"] == 1.0
    assert answers["hack_flagged"] == 1.0 and answers["hack_flags"] == {"format:answer_not_query": 1.0}
    assert copies["hack_flagged"] == 1.0 and copies["hack_flags"]["leakage"] >= 0.9
    assert identity["hack_flags"]["unchanged_query"] >= 0.8
    assert references["reward"] > identity["reward"] > answers["reward"] and references["reward"] > copies["reward"]


def test_per_query_reciprocal_ranks_average_to_the_evaluated_mrr_and_follow_the_outputs(bench):
    rows = bench["splits"]["test"]
    references = [f"<rewrite>{r['reference_rewrites'][0]}</rewrite>" for r in rows]
    ranks = reciprocal_ranks(rows, references, bench["corpus_path"])
    mrr = evaluate(rows, references, bench["corpus_path"])["metrics"]["model"]["MRR@10"]
    assert len(ranks) == len(rows) and abs(sum(ranks) / len(ranks) - mrr) < 1e-12
    answers = [f"<rewrite>The answer is {r['query']}</rewrite>" for r in rows]
    assert reciprocal_ranks(rows, answers, bench["corpus_path"]) == [0.0] * len(rows)  # the format gate fails them
    with pytest.raises(ValueError):
        reciprocal_ranks(rows, references[:-1], bench["corpus_path"])  # one rewrite per row


def test_eval_rewrite_references_json():
    proc = trl_ext_cli("eval-rewrite", "--references", "--split", "test", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["rows"] == 72 and result["format_valid"] == 1.0 and result["hack_flagged"] == 0.0
    assert result["metrics"]["original"]["MRR@10"] < 0.3 and result["metrics"]["model"]["MRR@10"] > 0.8
    assert set(result["metrics"]) == {"original", "reference", "model"}
    assert set(result["metrics"]["model"]) == {"MRR@10", "Recall@5", "Recall@10", "NDCG@10"}


def test_eval_rewrite_table_from_a_rewrites_file_on_the_english_benchmark(tmp_path):
    rows = load_rows("test", "builtin:query_rewrite_en")
    path = tmp_path / "rewrites.jsonl"
    path.write_text(
        "".join(json.dumps({"id": r["id"], "rewrite": f"<rewrite>{r['query']}</rewrite>"}) + "\n" for r in rows),
        encoding="utf-8",
    )
    args = ("eval-rewrite", "--rewrites", str(path), "--split", "test", "--dataset", "builtin:query_rewrite_en")
    proc = trl_ext_cli(*args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    original = next(line for line in lines if line.startswith("original")).split()[1:]
    model = next(line for line in lines if line.startswith("model")).split()[1:]
    assert original == model  # identity rewrites retrieve exactly what the queries do
    assert "outputs flagged as hacks:" in proc.stdout and "unchanged_query" in proc.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"rewrite": "a"}\n', encoding="utf-8")
    proc = trl_ext_cli("eval-rewrite", "--rewrites", str(bad), "--split", "test", timeout=300)
    assert proc.returncode == 2 and "1 rewrites without ids but the split has 72 rows" in proc.stderr
    proc = trl_ext_cli("eval-rewrite", "--references", "--dataset", str(path), timeout=300)
    assert proc.returncode == 2 and "pass its corpus with --corpus" in proc.stderr


def test_a_grpo_batch_scores_each_distinct_completion_once_and_retrieves_each_distinct_text_once(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reward_speed", RECIPES.parent / "benchmarks" / "reward_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reward, completions, cols = module.make_batch(512, 400)
    index = reward.scorer.index
    assert len(index.docs) == 400
    scored = []
    score = reward.scorer.score
    monkeypatch.setattr(reward.scorer, "score", lambda row, completion: scored.append(row) or score(row, completion))
    index.scores.cache_clear()
    out = reward(prompts=None, completions=completions, **cols)
    assert len(out) == 512 and all(isinstance(x, float) for x in out)
    # GRPO groups repeat completions: each distinct (row, completion) is scored once
    distinct = {
        (q, c, str(g), completion[0]["content"])
        for q, c, g, completion in zip(cols["query"], cols["context"], cols["gold_doc_ids"], completions)
    }
    assert len(scored) == len(distinct) < 512
    # each distinct text (an original query, or a rewrite that passes the format gate) is retrieved once
    texts = set()
    for query, _, _, text in distinct:
        rewrite, _ = check_format(text, query)
        texts |= {query, rewrite} - {None}
    assert index.scores.cache_info().misses == len(texts) < len(scored)


@pytest.mark.slow
def test_quickstart_grpo_query_rewrite_recipe_learns_to_retrieve_and_logs_every_component(tmp_path):
    """The quickstart recipe, as shipped: GRPO on builtin:tiny-rewriter gets format-valid, varied rewrites and
    improves their retrieval."""
    proc = trl_ext_cli(
        "train", str(RECIPES / "quickstart" / "grpo-query-rewrite.yaml"), "--output_dir", str(tmp_path), timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    logs = [entry for entry in state["log_history"] if "reward" in entry]
    assert len(logs) == state["global_step"] >= 100
    for entry in logs:
        assert {f"query_rewrite/{c}" for c in COMPONENTS} <= set(entry), sorted(entry)
        assert entry["reward"] >= QueryRewriteReward().min_reward
    window = len(logs) // 5

    def mean(key, part):
        return sum(entry[key] for entry in part) / len(part)

    first, last = logs[:window], logs[-window:]
    # the bundled rewriter writes the format and its samples disagree on retrieval: a live GRPO signal from step 1
    assert mean("query_rewrite/format", first) >= 0.9 and mean("query_rewrite/format", last) >= 0.9
    # (on 16 prompts the groups agree more as GRPO converges: 33 % of them had zero reward spread in the first 60
    # steps, 87 % in the last 60)
    assert mean("frac_reward_zero_std", first) < 0.5
    assert mean("reward", logs) > QueryRewriteReward().min_reward + 3.0
    # GRPO learns: with seed 42 the reward rose by 0.51 and rank by 0.14 between the first and last 60 steps (the
    # earlier, non-copying rewriter: 0.52-0.60 and 0.16-0.20 over seeds 42/7/123, standard errors about 0.085 and
    # 0.025); the bounds sit well below
    assert mean("reward", last) > mean("reward", first) + 0.3
    assert mean("query_rewrite/rank", last) > mean("query_rewrite/rank", first) + 0.08
    # held out, the trained rewriter retrieves better than the raw queries (seed 42: MRR@10 0.478 vs 0.198)
    proc = trl_ext_cli("eval-rewrite", "--model", str(tmp_path), "--split", "test", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["rows"] == 72 and result["format_valid"] > 0.9
    assert result["metrics"]["model"]["MRR@10"] > result["metrics"]["original"]["MRR@10"] + 0.15
