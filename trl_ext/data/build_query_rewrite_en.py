"""Build the bundled English query-rewrite benchmark: ``python -m trl_ext.data.build_query_rewrite_en``.

Built the same way as the Chinese one (`trl_ext.data.build_query_rewrite`, whose `finalize` adds the hard negatives,
prompts and sanity checks): help-center documents of four invented business applications and one analytics product,
near-duplicate across features (hard negatives), and vague queries of the three kinds (fill a missing entity,
clarify the metric's dimension, resolve an ambiguity) plus clear and unresolvable ones, with multi-turn dialogue
context. Writes ``query_rewrite_en_corpus/corpus.jsonl`` in BEIR's format (``_id``, ``title``, ``text``) and
``query_rewrite_en/{train,test}.jsonl``. Seeded: the same seed gives byte-identical files. Test rows name features no
train row names.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from trl_ext.assets import DATA_DIR
from trl_ext.data.build_query_rewrite import TEST_FEATURES, _fact, finalize

SEED = 20240605

DOMAINS = {
    "crm": ("Nimbus CRM", "sales", "sales manager", [
        "customer profiles", "opportunity pipeline", "lead routing", "contract approval",
        "payment plans", "customer import", "sales reports", "account pool",
    ]),
    "hr": ("Harbor HR", "people operations", "HR partner", [
        "onboarding checklist", "payroll run", "performance reviews", "benefits enrollment",
        "hiring plans", "employee records", "offboarding handover", "training signup",
    ]),
    "billing": ("Ledgerly", "finance", "billing specialist", [
        "invoices", "refunds", "subscriptions", "tax rates",
        "payment methods", "coupon codes", "dunning emails", "vendor payouts",
    ]),
    "erp": ("Quarry ERP", "procurement", "buyer", [
        "purchase orders", "stock counts", "sales orders", "material import",
        "production plans", "supplier directory", "accounts payable", "cost reports",
    ]),
    "bi": ("Beacon Analytics", "data team", "analyst", [
        "gross margin", "net revenue", "daily active users", "average order value",
        "repeat purchase rate", "inventory turnover", "return rate", "checkout conversion",
    ]),
}  # fmt: skip

# aspect -> (title suffix, body, vague queries, rewrite suffix, answer fact template)
APP_ASPECTS = {
    "guide": (
        "setup guide",
        "This guide explains the basics of {f}: open {f} from the left menu, fill in the form and save; "
        "the keyboard shortcut is {a}.",
        ["how do I use this?", "how does this work?", "where do I start with it?"],
        "setup guide",
        "Ctrl+{L}{n1}",
    ),
    "perm": (
        "permissions",
        "Access to {f} is granted by an administrator under Roles; only members with role code {a} can edit, "
        "everyone else can only view the page.",
        ["why can't I edit this?", "where do I turn on access?", "how do I let a teammate edit?"],
        "edit permissions and access roles",
        "R{n3}",
    ),
    "export": (
        "data export",
        "Records in {f} can be exported to a CSV spreadsheet, at most {a} records per export; split larger "
        "exports into batches.",
        ["how do I get the data out?", "can I download it as a spreadsheet?", "how do I export this?"],
        "data export to CSV",
        "{n4}",
    ),
    "error": (
        "error troubleshooting",
        "If {f} shows error code {a}, the request usually timed out or failed validation; reload the page and "
        "retry, and contact an administrator if the error persists.",
        ["it keeps failing, what now?", "why am I getting an error?", "it won't save, keeps erroring"],
        "error troubleshooting",
        "E{n4}",
    ),
    "fields": (
        "field reference",
        "Field reference for {f}: field {a} shows who last modified the record, fields marked with an asterisk "
        "are required and greyed-out fields are computed by the system.",
        ["what do these fields mean?", "what's the asterisk for?", "what is the greyed-out column?"],
        "field reference",
        "X{n3}",
    ),
    "flow": (
        "approval workflow",
        "Approval steps of {f} are changed in the workflow settings; up to {a} are supported, with parallel and "
        "any-of approvals; new submissions follow the updated workflow.",
        ["how do I change the approval steps?", "can the steps be changed?", "how do I add an approver?"],
        "approval workflow settings",
        "{n2} steps",
    ),
}
BI_ASPECTS = {
    "definition": (
        "metric definition",
        "How the {f} metric is defined and calculated: numerator and denominator rules are listed under "
        "definition code {a}; the data refreshes every night.",
        ["how is this number calculated?", "what's the definition?", "how is that metric defined?"],
        "metric definition and formula",
        "K{n3}",
        {},
    ),
    "region_month": (
        "monthly report by region",
        "View {f} by region in the monthly report: filter by East, West, North or South region, one row per "
        "calendar month, report code {a}.",
        ["where do I see each region per month?", "what about last month by region?", "show it monthly by area"],
        "monthly report by region",
        "M{n3}",
        {"dimension": ["region", "regional"], "time": ["monthly", "month"]},
    ),
    "product_week": (
        "weekly report by product line",
        "View {f} by product line in the weekly report: generated every Monday, drill down to a single product, "
        "report code {a}.",
        ["where is the weekly number per product?", "how did each product do last week?", "weekly by product line"],
        "weekly report by product line",
        "W{n3}",
        {"dimension": ["product line", "product"], "time": ["weekly", "week"]},
    ),
    "yoy": (
        "year-over-year analysis",
        "Year-over-year and period-over-period change of {f}: compared with the same period last year and the "
        "previous period; a drop of more than {a} sends an alert.",
        ["why is it down so much from last year?", "why did it drop?", "is it very different from last month?"],
        "year-over-year change analysis",
        "{n2}%",
        {"time": ["year-over-year", "yoy", "period-over-period"]},
    ),
    "delay": (
        "data delay troubleshooting",
        "Troubleshooting {f} data that did not refresh on time: check whether upstream job {a} finished; delays "
        "over two hours show a banner on the dashboard.",
        ["why isn't today's number out yet?", "why hasn't the data refreshed?", "why is it still yesterday's?"],
        "data delay troubleshooting",
        "T{n3}",
        {},
    ),
    "dashboard": (
        "dashboard widget",
        "Add a {f} chart to a dashboard: switch to edit mode and drag in the metric widget, widget code {a}; "
        "once saved it is visible to every member.",
        ["how do I put this number on a dashboard?", "how do I add the chart?", "can it go on the home dashboard?"],
        "dashboard widget setup",
        "C{n3}",
        {},
    ),
}
GENERIC = {  # aspect -> (title, body, rewrite) for requests that name no system
    "guide": (
        "getting started with any application",
        "Not sure which business application you are using? Check the application name under My Apps in the "
        "company portal first, then open that application's setup guide.",
        "getting started when unsure which business application",
    ),
    "perm": (
        "general access request",
        "Not sure which application to request access to? Submit a general access request in the company portal; "
        "the IT desk identifies the application and grants the role.",
        "general access request when unsure which application",
    ),
    "export": (
        "general export help",
        "General notes on exporting from any business application: when unsure which application holds the data, "
        "confirm its name in the company portal, then follow its export instructions.",
        "general export help when unsure which application",
    ),
    "error": (
        "general error help desk",
        "Seeing an error but unsure which application it comes from? Take a screenshot and open a general error "
        "ticket in the company portal; the IT desk routes it to the right team.",
        "general error ticket when unsure which application",
    ),
    "fields": (
        "general field glossary",
        "Glossary of fields shared by the business applications: when unsure which application you are in, "
        "search the field name in the company portal; an asterisk marks a required field.",
        "general field glossary when unsure which application",
    ),
    "flow": (
        "general workflow questions",
        "Not sure which application a workflow belongs to? Ask the workflow administrators through a general "
        "workflow question in the company portal; they confirm the owning application.",
        "general workflow question when unsure which application",
    ),
}
UNRESOLVABLE_CONTEXTS = [
    "",
    "User: I don't remember which system it was.",
    "User: we have so many tools, I can't tell them apart.",
    "User: it's the one in the browser.",
]
SYSTEM_PROMPT = "You rewrite search queries for a company help-center search engine."
PROMPT_TEMPLATE = (
    "Rewrite the user's query as one complete search query for the help-center documents.\n"
    "Rules: fill in the missing product and feature names from the context, resolve ambiguity, state the metric, "
    "dimension and time; never invent names the context does not mention; do not answer the question; write in the "
    "language of the query; output exactly one line: <rewrite>rewritten query</rewrite>\n\n"
    "Query: {query}\nContext: {context}"
)


def build_prompt(query: str, context: str = "") -> list[dict]:
    """Chat messages asking for one rewrite in the ``<rewrite>...</rewrite>`` format the format gate accepts."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": PROMPT_TEMPLATE.format(query=query, context=context or "(none)")},
    ]


