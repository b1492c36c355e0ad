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
