"""Build the bundled query-rewrite benchmark: ``python -m trl_ext.data.build_query_rewrite``.

Writes ``query_rewrite_corpus/corpus.jsonl`` (Chinese enterprise help documents: CRM, BI metrics, OA, HR, ERP) and
``query_rewrite/{train,test}.jsonl``. Seeded: the same seed gives byte-identical files. Test rows name features that no
train row names (the split is by feature template). Sanity checks run at the end: under the shipped BM25 retriever the
original queries must have MRR@10 < 0.3 and the reference rewrites MRR@10 > 0.8, and every gold document at least three
hard negatives (other documents the original query also matches).

Row schema: ``id``, ``category`` (missing_entity | ambiguity | metric_clarification | clear | unresolvable), ``language``,
``query``, ``context``, ``gold_doc_ids``, ``required_slots`` (slot -> list of accepted values), ``answer_terms``,
``reference_rewrites``, ``hard_negative_ids``, ``prompt`` (chat messages built with the rewrite prompt template) and
``completion`` (the first reference as an assistant message in the ``<rewrite>`` format: ``method: sft`` trains on
``prompt`` + ``completion``).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from trl_ext.assets import DATA_DIR

SEED = 20240604
TEST_FEATURES = (6, 7)  # per domain: the features only test rows name

DOMAINS = {
    "CRM": (
        "云雀CRM",
        "销售部",
        "销售经理",
        ["客户画像", "商机管理", "线索分配", "合同审批", "回款计划", "客户导入", "销售报表", "客户公海"],
    ),
    "OA": (
        "青鸟OA",
        "行政部",
        "行政专员",
        ["请假审批", "会议预订", "公文流转", "费用报销", "考勤打卡", "通知公告", "用印申请", "日程管理"],
    ),
    "HR": (
        "磐石HR",
        "人力资源部",
        "HRBP",
        ["入职审批", "薪资核算", "绩效考核", "社保缴纳", "招聘计划", "员工档案", "离职交接", "培训报名"],
    ),
    "ERP": (
        "远帆ERP",
        "采购部",
        "采购员",
        ["采购审批", "库存盘点", "销售订单", "物料导入", "生产计划", "供应商管理", "应付账款", "成本报表"],
    ),
    "BI": (
        "观澜BI",
        "数据分析部",
        "数据分析师",
        ["毛利率", "销售额", "日活跃用户数", "客单价", "复购率", "库存周转率", "退货率", "转化率"],
    ),
}

# aspect -> (doc title suffix, doc body, vague queries, rewrite suffix, answer fact template)
APP_ASPECTS = {
    "guide": (
        "操作指南",
        "本文介绍{f}的基本用法：登录后在左侧菜单进入{f}页面，按提示填写信息并保存，快捷键为{a}。",
        ["这个功能怎么用？", "这个怎么操作？", "这里怎么用啊？"],
        "功能的操作指南",
        "Ctrl+{L}{n1}",
    ),
    "perm": (
        "权限配置",
        "{f}的访问权限由系统管理员在角色管理中分配，拥有角色编码{a}的成员才能编辑，其他人只能查看页面。",
        ["为什么我没有权限编辑？", "权限在哪里开？", "怎么让同事也能编辑？"],
        "的权限配置",
        "R{n3}",
    ),
    "export": (
        "数据导出",
        "{f}中的数据可以导出为Excel文件，单次最多导出{a}条记录，超过上限时请分批导出数据。",
        ["数据怎么导出来？", "能导出成表格吗？", "怎么把数据下载下来？"],
        "的数据导出",
        "{n4}",
    ),
    "error": (
        "报错排查",
        "使用{f}时如果页面提示错误码{a}，通常是网络超时或数据校验失败，请刷新页面后重试，仍然报错请联系管理员。",
        ["一直报错怎么办？", "页面报错了怎么回事？", "提交不了老是出错"],
        "的报错排查",
        "E{n4}",
    ),
    "fields": (
        "字段说明",
        "{f}页面中各字段的含义说明：字段{a}表示最近一次修改人，带星号的字段为必填项，灰色字段由系统自动计算。",
        ["这些字段是什么意思？", "带星号的是什么？", "灰色的那一栏是啥？"],
        "的字段说明",
        "X{n3}",
    ),
    "flow": (
        "流程设置",
        "{f}的流程节点可以在流程设置中调整，最多支持{a}，支持会签和或签，修改后新提交的单据按新流程流转。",
        ["流程怎么改？", "节点能调整吗？", "怎么加一个处理人？"],
        "的流程设置",
        "{n2}个节点",
    ),
}
BI_ASPECTS = {
    "definition": (
        "指标口径",
        "{f}指标的统计口径与计算公式说明：分子分母的取数规则见口径编号{a}，数据每日凌晨更新。",
        ["这个数是怎么算的？", "口径是什么？", "那个指标怎么定义的？"],
        "指标的统计口径",
        "K{n3}",
        {},
    ),
    "region_month": (
        "区域月度报表",
        "按区域维度查看{f}的月度报表：可筛选华东、华南、华北等大区，时间粒度为自然月，报表编号{a}。",
        ["各个区每个月的情况在哪看？", "上个月各区域的数据呢？", "按月分区域看一下"],
        "指标按区域维度的月度报表",
        "M{n3}",
        {"维度": ["区域", "大区"], "时间": ["月度", "每月", "按月"]},
    ),
    "product_week": (
        "产品线周报",
        "按产品线维度查看{f}的周报：每周一生成，可下钻到单个产品，报表编号{a}。",
        ["每周分产品的数据在哪？", "上周各产品怎么样？", "按周看一下各条线"],
        "指标按产品线维度的周报",
        "W{n3}",
        {"维度": ["产品线", "产品"], "时间": ["周报", "每周", "按周"]},
    ),
    "yoy": (
        "同比环比分析",
        "{f}的同比和环比变化分析：与去年同期和上一周期对比，环比下降超过{a}时会触发预警通知。",
        ["怎么比去年掉了这么多？", "为什么下降了？", "跟上个月比变化大吗？"],
        "指标的同比环比分析",
        "{n2}%",
        {"时间": ["同比", "环比"]},
    ),
    "delay": (
        "数据延迟排查",
        "{f}数据未按时更新的排查：检查上游任务{a}是否完成，延迟超过两小时会在看板顶部提示。",
        ["今天的数怎么还没出来？", "数据怎么没更新？", "为什么还是昨天的？"],
        "指标的数据延迟排查",
        "T{n3}",
        {},
    ),
    "dashboard": (
        "看板配置",
        "在看板中添加{f}图表：进入编辑模式拖入指标组件，组件编号{a}，保存后对所有成员可见。",
        ["看板上怎么加这个数？", "图表怎么加进去？", "能放到首页看板吗？"],
        "指标的看板配置",
        "C{n3}",
        {},
    ),
}
GENERIC = {  # aspect -> (title, body, rewrite) for requests that name no system
    "guide": (
        "通用使用入门",
        "不确定使用的是哪个业务系统时，请先在统一门户的我的应用中确认系统名称，再查看对应系统的使用入门。",
        "不确定所用业务系统时的通用使用入门",
    ),
    "perm": (
        "通用权限申请",
        "不确定该向哪个业务系统申请权限时，请在统一门户提交通用权限申请单，由信息中心确认系统后分配。",
        "不确定所用业务系统时的通用权限申请",
    ),
    "export": (
        "通用导出说明",
        "各业务系统导出功能的通用说明：不确定所用系统时，先在统一门户确认系统名称，再按该系统的导出说明操作。",
        "不确定所用业务系统时的通用导出说明",
    ),
    "error": (
        "通用报错求助",
        "遇到报错但不确定是哪个业务系统时，请截图后在统一门户提交通用报错求助工单，信息中心会转给对应系统。",
        "不确定所用业务系统时的通用报错求助",
    ),
    "fields": (
        "通用字段释义",
        "各业务系统字段的通用释义：不确定所用系统时，请在统一门户搜索字段名称，星号代表必填。",
        "不确定所用业务系统时的通用字段释义",
    ),
    "flow": (
        "通用流程咨询",
        "不确定流程属于哪个业务系统时，请在统一门户提交通用流程咨询，由流程管理员确认所属系统。",
        "不确定所用业务系统时的通用流程咨询",
    ),
}
UNRESOLVABLE_CONTEXTS = [
    "",
    "用户：我也不记得是哪个系统了。",
    "用户：公司的系统太多了，我分不清。",
    "用户：就是那个网页版的。",
]

SYSTEM_PROMPT = "你是企业知识库检索系统的查询改写助手。"
PROMPT_TEMPLATE = (
    "请把用户的原始查询改写成一条适合检索企业帮助文档的完整查询。\n"
    "要求：根据上下文补全缺失的系统和功能名称，消除歧义，写明指标、维度和时间；上下文没有提到的名称不要编造；"
    "不要回答问题；使用与原始查询相同的语言；只输出一行：<rewrite>改写后的查询</rewrite>\n\n"
    "原始查询：{query}\n上下文：{context}"
)


def build_prompt(query: str, context: str = "") -> list[dict]:
    """Chat messages asking for one rewrite in the ``<rewrite>...</rewrite>`` format the format gate accepts."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": PROMPT_TEMPLATE.format(query=query, context=context or "（无）")},
    ]


