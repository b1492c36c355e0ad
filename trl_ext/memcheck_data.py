"""Synthetic inputs of `trl-ext memcheck`: a random-weight model of a recipe's architecture, a word-level tokenizer
of its vocabulary, and rows that fill the recipe's maximum lengths."""

from __future__ import annotations

import contextlib
from pathlib import Path


def synthetic_lengths(recipe, prompt_length: int | None = None) -> dict[str, int]:
    """Token counts of the synthetic rows: every sequence is as long as the recipe allows.

    DPO/KTO/SFT/reward: a quarter of `max_length` is prompt, the rest completion (prompt + completion = max_length;
    one less for reward, whose EOS fills the last position).
    GRPO/PPO: the estimator's prompt length and `max_completion_length` (generation is forced to it).
    """
    from trl_ext.memory import settings_from_recipe

    settings = settings_from_recipe(recipe, prompt_length=prompt_length)
    if settings.method in ("dpo", "kto", "sft", "reward"):
        prompt = max(1, settings.max_length // 4)
        # TRL's RewardTrainer appends EOS and drops rows longer than max_length (the others truncate)
        return {"prompt": prompt, "completion": settings.max_length - prompt - (settings.method == "reward")}
    return {"prompt": settings.prompt_length, "completion": settings.completion_length}


def synthetic_rows(method: str, lengths: dict[str, int], n_rows: int, vocab_size: int, seed: int = 0) -> list[dict]:
    """Rows in TRL's standard (plain text) format; each word is one token of `word_tokenizer`."""
    import random

    rng = random.Random(seed)
    words = max(vocab_size - 3, 1)

    def text(n: int) -> str:
        return " ".join(f"w{rng.randrange(words)}" for _ in range(n))

    def completion(n: int) -> str:  # TRL joins prompt + completion as strings: a completion starts with a space
        return " " + text(n)

    rows = []
    for i in range(n_rows):
        prompt = text(lengths["prompt"])
        if method in ("dpo", "reward"):
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": completion(lengths["completion"]),
                    "rejected": completion(lengths["completion"]),
                }
            )
        elif method == "kto":
            rows.append({"prompt": prompt, "completion": completion(lengths["completion"]), "label": i % 2 == 0})
        elif method == "sft":
            rows.append({"prompt": prompt, "completion": completion(lengths["completion"])})
        else:
            rows.append({"prompt": prompt})
    return rows


def trace_reward(completions, **kwargs) -> list[float]:
    """A reward in [0, 1) from a checksum of each completion's text: varied within a group, needing no column."""
    import zlib

    from trl_ext.rewards.completions import completion_text

    return [zlib.crc32(completion_text(c).encode()) % 1000 / 1000 for c in completions]


def synthetic_text_rows(length: int, n_rows: int, vocab_size: int, seed: int = 1) -> list[dict]:
    """`{"text": ...}` rows of `length` tokens: the anchor text of an EWC Fisher pass or the forgetting monitor."""
    import random

    rng = random.Random(seed)
    words = max(vocab_size - 3, 1)
    return [{"text": " ".join(f"w{rng.randrange(words)}" for _ in range(length))} for _ in range(n_rows)]


def word_tokenizer(vocab_size: int):
    """A fast word-level tokenizer with `vocab_size` ids: `w0 .. w{V-4}` plus `<unk>`, `<pad>`, `</s>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 3)}
    vocab.update({"<unk>": vocab_size - 3, "<pad>": vocab_size - 2, "</s>": vocab_size - 1})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def save_random_model(
    config: dict, out: Path, model_class: str = "causal", device: str = "cpu", num_layers: int | None = None
) -> None:
    """Save a bf16 model of `config`'s architecture with random weights, and a `word_tokenizer` of its vocabulary.

    Args:
        config (`dict`): the model's `config.json`.
        out (`Path`): the directory to write.
        model_class (`str`, *optional*, defaults to `"causal"`): `causal` or `classifier` (one label, a reward model).
        device (`str`, *optional*, defaults to `"cpu"`): where the weights are initialised.
        num_layers (`int` or `None`, *optional*): build only this many decoder layers (a reduced-depth trace).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = {k: v for k, v in config.items() if not k.startswith("_")}
    if num_layers is not None:
        config["num_hidden_layers"] = num_layers
        if isinstance(config.get("layer_types"), list):  # deeper than the original: repeat its last layer's type
            types = config["layer_types"]
            config["layer_types"] = (types + types[-1:] * num_layers)[:num_layers]
    cfg = AutoConfig.for_model(**config)
    cls = AutoModelForCausalLM if model_class == "causal" else AutoModelForSequenceClassification
    if model_class != "causal":
        cfg.num_labels = 1
    with torch.device(device):
        model = cls.from_config(cfg, dtype=torch.bfloat16)
    if model_class != "causal":
        model.config.pad_token_id = cfg.vocab_size - 2
    model.save_pretrained(out)
    word_tokenizer(cfg.vocab_size).save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def word_tokenizer_for_loading(vocab_size: int):
    """Make `trl_ext.modeling.load_tokenizer` return `word_tokenizer(vocab_size)` inside the block.

    transformers 5's `AutoTokenizer` picks the tokenizer class from the model's `model_type` (Qwen2Tokenizer for a
    Qwen2 config) and ignores a saved word-level `tokenizer.json`, which then tokenizes every word to nothing; the
    random model's run needs the word-level tokenizer itself.
    """
    import trl_ext.modeling as modeling

    original = modeling.load_tokenizer
    modeling.load_tokenizer = lambda *args, **kwargs: word_tokenizer(vocab_size)
    try:
        yield
    finally:
        modeling.load_tokenizer = original
