"""Model architecture numbers the estimator needs, read from a `config.json` without loading weights.

Where the config comes from, in order: a local directory (or `builtin:<name>`) holding `config.json`; a
`config.json` bundled with trl-ext for popular architectures (`trl_ext/data/model_configs`, so estimates work
offline); the Hugging Face cache of an earlier download. Nothing is fetched from the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trl_ext.assets import DATA_DIR

BUNDLED_CONFIGS = DATA_DIR / "model_configs"

#: Names of the linear layers of one Llama/Qwen/Mistral-style decoder layer (what `all-linear` adapts).
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer, as far as memory is concerned.

    `linear_shapes()` gives `(in_features, out_features)` of each linear layer in one decoder layer.
    """

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    config: dict | None = None  # the full config.json, for building the architecture (memcheck)

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """Weights of all decoder linear layers (the ones 4-bit quantization converts)."""
        return self.num_layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        """Input embedding plus, when untied, the output head (both stay in 16-bit under bitsandbytes)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def other_params(self) -> int:
        """RMSNorm weights (two per layer plus the final norm) and q/k/v biases where the model has them."""
        bias = (self.q_dim + 2 * self.kv_dim) if self.attention_bias else 0
        return self.num_layers * (2 * self.hidden_size + bias) + self.hidden_size

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embedding_params + self.other_params


def architecture_from_config(config: dict, name: str = "model") -> Architecture:
    """Build an `Architecture` from a `config.json` mapping (text config of multimodal models included)."""
    if "text_config" in config and "hidden_size" not in config:
        config = {**config["text_config"], "_name_or_path": config.get("_name_or_path", name)}
    missing = [
        k
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        if k not in config
    ]
    if missing:
        raise ValueError(
            f"config.json of {name} lacks {', '.join(missing)}: the estimator supports decoder-only "
            "transformers (Llama, Qwen2, Mistral style)."
        )
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    return Architecture(
        name=name,
        hidden_size=hidden,
        intermediate_size=int(config["intermediate_size"]),
        num_layers=int(config["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        vocab_size=int(config["vocab_size"]),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
        config=config,
    )


def bundled_config_names() -> list[str]:
    return sorted(p.stem.replace("--", "/") for p in BUNDLED_CONFIGS.glob("*.json"))


def find_config(name_or_path: str) -> Path | None:
    """The `config.json` for a model name or path, or None. Never touches the network."""
    from trl_ext.assets import resolve_builtin
    from trl_ext.data.real_models import packaged_model_source

    # a real model converted on first use (builtin:smollm2-135m-instruct): read its original's bundled config, so an
    # estimate never converts (the conversion keeps every shape)
    name_or_path = packaged_model_source(name_or_path) or name_or_path
    try:
        path = Path(resolve_builtin(name_or_path))
    except FileNotFoundError:
        return None
    if path.is_file() and path.name.endswith(".json"):
        return path
    if (path / "config.json").is_file():
        return path / "config.json"
    bundled = BUNDLED_CONFIGS / (str(name_or_path).replace("/", "--") + ".json")
    if bundled.is_file():
        return bundled
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), "config.json")
    except Exception:  # not a valid repo id
        cached = None
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    return None


def load_architecture(name_or_path: str) -> Architecture:
    """The `Architecture` of a model; a clear error when no `config.json` can be found offline."""
    config_path = find_config(name_or_path)
    if config_path is None:
        raise FileNotFoundError(
            f"No config.json for model {name_or_path!r}: it is not a local directory, not bundled with trl-ext and "
            "not in the Hugging Face cache. Download just its config (`huggingface-cli download "
            f"{name_or_path} config.json`) or point model_name_or_path at a directory with config.json. "
            f"Bundled: {', '.join(bundled_config_names())}."
        )
    return architecture_from_config(json.loads(config_path.read_text()), name=str(name_or_path))
