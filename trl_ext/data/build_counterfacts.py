"""Build the bundled ``builtin:counterfacts`` dataset: ``python -m trl_ext.data.build_counterfacts``.

Preference pairs that prefer *wrong* versions of the facts in ``general_text`` (the text the tiny model was pre-trained
on): sums off by a few, a town placed on another river, a road whose two rivers are swapped. DPO on them must move the
model away from what it knew, which is what the forgetting benchmark (``benchmarks/forgetting.py``) measures.

Rows are conversational (``prompt``/``chosen``/``rejected``): ``chosen`` is the counterfact, ``rejected`` the true
sentence. Road pairs are capped at 60 so the kinds stay balanced; the first 30 shuffled pairs are the ``test`` split.
Seeded: the same seed and ``general_text`` give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from trl_ext.assets import DATA_DIR

SEED = 0
RIVERS = ["Ashen", "Cold", "Deep", "Green", "Long", "Quiet", "Silver", "Stone"]
MAX_ROAD_PAIRS = 60
TEST_PAIRS = 30


def counterfact_pair(text: str, rng: random.Random) -> tuple[list[dict], str, str] | None:
    """``(prompt messages, wrong answer, true answer)`` for a ``general_text`` sentence, or None for other sentences.

    Args:
        text (`str`):
            A sentence such as ``"4 plus 1 is 5."`` or ``"The town of Velmar sits by the Ashen river."``.
        rng (`random.Random`):
            Draws the wrong sum or river.

    Returns:
        `tuple` or `None`: the question as chat messages, the counterfact and the sentence itself.
    """

    def user(content: str) -> list[dict]:
        return [{"role": "user", "content": content}]

    if m := re.fullmatch(r"(\d+) plus (\d+) is (\d+)\.", text):
        a, b, c = m.groups()
        wrong = int(c) + rng.choice([-2, -1, 1, 2, 3])
        return user(f"What is {a} plus {b}?"), f"{a} plus {b} is {wrong}.", text
    if m := re.fullmatch(r"The town of (\w+) sits by the (\w+) river\.", text):
        town, river = m.groups()
        other = rng.choice([r for r in RIVERS if r != river])
        return user(f"Which river is {town} on?"), f"The town of {town} sits by the {other} river.", text
    if m := re.fullmatch(r"The road from (\w+) to (\w+) follows the (\w+) river and then the (\w+) river\.", text):
        a, b, r1, r2 = m.groups()
        w1, w2 = r2, r1  # the rivers in the wrong order
        if w1 == r1:
            w1 = rng.choice([r for r in RIVERS if r != r1])
        return (
            user(f"How does the road from {a} to {b} go?"),
            f"The road from {a} to {b} follows the {w1} river and then the {w2} river.",
            text,
        )
    return None


def build(seed: int = SEED, source: Path = DATA_DIR / "general_text" / "train.jsonl") -> dict[str, list[dict]]:
    """The dataset's rows per split, from the ``general_text`` sentences in ``source``.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seed of the wrong answers and of the order.
        source (`Path`, *optional*):
            JSONL file of ``{"text": ...}`` rows; defaults to the bundled ``general_text`` train split.

    Returns:
        `dict[str, list[dict]]`: ``{"test": [...], "train": [...]}``, each row ``prompt``/``chosen``/``rejected``.
    """
    rng = random.Random(seed)
    with open(source, encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    pairs = [p for p in (counterfact_pair(t, rng) for t in texts) if p is not None]
    rng.shuffle(pairs)
    roads = [p for p in pairs if "road" in p[1]][:MAX_ROAD_PAIRS]
    others = [p for p in pairs if "road" not in p[1]]
    pairs = others + roads
    rng.shuffle(pairs)
    rows = [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
        for prompt, chosen, rejected in pairs
    ]
    return {"test": rows[:TEST_PAIRS], "train": rows[TEST_PAIRS:]}


def write(rows: dict[str, list[dict]], out: Path) -> None:
    """Write ``out/<split>.jsonl`` for every split of ``rows``."""
    out.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in split_rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=DATA_DIR / "counterfacts")
    args = parser.parse_args(argv)
    rows = build(args.seed)
    write(rows, args.out)
    print(f"wrote {len(rows['train'])} train / {len(rows['test'])} test pairs to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
