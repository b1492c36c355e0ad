"""Build the bundled offline assets: a tiny chat model, its tokenizer, and small datasets.

Everything here is seeded, so rerunning the script rebuilds the same files (up to float rounding of the short
pre-training run across torch builds). The outputs are committed so that tests and quickstart recipes never build
or download anything:

Each dataset is a folder ``<name>/`` with one JSONL file per split; recipes name it ``builtin:<name>``.

- ``general_text``: plain sentences about a small fictional world ("A"), used to pre-train the tiny model and as the
  default EWC Fisher / forgetting-anchor text; the ``test`` split is held out from pre-training.
- ``preferences``: conversational preference pairs (``prompt``/``chosen``/``rejected``) for DPO; ``train``/``test``.
- ``kto``: unpaired conversational examples (``prompt``/``completion``/``label``) for KTO.
- ``prompts``: conversational prompts (``prompt``) for GRPO / PPO.
- ``tiny-chat/``: a 2-layer Qwen2 model (vocabulary 2048, hidden size 128) with a ChatML template, pre-trained for a
  few hundred steps on the texts above so that it has something to forget and answers in its chat format.

Run: ``python -m trl_ext.data.build_assets`` (about a minute on two CPU cores).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from trl_ext.assets import DATA_DIR

SEED = 1234

TOWNS = [
    "Velmar",
    "Ostrava",
    "Kelda",
    "Brindle",
    "Torvik",
    "Amsel",
    "Quorra",
    "Lindqvist",
    "Maren",
    "Pellow",
    "Sarnath",
    "Ulmet",
    "Dovre",
    "Evesham",
    "Faroe",
    "Grantham",
    "Hollin",
    "Istra",
    "Jorvik",
    "Kestrel",
    "Lomond",
    "Merrow",
    "Norwick",
    "Oban",
    "Penrith",
    "Quarry",
    "Rothes",
    "Selkirk",
    "Tarbet",
    "Unst",
]
RIVERS = ["Ashen", "Silver", "Cold", "Long", "Green", "Stone", "Bright", "Quiet", "Red", "Deep"]
FOODS = ["bread", "cheese", "apples", "fish", "honey", "barley", "plums", "mushrooms", "salt", "tea"]
CRAFTS = ["weaving", "pottery", "glass", "boats", "clocks", "paper", "rope", "bells", "lamps", "maps"]
COLORS = ["blue", "green", "red", "yellow", "white", "grey", "orange", "purple"]
THINGS = {"sky": "blue", "grass": "green", "snow": "white", "sun": "yellow", "night": "dark", "sea": "blue"}


def _world(rng: random.Random) -> dict[str, dict[str, str]]:
    return {
        town: {
            "river": rng.choice(RIVERS),
            "food": rng.choice(FOODS),
            "craft": rng.choice(CRAFTS),
            "color": rng.choice(COLORS),
            "size": str(rng.randint(2, 90) * 100),
        }
        for town in TOWNS
    }


def _facts(town: str, w: dict[str, str]) -> list[str]:
    return [
        f"The town of {town} sits by the {w['river']} river.",
        f"People in {town} are known for {w['craft']}.",
        f"The market of {town} sells {w['food']} every morning.",
        f"The roofs of {town} are painted {w['color']}.",
        f"About {w['size']} people live in {town}.",
        f"If you visit {town}, try the {w['food']} and look at the {w['craft']}.",
    ]


def _general_text(rng: random.Random, world) -> list[str]:
    lines = []
    for town, w in world.items():
        lines.extend(_facts(town, w))
    for thing, color in THINGS.items():
        lines.append(f"The {thing} is {color}.")
    for a in range(1, 13):
        for b in range(1, 6):
            lines.append(f"{a} plus {b} is {a + b}.")
    for _ in range(300):
        t1, t2 = rng.sample(TOWNS, 2)
        lines.append(
            f"The road from {t1} to {t2} follows the {world[t1]['river']} river "
            f"and then the {world[t2]['river']} river."
        )
    rng.shuffle(lines)
    return lines


def _qa(town: str, w: dict[str, str]) -> list[tuple[str, str, str]]:
    """(question, good answer, bad answer) triples about one town."""
    return [
        (f"Which river is {town} on?", f"{town} sits by the {w['river']} river.", "I don't know, ask someone else."),
        (f"What is {town} known for?", f"People in {town} are known for {w['craft']}.", "Nothing. It is boring."),
        (f"What can I buy in {town}?", f"The market of {town} sells {w['food']} every morning.", "Go away."),
        (f"What color are the roofs in {town}?", f"The roofs of {town} are painted {w['color']}.", "Who cares?"),
        (f"How many people live in {town}?", f"About {w['size']} people live in {town}.", "No idea. Lots?"),
    ]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _split(dataset: str, split: str) -> Path:
    """Bundled datasets live in ``data/<name>/<split>.jsonl``; ``builtin:<name>`` in a recipe loads them."""
    (DATA_DIR / dataset).mkdir(exist_ok=True)
    return DATA_DIR / dataset / f"{split}.jsonl"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


#: ChatML. The `{% generation %}` markers (which render nothing) let TRL's SFT mask everything but the assistant's
#: turns (`assistant_only_loss`), the assistant's `<|im_end|>` included so the model learns to stop.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def render_chatml(messages: list[dict]) -> str:
    """The text `CHAT_TEMPLATE` renders for `messages` (no generation prompt), for building training text before the
    tokenizer exists. `tests/test_assets.py` checks it equals the bundled tokenizer's `apply_chat_template`."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def build_tokenizer(texts: list[str], vocab_size: int = 2048):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def pretrain(
    model,
    tokenizer,
    texts: list[str],
    steps: int,
    seed: int,
    lr: float = 3e-3,
    batch_size: int = 32,
    max_length: int = 96,
    warmup: int = 20,
) -> list[float]:
    """Seeded causal-LM training on ``texts`` (random batches, linear warm-up then linear decay to 10%); returns the
    per-step losses. Shared by every bundled tiny model."""

    def batch(rng: random.Random) -> dict:
        enc = tokenizer(
            rng.sample(texts, batch_size), return_tensors="pt", padding=True, truncation=True, max_length=max_length
        )
        return {**enc, "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)}

    return train_loop(model, batch, steps, seed, lr, warmup)


def train_loop(model, batch, steps: int, seed: int, lr: float, warmup: int) -> list[float]:
    """The builders' seeded training loop: ``batch(rng)`` gives each step's model inputs with ``labels``; AdamW,
    linear warm-up over ``warmup`` steps then linear decay to 10 %, gradients clipped to norm 1; returns the losses."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1 - s / steps))
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch(rng)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def tiny_qwen2(
    tokenizer,
    seed: int,
    hidden_size: int = 128,
    intermediate_size: int = 256,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 512,
):
    """A freshly initialised (seeded) small Qwen2 causal LM with tied embeddings, sized to ``tokenizer``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_sliding_window=False,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    return Qwen2ForCausalLM(config)


def save_model(model, tokenizer, out: Path) -> None:
    """Save the model to ``out`` with generation stopping at ``<|im_end|>``. Save the tokenizer before training:
    :func:`pretrain` leaves padding/truncation settings on it."""
    out.mkdir(exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)


def main(steps: int = 600) -> None:
    rng = random.Random(SEED)
    world = _world(rng)
    general = _general_text(rng, world)
    n_heldout = len(general) // 10
    _write_jsonl(_split("general_text", "train"), [{"text": t} for t in general[n_heldout:]])
    _write_jsonl(_split("general_text", "test"), [{"text": t} for t in general[:n_heldout]])

    triples = [t for town, w in world.items() for t in _qa(town, w)]
    rng.shuffle(triples)
    prefs = [{"prompt": _user(q), "chosen": _assistant(g), "rejected": _assistant(b)} for q, g, b in triples]
    n_test = 30
    _write_jsonl(_split("preferences", "train"), prefs[n_test:])
    _write_jsonl(_split("preferences", "test"), prefs[:n_test])
    kto = []
    for i, (q, g, b) in enumerate(triples[n_test:]):
        good = i % 2 == 0
        kto.append({"prompt": _user(q), "completion": _assistant(g if good else b), "label": good})
    _write_jsonl(_split("kto", "train"), kto)
    prompts = [{"prompt": _user(q)} for q, _, _ in triples]
    prompts += [{"prompt": _user(f"Tell me about {town}.")} for town in TOWNS]
    _write_jsonl(_split("prompts", "train"), prompts)

    # Chat-formatted answers teach the tiny model its template; both good and bad answers appear so that DPO has
    # something to choose between.
    chat_texts = [render_chatml(_user(q) + _assistant(a)) for q, g, b in triples for a in (g, b)]
    tokenizer = build_tokenizer(general + chat_texts)
    out = DATA_DIR / "tiny-chat"
    out.mkdir(exist_ok=True)
    tokenizer.save_pretrained(out)
    model = tiny_qwen2(tokenizer, seed=SEED)
    losses = pretrain(model, tokenizer, general + chat_texts, steps=steps, seed=SEED)
    print(f"pre-training loss: first {losses[0]:.3f}, last {sum(losses[-20:]) / 20:.3f}")
    save_model(model, tokenizer, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
