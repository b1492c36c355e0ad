"""Recipe keys of the EWC regularizer and the forgetting monitor (a dataclass mixin of every method's config)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from trl_ext.configs.faults import FaultArguments

FISHER_TYPES = ("true", "empirical")
FISHER_MODES = ("full", "kfac", "lora_params")


def fisher_tensor_shapes(mode: str, out_features: int, in_features: int, rank: int) -> dict[str, tuple[int, ...]]:
    """The Fisher tensors one adapted linear module has in `mode`: key suffix -> shape. The one place each mode's
    layout is written (the Fisher file keys, the penalty and the memory estimate all read it).

    Args:
        mode (`str`):
            `full` (one tensor, the module's own key, shaped as its weight), `kfac` (two vectors, `.kfac_out` then
            `.kfac_in`) or `lora_params` (`.lora_A` and `.lora_B`, shaped as the adapter's A and B).
        out_features (`int`), in_features (`int`):
            The base weight's shape.
        rank (`int`):
            The LoRA rank (used by `lora_params`).

    Returns:
        `dict[str, tuple[int, ...]]`: the shape of each tensor, keyed by the suffix appended to the module's name.
    """
    if mode == "full":
        return {"": (out_features, in_features)}
    if mode == "kfac":
        return {".kfac_out": (out_features,), ".kfac_in": (in_features,)}
    if mode == "lora_params":
        return {".lora_A": (rank, in_features), ".lora_B": (out_features, rank)}
    raise ValueError(f"Unknown Fisher mode {mode!r}; use {', '.join(FISHER_MODES)}.")


FISHER_DTYPES = ("float32", "bfloat16")
#: Dataset the Fisher is estimated on when the recipe names none (`ewc_fisher_dataset`).
DEFAULT_ANCHOR_DATASET = "builtin:general_text"


@dataclass
class EWCArguments(FaultArguments):
    """EWC (elastic weight consolidation) and forgetting-monitor keys, shared by DPO, GRPO, KTO and PPO configs
    (with the fault-policy keys of `trl_ext.configs.faults.FaultArguments`, its base).

    EWC adds `ewc_lambda / 2 * sum(F * (s * B @ A - delta_anchor) ** 2)` over the LoRA-adapted modules, where `F` is
    the diagonal Fisher information of each adapted module's frozen base weight (full weight space), `s * B @ A` the
    adapter's weight update and `delta_anchor` zero (anchor = base model) or the previous adapter's update (online
    EWC). The penalty's gradient is added once per optimizer step, whatever `gradient_accumulation_steps` is.

    Args:
        ewc_lambda (`float`, *optional*, defaults to `0.0`):
            Strength of the EWC penalty. `0.0` turns EWC off. The Fisher is per token, so `ewc/predicted_kl` is the
            per-token KL from the anchor the Fisher predicts and `ewc_lambda` trades it against the method's loss.
        ewc_fisher_path (`str`, *optional*):
            Precomputed Fisher file (`trl-ext fisher R.yaml --output fisher.safetensors`). Without it the Fisher is
            estimated at the start of training from `ewc_fisher_dataset`. With `ewc_anchor_adapter` it is the
            previous task's Fisher `F_old` of online EWC.
        ewc_fisher_dataset (`str`, *optional*):
            Dataset the Fisher is estimated on: any name a recipe's `dataset_name` accepts, with a `text`,
            `messages`, `prompt`+`completion` or `prompt`+`chosen` column (prompts are masked). Defaults to
            the bundled general text (`builtin:general_text`).
        ewc_fisher_dataset_config (`str`, *optional*):
            Configuration name of `ewc_fisher_dataset`.
        ewc_fisher_split (`str`, *optional*, defaults to `"train"`):
            Split of `ewc_fisher_dataset` to read.
        ewc_fisher_samples (`int`, *optional*, defaults to `512`):
            Number of sequences the Fisher is estimated from.
        ewc_fisher_max_length (`int`, *optional*, defaults to `512`):
            Longest sequence (tokens) in the Fisher pass; longer ones are truncated.
        ewc_fisher_batch_size (`int`, *optional*, defaults to `8`):
            Sequences per forward/backward in the Fisher pass (per-sample gradients are still exact).
        ewc_fisher_type (`str`, *optional*, defaults to `"true"`):
            `true`: labels sampled from the model's own next-token distribution (temperature 1) at each position of
            real text; `empirical`: the data's own next tokens.
        ewc_fisher_mode (`str`, *optional*, defaults to `"full"`):
            `full`: the exact diagonal of each adapted base weight, shape (out_features, in_features);
            `kfac`: factored diagonal `F_ij = E[g_i^2] E[x_j^2]` (two vectors per module) for models whose full
            diagonal does not fit in memory; `lora_params`: Fisher of the LoRA A/B parameters, an ablation only
            (degenerate at PEFT's init, where B = 0 makes A's gradient zero).
        ewc_fisher_dtype (`str`, *optional*, defaults to `"float32"`):
            Storage dtype of the Fisher (`float32` or `bfloat16`). It is always accumulated in float32.
        ewc_gamma (`float`, *optional*, defaults to `1.0`):
            Online EWC decay: `F = ewc_gamma * F_old + F_new` when `ewc_anchor_adapter` is set.
        ewc_anchor_adapter (`str`, *optional*):
            Online EWC for task sequences: the previous task's adapter directory. Training starts from it, the
            penalty anchors at it, and the Fisher estimated at it is added to `ewc_gamma` times `ewc_fisher_path`.
            When unset and the run starts from `sft_adapter_path` (DPO, KTO, GRPO, PPO), the penalty anchors at that
            SFT policy (and the Fisher is estimated there, unless `ewc_fisher_path` gives it); otherwise at the base.
        ewc_save_fisher (`bool`, *optional*, defaults to `False`):
            Write the Fisher used (after online accumulation) to `<output_dir>/ewc_fisher.safetensors` for the next
            task of a sequence.
        forgetting_anchor_dataset (`str`, *optional*):
            Attach the forgetting monitor: every `forgetting_eval_steps` steps log `forgetting/anchor_nll_delta`
            (mean token NLL on this dataset minus its value before training) and `forgetting/kl_to_reference`
            (measured token KL(reference || policy)). Works with or without EWC.
        forgetting_anchor_split (`str`, *optional*, defaults to `"test"`):
            Split of `forgetting_anchor_dataset`, optionally sliced (`test[:32]`); falls back to `train` (with
            the same slice) if the dataset has no such split.
        forgetting_eval_steps (`int`, *optional*, defaults to `50`):
            Steps between two forgetting evaluations.
        forgetting_eval_samples (`int`, *optional*, defaults to `64`):
            Anchor sequences per forgetting evaluation.
        forgetting_max_length (`int`, *optional*, defaults to `256`):
            Longest anchor sequence (tokens) in a forgetting evaluation.
    """

    ewc_lambda: float = field(default=0.0, metadata={"help": "EWC penalty strength; 0 turns EWC off."})
    ewc_fisher_path: str | None = field(default=None, metadata={"help": "Precomputed Fisher file (.safetensors)."})
    ewc_fisher_dataset: str | None = field(
        default=None, metadata={"help": "Dataset the Fisher is estimated on (default builtin:general_text)."}
    )
    ewc_fisher_dataset_config: str | None = field(default=None, metadata={"help": "Config of ewc_fisher_dataset."})
    ewc_fisher_split: str = field(default="train", metadata={"help": "Split of ewc_fisher_dataset."})
    ewc_fisher_samples: int = field(default=512, metadata={"help": "Sequences in the Fisher estimate."})
    ewc_fisher_max_length: int = field(default=512, metadata={"help": "Longest sequence in the Fisher pass."})
    ewc_fisher_batch_size: int = field(default=8, metadata={"help": "Sequences per Fisher forward/backward."})
    ewc_fisher_type: str = field(
        default="true",
        metadata={"help": "true (labels sampled from the model) or empirical.", "choices": list(FISHER_TYPES)},
    )
    ewc_fisher_mode: str = field(
        default="full",
        metadata={
            "help": "full, kfac (factored, low memory) or lora_params (ablation).",
            "choices": list(FISHER_MODES),
        },
    )
    ewc_fisher_dtype: str = field(
        default="float32", metadata={"help": "Fisher storage dtype.", "choices": list(FISHER_DTYPES)}
    )
    ewc_gamma: float = field(default=1.0, metadata={"help": "Online EWC decay of the previous Fisher."})
    ewc_anchor_adapter: str | None = field(
        default=None, metadata={"help": "Online EWC: previous task's adapter directory (start and anchor)."}
    )
    ewc_save_fisher: bool = field(default=False, metadata={"help": "Write the Fisher used to output_dir."})
    forgetting_anchor_dataset: str | None = field(
        default=None, metadata={"help": "Dataset of the forgetting monitor (attaches it when set)."}
    )
    forgetting_anchor_split: str = field(default="test", metadata={"help": "Split of forgetting_anchor_dataset."})
    forgetting_eval_steps: int = field(default=50, metadata={"help": "Steps between forgetting evaluations."})
    forgetting_eval_samples: int = field(default=64, metadata={"help": "Anchor sequences per evaluation."})
    forgetting_max_length: int = field(default=256, metadata={"help": "Longest anchor sequence in tokens."})

    def __post_init__(self):
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        check_ewc_arguments(self)

    @property
    def ewc_enabled(self) -> bool:
        return self.ewc_lambda > 0


def check_ewc_arguments(args) -> None:
    """Raise `ValueError` naming the key and the fix for any bad EWC value; runs before any weight is loaded."""
    if args.ewc_lambda < 0:
        raise ValueError(f"ewc_lambda must be >= 0 (0 turns EWC off); got {args.ewc_lambda}.")
    if args.ewc_fisher_type not in FISHER_TYPES:
        raise ValueError(f"ewc_fisher_type must be one of {', '.join(FISHER_TYPES)}; got {args.ewc_fisher_type!r}.")
    if args.ewc_fisher_mode not in FISHER_MODES:
        raise ValueError(f"ewc_fisher_mode must be one of {', '.join(FISHER_MODES)}; got {args.ewc_fisher_mode!r}.")
    if args.ewc_fisher_dtype not in FISHER_DTYPES:
        raise ValueError(f"ewc_fisher_dtype must be one of {', '.join(FISHER_DTYPES)}; got {args.ewc_fisher_dtype!r}.")
    for key in (
        "ewc_fisher_samples",
        "ewc_fisher_max_length",
        "ewc_fisher_batch_size",
        "forgetting_eval_steps",
        "forgetting_eval_samples",
        "forgetting_max_length",
    ):
        if getattr(args, key) < 1:
            raise ValueError(f"{key} must be a positive integer; got {getattr(args, key)}.")
    if args.ewc_gamma < 0:
        raise ValueError(f"ewc_gamma must be >= 0 (1.0 keeps the previous Fisher whole); got {args.ewc_gamma}.")
    if args.ewc_fisher_path is not None and not os.path.isfile(args.ewc_fisher_path):
        raise ValueError(
            f"ewc_fisher_path {args.ewc_fisher_path!r} does not exist; create it with "
            "`trl-ext fisher RECIPE.yaml --output FILE.safetensors` or drop the key to estimate the Fisher at start."
        )
    if args.ewc_anchor_adapter is not None and not os.path.isfile(
        os.path.join(args.ewc_anchor_adapter, "adapter_config.json")
    ):
        raise ValueError(
            f"ewc_anchor_adapter {args.ewc_anchor_adapter!r} has no adapter_config.json; pass the output_dir of the "
            "previous task's run."
        )
    if args.ewc_anchor_adapter is not None and args.ewc_fisher_mode == "lora_params":
        raise ValueError("ewc_anchor_adapter (online EWC) needs ewc_fisher_mode full or kfac, not lora_params.")
    if args.ewc_anchor_adapter is not None and args.ewc_fisher_mode == "kfac" and args.ewc_fisher_path is not None:
        raise ValueError(
            "Online EWC adds the previous Fisher (ewc_fisher_path) to the new one, which a factored (kfac) Fisher "
            "cannot represent; use ewc_fisher_mode: full, or drop ewc_fisher_path to anchor at the adapter only."
        )


def document_ewc_fields(cls):
    """Class decorator: append `EWCArguments`' documented fields (type and default) to a config's docstring,
    so `help(DPOConfig)` lists every EWC key next to TRL's."""
    fields_doc = ""
    for source in (EWCArguments, FaultArguments):
        doc = source.__doc__ or ""
        fields_doc += doc[doc.index("    Args:") + len("    Args:\n") :] if "    Args:" in doc else ""
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n\n    Args:\n" + fields_doc
    return cls
