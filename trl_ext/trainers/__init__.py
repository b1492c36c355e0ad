"""Thin subclasses of TRL trainers, one file per method. Each holds only what differs from TRL."""

from __future__ import annotations

from trl_ext.modeling import align_adapter_dtype


class TrlExtTrainerMixin:
    """Behaviour every trl-ext trainer shares, placed before the TRL trainer in the bases.

    - QLoRA adapters compute in the 4-bit compute dtype (:func:`trl_ext.modeling.align_adapter_dtype`): TRL casts
      them to bf16, which on CPU or pre-Ampere GPUs is not the dtype the layer computes in.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        align_adapter_dtype(self.model)
