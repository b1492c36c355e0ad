"""Token sequences of anchor text, for the EWC Fisher pass and the forgetting monitor.

Any dataset a recipe can name works if it has a `text`, `messages`, `prompt`+`completion` or `prompt`+`chosen`
column; prompts are masked out of every loss.
"""

from __future__ import annotations

import random

import torch

TEXT_FORMATS = ("text", "messages", "prompt+completion", "prompt+chosen")


def _render(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _split_example(example: dict, tokenizer) -> tuple[str, str]:
    """`(prompt, completion)` text of one example; the prompt's tokens are masked out of every loss."""
    if "text" in example:
        return "", example["text"]
    if "messages" in example:
        return "", _render(tokenizer, example["messages"])
    if "prompt" in example and ("completion" in example or "chosen" in example):
        prompt = example["prompt"]
        completion = example["completion"] if "completion" in example else example["chosen"]
        if isinstance(prompt, list):  # conversational
            prompt_text = _render(tokenizer, prompt, add_generation_prompt=True)
            full = _render(tokenizer, prompt + completion)
            if not full.startswith(prompt_text):
                raise ValueError("The chat template renders the prompt differently inside the conversation.")
            return prompt_text, full[len(prompt_text) :]
        return prompt, completion
    raise ValueError(f"found columns {', '.join(example)}")


def load_token_samples(
    name: str,
    tokenizer,
    n: int,
    max_length: int,
    split: str = "train",
    config: str | None = None,
    seed: int = 0,
    fallback_split: str | None = None,
    split_key: str = "the split",
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Up to `n` examples of dataset `name`, tokenized, with the mask of the tokens to model.

    Examples are drawn without replacement in a seeded order; a dataset smaller than `n` gives all its examples.

    Args:
        name (`str`):
            Any dataset name a recipe's `dataset_name` accepts (`builtin:general_text`, a local file, a Hub id).
        tokenizer (`PreTrainedTokenizerBase`):
            Tokenizer (and chat template, for `messages` and conversational prompts) of the model.
        n (`int`):
            Most examples to return.
        max_length (`int`):
            Longest sequence in tokens; longer ones are truncated.
        split (`str`, *optional*, defaults to `"train"`):
            Split to read; may carry a row slice such as `train[:256]`.
        config (`str`, *optional*):
            Configuration name of the dataset.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the draw order.
        fallback_split (`str`, *optional*):
            Split to read instead when the dataset has no split of `split`'s name; a row slice carries over
            (`test[:32]` reads `train[:32]`).
        split_key (`str`, *optional*, defaults to `"the split"`):
            The recipe key an unknown split's error tells the user to set.

    Returns:
        `list[tuple[torch.Tensor, torch.Tensor]]`: `(input_ids, loss_mask)` per example, 1-D long and bool tensors;
        `loss_mask[t]` is true where token `t` is text to model (not prompt).
    """
    from trl_ext.data.loading import load_dataset_by_name, select_split

    dataset = load_dataset_by_name(name, config)
    split_name = split.split("[", 1)[0]  # `test[:32]` names the split `test`
    if fallback_split is not None and split_name not in dataset and fallback_split in dataset:
        split = fallback_split + split[len(split_name) :]  # the row slice, if any, carries over
    ds = select_split(dataset, split, name, split_key)
    columns = set(ds.column_names)
    if not (
        {"text"} <= columns
        or {"messages"} <= columns
        or {"prompt", "completion"} <= columns
        or {"prompt", "chosen"} <= columns
    ):
        raise ValueError(
            f"Dataset {name} (split {split!r}) has columns {', '.join(sorted(columns))}; the Fisher and the "
            f"forgetting monitor need one of: {', '.join(TEXT_FORMATS)}."
        )
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    samples = []
    for i in order[:n]:
        prompt, completion = _split_example(ds[i], tokenizer)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if tokenizer.bos_token_id is not None and not prompt and (not c_ids or c_ids[0] != tokenizer.bos_token_id):
            p_ids = [tokenizer.bos_token_id]
        if tokenizer.eos_token_id is not None and "text" in columns:
            c_ids = c_ids + [tokenizer.eos_token_id]
        ids = (p_ids + c_ids)[:max_length]
        mask = ([False] * len(p_ids) + [True] * len(c_ids))[:max_length]
        if sum(mask[1:]) == 0:  # nothing to predict
            continue
        samples.append((torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.bool)))
    if not samples:
        raise ValueError(f"Dataset {name} (split {split!r}) gave no sequence with tokens to model.")
    return samples


def collate(samples, pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad token samples into one batch.

    Args:
        samples (`list[tuple[torch.Tensor, torch.Tensor]]`):
            `(input_ids, loss_mask)` pairs as `load_token_samples` returns them.
        pad_token_id (`int`):
            Token id the padding is filled with.
        device (`torch.device` or `str`, *optional*):
            Device the batch is moved to; stays on CPU when `None`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor, torch.Tensor]`: `input_ids`, `attention_mask` and `target_mask`, each
        of shape (B, T); `target_mask[:, t]` is true where the logits at position `t` predict a modelled token
        `t + 1`.
    """
    length = max(len(ids) for ids, _ in samples)
    batch = len(samples)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    attention = torch.zeros((batch, length), dtype=torch.long)
    target = torch.zeros((batch, length), dtype=torch.bool)
    for i, (ids, mask) in enumerate(samples):
        input_ids[i, : len(ids)] = ids
        attention[i, : len(ids)] = 1
        target[i, : len(ids) - 1] = mask[1:]
    if device is not None:
        input_ids, attention, target = input_ids.to(device), attention.to(device), target.to(device)
    return input_ids, attention, target