def _row(doc_id, category, query, context, slots, fact, reference) -> dict:
    return {
        "id": f"{doc_id}-q",
        "category": category,
        "language": "en",
        "query": query,
        "context": context,
        "gold_doc_ids": [doc_id],
        "required_slots": slots,
        "answer_terms": [fact] if fact else [],
        "reference_rewrites": [reference],
    }


def build(seed: int = SEED) -> tuple[list[dict], dict[str, list[dict]]]:
    """The corpus (BEIR `_id`/`title`/`text`) and the train/test rows, before hard negatives and prompts."""
    rng = random.Random(seed)
    docs: list[dict] = []
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    used: set[str] = set()
    heads: dict[str, int] = {}
    for _, (_, _, _, feats) in DOMAINS.items():
        for f in feats:
            heads[f.split()[-1]] = heads.get(f.split()[-1], 0) + 1

    for dom, (brand, dept, role, feats) in DOMAINS.items():
        aspects = BI_ASPECTS if dom == "bi" else APP_ASPECTS
        for fi, feat in enumerate(feats):
            split = "test" if fi in TEST_FEATURES else "train"
            for asp, spec in aspects.items():
                title, body, vague, suffix, fact_t = spec[:5]
                extra_slots = spec[5] if len(spec) > 5 else {}
                fact = _fact(fact_t, rng)
                for _ in range(100):
                    if fact not in used:
                        break
                    fact = _fact(fact_t, rng)
                used.add(fact)
                doc_id = f"en-{dom}-{fi}-{asp}"
                others = rng.sample([a for a in aspects if a != asp], 2)  # vague words shared with other documents
                faq = f" Common questions: {rng.choice(vague)} " + " ".join(rng.choice(aspects[a][2]) for a in others)
                docs.append(
                    {"_id": doc_id, "title": f"{brand} {feat}: {title}", "text": body.format(f=feat, a=fact) + faq}
                )
                reference = f"{brand} {feat} {suffix}"
                slots = {"product": [brand, brand.split()[0]], ("metric" if dom == "bi" else "feature"): [feat]}
                slots.update(extra_slots)
                said = rng.choice(vague)
                roll = rng.random()
                if roll < 0.15:
                    row = _row(doc_id, "clear", reference, "", slots, fact, reference)
                elif dom == "bi":
                    context = rng.choice(
                        [
                            f"User: I'm tracking {feat} in {brand}.\nAssistant: Sure, what would you like to know?",
                            f"Current dashboard: {brand} > {feat}; user role: {role}",
                        ]
                    )
                    row = _row(doc_id, "metric_clarification", said, context, slots, fact, reference)
                elif heads[feat.split()[-1]] > 1:
                    head = feat.split()[-1]
                    query = f"the {head} {rng.choice(['thing', 'part', 'page'])}, {rng.choice(vague)}"
                    context = (
                        f"User team: {dept}; main application: {brand}.\nUser: {rng.choice(vague)}\n"
                        "Assistant: Which part of the application do you mean?"
                    )
                    row = _row(doc_id, "ambiguity", query, context, slots, fact, reference)
                else:
                    context = rng.choice(
                        [f"Current page: {brand} > {feat}", f"User: I just opened the {feat} page in {brand}."]
                    )
                    row = _row(doc_id, "missing_entity", said, context, slots, fact, reference)
                rows[split].append(row)
    for asp, (title, body, reference) in GENERIC.items():
        doc_id = f"en-generic-{asp}"
        docs.append({"_id": doc_id, "title": f"Company portal help: {title}", "text": body})
        for k, vq in enumerate(APP_ASPECTS[asp][2] + APP_ASPECTS[asp][2][:2]):
            split = "test" if k in (0, 3) else "train"
            row = _row(doc_id, "unresolvable", vq, UNRESOLVABLE_CONTEXTS[k % 4], {}, None, reference)
            row["id"] = f"{doc_id}-q{k}"
            rows[split].append(row)
    return docs, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    docs, rows = build(args.seed)
    stats = finalize(docs, rows, prompt=build_prompt)
    (args.out / "query_rewrite_en_corpus").mkdir(parents=True, exist_ok=True)
    (args.out / "query_rewrite_en").mkdir(parents=True, exist_ok=True)
    with open(args.out / "query_rewrite_en_corpus" / "corpus.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    for split, split_rows in rows.items():
        with open(args.out / "query_rewrite_en" / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows)
    cats: dict = {}
    for split_rows in rows.values():
        for r in split_rows:
            cats[r["category"]] = cats.get(r["category"], 0) + 1
    print(json.dumps({"documents": len(docs), "categories": cats, **stats}, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
