"""The PPO critic: its value head, where it lives (a second LoRA adapter on the actor's base, the actor's own weights,
or a separate model), its forward pass, and its saving and restoring with every checkpoint.

`PPOCriticMixin` is a mixin of `trl_ext.trainers.ppo.PPOTrainer`; `PPOCriticMixin._attach_critic` runs at the end
of the trainer's `__init__`. The critic's modules hang off the actor as `ppo_value_head` and
`ppo_critic_backbone` (so DDP and the optimizer see them); the actor's saved adapter and vLLM's weight sync leave
them out, and they are saved to `<checkpoint>/critic/` instead.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.utils.checkpoint
from torch import nn

from trl_ext.checkpoints import atomic_path, atomic_write_text
from trl_ext.modeling import align_adapter_dtype

CRITIC_DIR = "critic"
VALUE_HEAD_FILE = "value_head.safetensors"
STATE_FILE = "ppo_state.json"
CRITIC_MODULES = ("ppo_value_head", "ppo_critic_backbone")


class ValueHead(nn.Module):
    """A scalar value per position: `Linear(hidden_size, 1)` over the last hidden state.

    Args:
        hidden_size (`int`):
            Width of the hidden states it reads.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


def critic_lora_config(peft_config):
    """The LoRA config of a critic model (`critic: model`): the actor's keys, on the same kinds of modules.

    PEFT rewrites a config it applies in place (`all-linear` becomes the actor's full module names, such as
    `model.layers.0.self_attn.q_proj`), and a critic model is a bare decoder whose names lack the `model.` prefix
    (and may have other layer counts). So explicit dotted names are reduced to the module kinds they name.

    Args:
        peft_config (`peft.LoraConfig`):
            The actor's LoRA config, as given or after PEFT applied it.

    Returns:
        `peft.LoraConfig`: A new config for a `FEATURE_EXTRACTION` model; `peft_config` is left unchanged.
    """
    targets = peft_config.target_modules
    if isinstance(targets, (list, set, tuple)) and any("." in name for name in targets):
        targets = sorted({name.rsplit(".", 1)[-1] for name in targets})
    return dataclasses.replace(copy.deepcopy(peft_config), target_modules=targets, task_type="FEATURE_EXTRACTION")