def _fact(template: str, rng: random.Random) -> str:
    return template.format(
        L=rng.choice("BDGHJKMQUY"),
        n1=rng.randint(5, 9),
        n2=rng.randint(11, 49),
        n3=rng.randint(100, 999),
        n4=rng.randint(1000, 9999),
    )


def build(seed: int = SEED) -> tuple[list[dict], dict[str, list[dict]]]:
    rng = random.Random(seed)
    docs: list[dict] = []
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    used_facts: set[str] = set()

    def new_fact(template):
        for _ in range(100):  # distinct where the template allows
            fact = _fact(template, rng)
            if fact not in used_facts:
                break
        used_facts.add(fact)
        return fact

    heads: dict[str, int] = {}
    for _, (_, _, _, feats) in DOMAINS.items():
        for f in feats:
            heads[f[-2:]] = heads.get(f[-2:], 0) + 1

    for dom, (brand, dept, role, feats) in DOMAINS.items():
        aspects = BI_ASPECTS if dom == "BI" else APP_ASPECTS
        for fi, feat in enumerate(feats):
            split = "test" if fi in TEST_FEATURES else "train"
            for asp, spec in aspects.items():
                title, body, vague, suffix, fact_t = spec[:5]
                extra_slots = spec[5] if len(spec) > 5 else {}
                fact = new_fact(fact_t)
                doc_id = f"{dom.lower()}-{fi}-{asp}"
                other = aspects[rng.choice([a for a in aspects if a != asp])][2]
                faq = f"常见提问：{rng.choice(vague)}{rng.choice(other)}"  # vague words shared with other documents
                docs.append(
                    {
                        "id": doc_id,
                        "text": f"【{brand}】{feat} · {title}。" + body.format(f=feat, b=brand, a=fact) + faq,
                    }
                )
                reference = f"{brand}{feat}{suffix}"
                slots = {"系统": [brand, brand[2:]], ("指标" if dom == "BI" else "功能"): [feat], **extra_slots}
                roll = rng.random()
                if roll < 0.15:
                    category, query, context = "clear", reference, ""
                elif dom == "BI":
                    category, query = "metric_clarification", rng.choice(vague)
                    context = rng.choice(
                        [
                            f"对话记录：用户：我在{brand}里关注{feat}这个指标。",
                            f"当前看板：{brand} > {feat}；用户角色：{role}",
                        ]
                    )
                elif heads[feat[-2:]] > 1:
                    category = "ambiguity"
                    query = f"{feat[-2:]}{rng.choice(['那块', '这块', '那个'])}{rng.choice(['怎么弄？', '有问题', '怎么搞？'])}"
                    context = f"用户部门：{dept}，常用系统：{brand}。用户之前说：{rng.choice(vague)}"
                else:
                    category, query = "missing_entity", rng.choice(vague)
                    context = rng.choice(
                        [f"当前页面：{brand} > {feat}", f"对话记录：用户：我刚打开{brand}的{feat}页面。"]
                    )
                rows[split].append(
                    {
                        "id": f"{doc_id}-q",
                        "category": category,
                        "language": "zh",
                        "query": query,
                        "context": context,
                        "gold_doc_ids": [doc_id],
                        "required_slots": slots,
                        "answer_terms": [fact],
                        "reference_rewrites": [reference],
                    }
                )
    for asp, (title, body, reference) in GENERIC.items():
        doc_id = f"generic-{asp}"
        docs.append({"id": doc_id, "text": f"【统一门户】通用帮助 · {title}。{body}"})
        for k, vq in enumerate(APP_ASPECTS[asp][2] + APP_ASPECTS[asp][2][:2]):
            split = "test" if k in (0, 3) else "train"
            rows[split].append(
                {
                    "id": f"{doc_id}-q{k}",
                    "category": "unresolvable",
                    "language": "zh",
                    "query": vq,
                    "context": UNRESOLVABLE_CONTEXTS[k % len(UNRESOLVABLE_CONTEXTS)],
                    "gold_doc_ids": [doc_id],
                    "required_slots": {},
                    "answer_terms": [],
                    "reference_rewrites": [reference],
                }
            )
    return docs, rows


