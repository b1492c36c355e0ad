"""Build the bundled ``builtin:instructions`` dataset: ``python -m trl_ext.data.build_instructions``.

Short instruction-following conversations (``messages``: user and assistant turns) about the small fictional world
the tiny model was pre-trained on (``general_text``): questions about a town answered in one sentence, a town
described in two, sums, and two-turn follow-ups (the second question refers to the first answer's town). The answers
state the world's facts in fixed forms, so the tiny model can learn them with SFT and a held-out loss can fall.
The first ``TEST_CONVERSATIONS`` shuffled conversations are the ``test`` split. Seeded: byte-identical files on
every run.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from trl_ext.assets import DATA_DIR
from trl_ext.data.build_assets import SEED as WORLD_SEED
from trl_ext.data.build_assets import _qa, _world

SEED = 7
TEST_CONVERSATIONS = 40


def _turns(*texts: str) -> list[dict[str, str]]:
    """Alternating user / assistant messages."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(texts)]


def conversations(world: dict[str, dict[str, str]]) -> list[list[dict[str, str]]]:
    """Every conversation of the dataset, in a fixed order.

    Args:
        world (`dict`):
            Town -> its facts (`river`, `craft`, `food`, `color`, `size`), as `trl_ext.data.build_assets` draws them.

    Returns:
        `list[list[dict]]`: conversations as chat messages.
    """
    rows = []
    for town, w in world.items():
        rows.extend(_turns(question, answer) for question, answer, _ in _qa(town, w))
        rows.append(
            _turns(
                f"Tell me about {town}.",
                f"{town} sits by the {w['river']} river. People there are known for {w['craft']}.",
            )
        )
        rows.append(
            _turns(
                f"Which river is {town} on?",
                f"{town} sits by the {w['river']} river.",
                "And what is it known for?",
                f"People in {town} are known for {w['craft']}.",
            )
        )
    for a in range(1, 13):
        for b in range(1, 6):
            rows.append(_turns(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
    return rows


def build(out: Path) -> dict[str, int]:
    """Write ``train.jsonl`` and ``test.jsonl`` into ``out``; return the row count per split."""
    world = _world(random.Random(WORLD_SEED))  # the first draw of build_assets' generator: the same world
    rows = conversations(world)
    random.Random(SEED).shuffle(rows)
    splits = {"test": rows[:TEST_CONVERSATIONS], "train": rows[TEST_CONVERSATIONS:]}
    out.mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for messages in items:
                fh.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return {split: len(items) for split, items in splits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DATA_DIR / "instructions"), help="output folder")
    args = parser.parse_args(argv)
    counts = build(Path(args.out))
    print(f"wrote {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