def _backbone(model):
    """The decoder (no LM head) of a causal LM or PeftModel: hidden states without vocabulary-sized logits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(base, "base_model_prefix", "model")
    return getattr(base, prefix, base)


def _checkpoint_recomputing_under(recompute_context, function, *args):
    """`torch.utils.checkpoint` (non-reentrant, the only kind with a `context_fn`) whose recompute in the backward
    runs inside `recompute_context()`."""
    return torch.utils.checkpoint.checkpoint(
        function, *args, use_reentrant=False, context_fn=lambda: (nullcontext(), recompute_context())
    )


@contextmanager
def _checkpointing_recomputes_under(module, recompute_context):
    """Checkpointed layers recompute in the backward, long after this block, with whatever adapter is active then.
    Inside the block, every layer `module` checkpoints recomputes under `recompute_context()` instead (the adapter
    that ran the forward), so the critic's pass keeps checkpointing: without it the pass held every layer's
    activations, 14 GiB of the PPO 1.5B preset's 18 GiB traced train step.

    transformers has no public way to give one pass its own checkpoint function: each checkpointing layer calls its
    `_gradient_checkpointing_func` attribute (set by `gradient_checkpointing_enable`), swapped here and restored;
    `tests/test_ppo_critic.py` fails if the layers stop calling it.
    """
    flagged = [m for m in module.modules() if getattr(m, "gradient_checkpointing", False) is True]
    originals = [m.__dict__.get("_gradient_checkpointing_func") for m in flagged]
    swapped = functools.partial(_checkpoint_recomputing_under, recompute_context)
    for m in flagged:
        m._gradient_checkpointing_func = swapped
    try:
        yield
    finally:
        for m, original in zip(flagged, originals):
            if original is None:
                m.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                m._gradient_checkpointing_func = original


class PPOCriticMixin:
    """The critic of `PPOTrainer`: setup, values, save/load/resume."""

    def _attach_critic(self, args, peft_config) -> None:
        """Add the critic to the (already PEFT-wrapped) actor and record the parameters the optimizer trains.

        Args:
            args (`PPOConfig`):
                The trainer's configuration (`critic`, `critic_model_name_or_path`).
            peft_config (`peft.PeftConfig`, *optional*):
                The actor's LoRA configuration as given, applied to a critic model (`critic: model`).
        """
        unwrapped = self.accelerator.unwrap_model(self.model)
        self._is_peft = hasattr(unwrapped, "peft_config")
        self._actor_adapter = unwrapped.active_adapter if self._is_peft else None
        self._critic_adapter = None
        if args.critic == "adapter":
            self._critic_adapter = "critic"
            config = copy.deepcopy(unwrapped.peft_config[self._actor_adapter])
            config.inference_mode = False
            unwrapped.add_adapter(self._critic_adapter, config)
            for name, param in unwrapped.named_parameters():
                if f".{self._critic_adapter}." in name:
                    param.requires_grad_(True)
            align_adapter_dtype(unwrapped)
        elif args.critic == "model":
            unwrapped.add_module("ppo_critic_backbone", self._load_critic_model(args, peft_config))
        critic_config = unwrapped.ppo_critic_backbone.config if args.critic == "model" else unwrapped.config
        hidden = critic_config.get_text_config().hidden_size  # a critic model may be narrower than the actor
        unwrapped.add_module("ppo_value_head", ValueHead(hidden).to(self.accelerator.device))
        self._trainable = [p for p in unwrapped.parameters() if p.requires_grad]
        if not self._is_peft and self.ref_model is None:  # full fine-tuning: a frozen copy is the reference
            self.ref_model = copy.deepcopy(unwrapped).eval().requires_grad_(False)
            for name in CRITIC_MODULES:
                self.ref_model._modules.pop(name, None)
        if getattr(self, "vllm_generation", None) is not None:
            self._keep_critic_out_of_vllm(self.vllm_generation)

    # ---------------------------------------------------------------------------------------------- critic plumbing
    def _load_critic_model(self, args, peft_config):
        from transformers import AutoModel

        from trl_ext.assets import resolve_builtin

        actor = self.accelerator.unwrap_model(self.model)
        kwargs = {"dtype": actor.dtype}
        quantization = getattr(actor.config, "quantization_config", None)
        if quantization is not None:
            kwargs["quantization_config"] = quantization
        critic = AutoModel.from_pretrained(resolve_builtin(args.critic_model_name_or_path), **kwargs)
        if peft_config is not None:
            from peft import get_peft_model, prepare_model_for_kbit_training

            if quantization is not None:
                critic = prepare_model_for_kbit_training(critic, use_gradient_checkpointing=False)
            critic = get_peft_model(critic, critic_lora_config(peft_config))
            align_adapter_dtype(critic)
        return critic.to(self.accelerator.device)

    @staticmethod
    def _keep_critic_out_of_vllm(generation):
        """Make `generation` (TRL's `VLLMGeneration`) send vLLM the actor's merged weights only.

        The value head and the critic backbone are modules of the actor (so DDP and the optimizer see them) but not of
        vLLM's model; critic LoRA weights are already skipped with every other LoRA weight. No public hook exists:
        `VLLMGeneration` takes no parameter filter, and `GRPOTrainer` calls `sync_weights` from its private generation
        methods with nothing around it, so the generator every sync reads, `_iter_named_params`, is wrapped on this
        instance. `test_vllm_weight_sync_sends_the_actor_only` fails when TRL renames it, gives it arguments, stops
        reading it in `sync_weights` or stops keeping the generation backend as `vllm_generation`.

        Args:
            generation (`trl.generation.vllm_generation.VLLMGeneration`):
                The trainer's vLLM backend, patched in place.
        """
        iterate = generation._iter_named_params

        def actor_params():
            for name, param in iterate():
                if not name.startswith(tuple(f"{m}." for m in CRITIC_MODULES)):
                    yield name, param

        generation._iter_named_params = actor_params

    def _restore_trainable(self):
        """PEFT's adapter switching toggles `requires_grad`; put back the flags the optimizer was built from."""
        for param in self._trainable:
            param.requires_grad_(True)

    @contextmanager
    def _critic_backbone(self):
        unwrapped = self.accelerator.unwrap_model(self.model)
        if self.args.critic == "model":
            yield _backbone(unwrapped.ppo_critic_backbone)
            return
        if self._critic_adapter is None:
            yield _backbone(unwrapped)
            return
        with self._adapter_backbone(self._critic_adapter) as backbone:
            yield backbone

    @contextmanager
    def _adapter_backbone(self, adapter: str):
        """The actor's decoder with `adapter` active; afterwards the actor's adapter is active again and the trainable
        flags are restored."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        backbone = _backbone(unwrapped)

        @contextmanager
        def active():
            unwrapped.set_adapter(adapter)
            try:
                yield
            finally:
                unwrapped.set_adapter(self._actor_adapter)
                self._restore_trainable()

        with active(), _checkpointing_recomputes_under(backbone, active):
            yield backbone

    def _critic_values(self, input_ids, attention_mask, logits_to_keep):
        """Value of the state before each completion token.

        Args:
            input_ids (`torch.Tensor`):
                Prompt and completion tokens, `(B, L)`.
            attention_mask (`torch.Tensor`):
                Their attention mask, `(B, L)`.
            logits_to_keep (`int`):
                Number of completion tokens `T` at the end of each row.

        Returns:
            `torch.Tensor`: The values, `(B, T)` in fp32.
        """
        head = self.accelerator.unwrap_model(self.model).ppo_value_head
        with self._critic_backbone() as backbone, self.accelerator.autocast():
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return head(hidden[:, -logits_to_keep - 1 : -1]).float()

    # ----------------------------------------------------------------------------------------- saving and resuming
    @contextmanager
    def _critic_detached(self):
        """The actor's saved weights stay the actor's: the critic modules are saved separately, under `critic/`."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        held = {n: unwrapped._modules.pop(n) for n in CRITIC_MODULES if n in unwrapped._modules}
        try:
            yield
        finally:
            unwrapped._modules.update(held)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        with self._critic_detached():
            super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.save_critic(output_dir or self.args.output_dir)

    def save_critic(self, output_dir: str) -> Path:
        """Write the critic (adapter or model, value head) and the KL controller state to `output_dir/critic`.

        Args:
            output_dir (`str`):
                The checkpoint or output directory.

        Returns:
            `Path`: The directory written, `output_dir/critic`.
        """
        from safetensors.torch import save_file

        unwrapped = self.accelerator.unwrap_model(self.model)
        path = Path(output_dir) / CRITIC_DIR
        path.mkdir(parents=True, exist_ok=True)
        if self._critic_adapter is not None:
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(unwrapped, adapter_name=self._critic_adapter)
            with atomic_path(path / "adapter_model.safetensors") as tmp:
                save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp)
            unwrapped.peft_config[self._critic_adapter].save_pretrained(str(path))
        elif self.args.critic == "model":
            unwrapped.ppo_critic_backbone.save_pretrained(str(path / "model"))
        head = {k: v.detach().contiguous().cpu() for k, v in unwrapped.ppo_value_head.state_dict().items()}
        with atomic_path(path / VALUE_HEAD_FILE) as tmp:  # write then rename: never a half-written critic
            save_file(head, tmp)
        atomic_write_text(
            path / STATE_FILE, json.dumps({"critic": self.args.critic, "kl_ctl": self.kl_ctl.state_dict()})
        )
        return path

    def load_critic(self, checkpoint_dir: str) -> None:
        """Restore the critic and the KL controller state that `save_critic` wrote.

        Args:
            checkpoint_dir (`str`):
                The checkpoint directory holding `critic/`.

        Raises:
            FileNotFoundError: The checkpoint has no critic (it was not written by `PPOTrainer`).
            ValueError: The saved critic is of another kind (`critic`) or does not fit this model.
        """
        from safetensors.torch import load_file

        path = Path(checkpoint_dir) / CRITIC_DIR
        if not (path / VALUE_HEAD_FILE).is_file():
            raise FileNotFoundError(
                f"{checkpoint_dir} has no {CRITIC_DIR}/{VALUE_HEAD_FILE}: it was not written by PPOTrainer, so the "
                "critic cannot be restored. Resume from a PPO checkpoint or start a new run."
            )
        unwrapped = self.accelerator.unwrap_model(self.model)
        saved = json.loads((path / STATE_FILE).read_text())
        if saved.get("critic") != self.args.critic:
            raise ValueError(f"{path} holds a critic: {saved.get('critic')} critic; this run uses {self.args.critic}.")
        device = self.accelerator.device
        if self._critic_adapter is not None:
            from peft import set_peft_model_state_dict

            state = load_file(str(path / "adapter_model.safetensors"), device=str(device))
            result = set_peft_model_state_dict(unwrapped, state, adapter_name=self._critic_adapter)
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"critic adapter in {path} does not match this model: {result.unexpected_keys[:3]}")
        elif self.args.critic == "model":
            from peft import set_peft_model_state_dict

            backbone = unwrapped.ppo_critic_backbone
            model_dir = path / "model"
            if hasattr(backbone, "peft_config"):
                set_peft_model_state_dict(backbone, load_file(str(model_dir / "adapter_model.safetensors")))
            else:
                backbone.load_state_dict(load_file(str(model_dir / "model.safetensors")), strict=False)
        unwrapped.ppo_value_head.load_state_dict(load_file(str(path / VALUE_HEAD_FILE), device=str(device)))
        self.kl_ctl.load_state_dict(saved["kl_ctl"])
        self._restore_trainable()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # No public hook loads extra state on resume (callbacks never see the checkpoint path), and the actor's own
        # loading must not see the critic modules; `Trainer.train` calls this private method with the checkpoint.
        with self._critic_detached():
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.load_critic(resume_from_checkpoint)
