"""The Fisher pass's sequences, as a recipe's `ewc_fisher_*` keys select them."""

from __future__ import annotations

from trl_ext.configs.ewc import DEFAULT_ANCHOR_DATASET
from trl_ext.data.samples import collate, load_token_samples  # noqa: F401  (deprecated path, kept for one release)


def fisher_samples(config, tokenizer):
    """The sequences the Fisher is estimated from.

    Args:
        config (`EWCArguments`):
            A method config with the EWC keys: `ewc_fisher_dataset` (default `builtin:general_text`),
            `ewc_fisher_dataset_config`, `ewc_fisher_split`, `ewc_fisher_samples`, `ewc_fisher_max_length`, `seed`.
        tokenizer (`PreTrainedTokenizerBase`):
            Tokenizer of the model.

    Returns:
        `list[tuple[torch.Tensor, torch.Tensor]]`: `(input_ids, loss_mask)` pairs, see
        `trl_ext.data.samples.load_token_samples`.
    """
    return load_token_samples(
        config.ewc_fisher_dataset or DEFAULT_ANCHOR_DATASET,
        tokenizer,
        config.ewc_fisher_samples,
        config.ewc_fisher_max_length,
        split=config.ewc_fisher_split,
        config=config.ewc_fisher_dataset_config,
        seed=config.seed,
        split_key="ewc_fisher_split",
    )


def estimate_recipe_fisher(model, config, tokenizer, **kwargs):
    """The Fisher a recipe asks for: `estimate_fisher` on `fisher_samples(config, tokenizer)` with the config's
    `ewc_fisher_*` settings. Shared by the trainer (Fisher at start) and `trl-ext fisher`.

    Args:
        model (`PeftModel`):
            The model with its LoRA adapters.
        config:
            The method's config (an `EWCArguments` subclass).
        tokenizer:
            The tokenizer (its pad token pads the Fisher batches).
        **kwargs:
            More arguments of `estimate_fisher` (process index and count, checkpointing, modules).

    Returns:
        `FisherEstimate`
    """
    import torch

    from trl_ext.ewc.fisher import estimate_fisher

    return estimate_fisher(
        model,
        fisher_samples(config, tokenizer),
        mode=config.ewc_fisher_mode,
        fisher_type=config.ewc_fisher_type,
        batch_size=config.ewc_fisher_batch_size,
        seed=config.seed,
        pad_token_id=tokenizer.pad_token_id,
        dtype=getattr(torch, config.ewc_fisher_dtype),
        **kwargs,
    )
