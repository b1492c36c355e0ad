"""EWC (elastic weight consolidation) for LoRA/QLoRA in full weight space: Fisher estimation, penalty, Fisher files.

- `EWCArguments`: recipe keys (`ewc_lambda`, `ewc_fisher_path`, `ewc_fisher_dataset`, ...), a dataclass
  mixin of every method's config.
- `estimate_fisher`: diagonal Fisher of the frozen base weight of each adapted module, per-sample gradients
  through hooks (works on 4-bit weights), true or empirical, full or factored (kfac).
- `EWCPenalty`: `lambda/2 * sum F (s B A - delta_anchor)^2`, chunked, float32.
- `save_fisher` / `load_fisher`: safetensors Fisher files, checked against the model (name and weight fingerprint),
  the mode and the target modules.
- `EWCTrainerMixin`: the trainer behaviour (Fisher at start, gradient once per optimizer step, logging).
- `fisher_cli`: `trl-ext fisher R.yaml --output fisher.safetensors`.

The anchor text the Fisher is estimated on is loaded by `trl_ext.data.samples`, shared with the forgetting monitor.
"""

from trl_ext.configs.ewc import EWCArguments
from trl_ext.data.samples import load_token_samples  # deprecated path, kept for one release
from trl_ext.ewc.cli import fisher_cli
from trl_ext.ewc.fisher import AdaptedModule, FisherEstimate, adapted_modules, estimate_fisher
from trl_ext.ewc.io import FisherMismatchError, load_fisher, model_identity, read_fisher, save_fisher
from trl_ext.ewc.penalty import Anchor, EWCPenalty, FullWeightPenalty
from trl_ext.ewc.trainer import EWCTrainerMixin

__all__ = [
    "AdaptedModule",
    "Anchor",
    "EWCArguments",
    "EWCPenalty",
    "EWCTrainerMixin",
    "FisherEstimate",
    "FisherMismatchError",
    "FullWeightPenalty",
    "adapted_modules",
    "estimate_fisher",
    "fisher_cli",
    "load_fisher",
    "load_token_samples",
    "model_identity",
    "read_fisher",
    "save_fisher",
]