def finalize(docs: list[dict], rows: dict[str, list[dict]], prompt=build_prompt) -> dict:
    """Add hard negatives and prompts (built by `prompt(query, context)`); return the sanity numbers (and raise if a
    check fails)."""
    from trl_ext.rewards.query_rewrite import BM25Index

    index = BM25Index(docs)
    stats = {}
    for split, split_rows in rows.items():
        mrr_q, mrr_ref = [], []
        for row in split_rows:
            ranked = index.ranking(row["query"])
            gold = set(row["gold_doc_ids"])
            scores = index.scores(row["query"])
            row["hard_negative_ids"] = [d for d in ranked[:20] if d not in gold and scores[index.position[d]] > 0][:3]
            if len(row["hard_negative_ids"]) < 3:
                raise AssertionError(f"row {row['id']} has fewer than 3 hard negatives: {row['hard_negative_ids']}")
            mrr_q.append(index.metrics(row["query"], row["gold_doc_ids"])["mrr"])
            mrr_ref.append(index.metrics(row["reference_rewrites"][0], row["gold_doc_ids"])["mrr"])
            row["prompt"] = prompt(row["query"], row["context"])
            # the SFT target (TRL's conversational prompt-completion format): the reference in the gate's format
            row["completion"] = [{"role": "assistant", "content": f"<rewrite>{row['reference_rewrites'][0]}</rewrite>"}]
        stats[split] = {
            "rows": len(split_rows),
            "original_mrr@10": sum(mrr_q) / len(mrr_q),
            "reference_mrr@10": sum(mrr_ref) / len(mrr_ref),
        }
        if not (stats[split]["original_mrr@10"] < 0.3 and stats[split]["reference_mrr@10"] > 0.8):
            raise AssertionError(f"sanity check failed on {split}: {stats[split]}")
    return stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    docs, rows = build(args.seed)
    stats = finalize(docs, rows)
    (args.out / "query_rewrite_corpus").mkdir(parents=True, exist_ok=True)
    (args.out / "query_rewrite").mkdir(parents=True, exist_ok=True)
    with open(args.out / "query_rewrite_corpus" / "corpus.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    for split, split_rows in rows.items():
        with open(args.out / "query_rewrite" / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows)
    cats = {}
    for split_rows in rows.values():
        for r in split_rows:
            cats[r["category"]] = cats.get(r["category"], 0) + 1
    print(json.dumps({"documents": len(docs), "categories": cats, **stats}, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
