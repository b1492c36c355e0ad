"""Diagonal Fisher of the frozen base weights of LoRA-adapted modules, from per-sample gradients taken by hooks.

For an adapted linear layer `y = W x (+ s B A x)`, the gradient of one sequence's loss with respect to `W` is
`G_n = sum_t g_t x_t^T` with `x_t` the layer input and `g_t` the gradient at the base layer's output. A forward
hook on `module.base_layer` keeps `x` and a tensor hook on its output receives `g`, so `W` never needs a
`.grad` and may be 4-bit. `F = sum_n G_n ** 2 / n_tokens` is accumulated in float32.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field

import torch

from trl_ext.configs.ewc import fisher_tensor_shapes
from trl_ext.data.samples import collate
from trl_ext.modeling import eval_mode

logger = logging.getLogger(__name__)

LORA_PARAMS_WARNING = (
    "ewc_fisher_mode=lora_params is an ablation: at PEFT's default init B = 0, so the gradient (and the Fisher) of "
    "every LoRA A matrix is zero and A is not regularized at all. Use ewc_fisher_mode full (or kfac) for EWC."
)


@dataclass
class AdaptedModule:
    """A LoRA layer and the name of the linear module it adapts, as named in the base model."""

    name: str
    layer: torch.nn.Module  # peft.tuners.lora.LoraLayer
    adapter: str = "default"

    @property
    def lora_A(self) -> torch.nn.Parameter:
        return self.layer.lora_A[self.adapter].weight  # (r, in)

    @property
    def lora_B(self) -> torch.nn.Parameter:
        return self.layer.lora_B[self.adapter].weight  # (out, r)

    @property
    def scaling(self) -> float:
        return float(self.layer.scaling[self.adapter])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.layer.out_features), int(self.layer.in_features))


def unwrap(model):
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP and friends
        model = model.module
    return model


def base_model_of(model):
    """The transformers model under PEFT and DDP wrappers, whose module names are the base model's.

    Args:
        model (`torch.nn.Module`):
            A model, possibly wrapped in `PeftModel` and DDP.

    Returns:
        `PreTrainedModel`: the innermost transformers model.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraModel

    model = unwrap(model)
    if isinstance(model, PeftModel):
        model = model.base_model
    if isinstance(model, LoraModel):
        model = model.model
    return model


def adapted_modules(model) -> list[AdaptedModule]:
    """Every LoRA-adapted linear layer of `model`, named as in the base model.

    Args:
        model (`PeftModel`):
            The model, possibly DDP-wrapped, with one active LoRA adapter (no DoRA).

    Returns:
        `list[AdaptedModule]`: the adapted modules, in module order; empty without LoRA.
    """
    from peft.tuners.lora import LoraLayer

    out = []
    for name, module in base_model_of(model).named_modules():
        if isinstance(module, LoraLayer) and hasattr(module, "base_layer"):
            adapters = [a for a in module.active_adapters if a in module.lora_A]
            if not adapters:
                continue
            if len(adapters) > 1:
                raise ValueError(f"EWC supports one active LoRA adapter; module {name} has {adapters}.")
            if getattr(module, "use_dora", {}).get(adapters[0], False):
                raise ValueError("EWC in full weight space does not support DoRA adapters; set use_dora: false.")
            if not isinstance(module.lora_A[adapters[0]], torch.nn.Linear):
                raise ValueError(f"EWC supports LoRA on linear layers only; {name} is {type(module.base_layer)}.")
            out.append(AdaptedModule(name, module, adapters[0]))
    return out


@contextlib.contextmanager
def fisher_pass_mode(model, gradient_checkpointing_kwargs=None):
    """Eval mode (dropout and LoRA dropout off) and gradient checkpointing off, restored afterwards."""
    base = base_model_of(model)
    was_training = unwrap(model).training
    checkpointing = bool(getattr(base, "is_gradient_checkpointing", False))
    eval_mode(unwrap(model))
    if checkpointing:
        base.gradient_checkpointing_disable()
    try:
        yield
    finally:
        if checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)
        unwrap(model).train(was_training)


@dataclass
class FisherEstimate:
    """Fisher tensors keyed as in the Fisher file, plus what was measured."""

    tensors: dict[str, torch.Tensor]
    mode: str
    fisher_type: str
    n_samples: int
    n_tokens: int
    split_half_agreement: float | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def fisher_key_shapes(module: AdaptedModule, mode: str) -> dict[str, tuple[int, ...]]:
    """The Fisher tensors of one adapted module: their keys (as in the Fisher file) and shapes.

    The layout of each mode is `trl_ext.configs.ewc.fisher_tensor_shapes`; this names the tensors after the module.

    Args:
        module (`AdaptedModule`):
            The adapted module.
        mode (`str`):
            `full`, `kfac` or `lora_params` (see `EWCArguments.ewc_fisher_mode`).

    Returns:
        `dict[str, tuple[int, ...]]`: shape of each tensor, keyed by its name in the Fisher file.
    """
    out_features, in_features = module.shape
    shapes = fisher_tensor_shapes(mode, out_features, in_features, rank=module.lora_A.shape[0])
    return {f"{module.name}{suffix}": shape for suffix, shape in shapes.items()}


def sample_labels(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label per position drawn from `softmax(logits)` (temperature 1): the true Fisher's labels."""
    probs = torch.softmax(logits.float(), dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def sequence_log_probs(logits, input_ids, target_mask, fisher_type, generator):
    """Per-sequence sum of masked next-token log-probs (B,): data labels or labels sampled from the model."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    if fisher_type == "true":
        labels = sample_labels(logits.detach(), generator)
    else:
        labels = torch.roll(input_ids, -1, dims=1)
    token_logp = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (token_logp * target_mask).sum(dim=1)


def _all_reduce(tensors: list[torch.Tensor]) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t)
            dist.broadcast(t, src=0)  # bit-identical on every rank


def estimate_fisher(
    model,
    samples,
    *,
    mode: str = "full",
    fisher_type: str = "true",
    batch_size: int = 8,
    seed: int = 0,
    pad_token_id: int = 0,
    dtype: torch.dtype = torch.float32,
    process_index: int = 0,
    num_processes: int = 1,
    gradient_checkpointing_kwargs=None,
    modules: list[AdaptedModule] | None = None,
) -> FisherEstimate:
    """Diagonal Fisher of the base weight of every LoRA-adapted module of `model`, from `samples`.

    Samples are sharded over `num_processes` and the sums all-reduced, so every rank gets the same estimate. Even
    and odd samples are accumulated apart to report the split-half agreement (cosine similarity of the two halves).

    Args:
        model (`PeftModel`):
            The model (possibly DDP-wrapped, possibly 4-bit); its training mode and gradient checkpointing are
            restored afterwards.
        samples (`list[tuple[torch.Tensor, torch.Tensor]]`):
            `(input_ids, loss_mask)` pairs, see `trl_ext.data.samples.load_token_samples`.
        mode (`str`, *optional*, defaults to `"full"`):
            `full`, `kfac` or `lora_params` (an ablation; see `EWCArguments.ewc_fisher_mode`).
        fisher_type (`str`, *optional*, defaults to `"true"`):
            `true` (labels sampled from the model) or `empirical` (the data's next tokens).
        batch_size (`int`, *optional*, defaults to `8`):
            Sequences per forward/backward; per-sample gradients stay exact.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the sampled labels (plus `process_index`).
        pad_token_id (`int`, *optional*, defaults to `0`):
            Token id padding is filled with.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Dtype of the returned tensors; accumulation is always in float32.
        process_index (`int`, *optional*, defaults to `0`):
            This process's rank.
        num_processes (`int`, *optional*, defaults to `1`):
            Number of processes the samples are sharded over.
        gradient_checkpointing_kwargs (`dict`, *optional*):
            Passed back to `gradient_checkpointing_enable` when checkpointing is restored.
        modules (`list[AdaptedModule]`, *optional*):
            The adapted modules; `adapted_modules(model)` when `None`.

    Returns:
        `FisherEstimate`: tensors keyed as `fisher_key_shapes` says, normalized per modelled token (`kfac_in` per
        non-pad position), with the counts, the split-half agreement and the wall time.
    """
    start = time.perf_counter()
    modules = modules if modules is not None else adapted_modules(model)
    if not modules:
        raise ValueError("The model has no LoRA-adapted module: EWC needs `use_peft: true` (LoRA or QLoRA).")
    if mode == "lora_params":
        warnings.warn(LORA_PARAMS_WARNING, stacklevel=2)
    device = next(p for p in unwrap(model).parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed + process_index)
    # keys[name]: the module's Fisher keys; acc[half][key]: float32 sums; counts: see below
    keys = {m.name: list(fisher_key_shapes(m, mode)) for m in modules}
    acc: list[dict[str, torch.Tensor]] = [
        {
            key: torch.zeros(shape, dtype=torch.float32, device=device)
            for m in modules
            for key, shape in fisher_key_shapes(m, mode).items()
        }
        for _half in (0, 1)
    ]
    # kfac input factors average over non-pad positions, everything else over modelled tokens
    per_position = {keys[m.name][1] for m in modules} if mode == "kfac" else set()
    counts = torch.zeros(2, 3, dtype=torch.float64, device=device)  # [half, (samples, tokens, positions)]
    state: dict = {}

    def on_grad(name, x, g):
        halves, attn = state["halves"], state["attn"]
        g = g.float()
        for n in range(x.shape[0]):
            h = int(halves[n])
            xn = x[n].float()  # one sample in fp32 at a time: the hook keeps the input in its own dtype
            if mode == "full":
                (key,) = keys[name]
                G = g[n].transpose(0, 1) @ xn  # (out, in) per-sample gradient of W
                acc[h][key].addcmul_(G, G)
            else:
                out_key, in_key = keys[name]
                acc[h][out_key].add_((g[n] * g[n]).sum(0))
                xn = xn * attn[n].unsqueeze(-1)
                acc[h][in_key].add_((xn * xn).sum(0))

    def forward_hook(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                # a reference, not a copy: in eval mode LoRA-A saves this same tensor for its backward, so keeping
                # it costs nothing, where an fp32 copy of a bf16 input cost 4 B per element until the backward
                x = inputs[0].detach()
                output.register_hook(lambda g: on_grad(name, x, g))

        return hook

    def embed_hook(module, inputs, output):
        output.requires_grad_(True)
        state["embeds"] = output

    handles = []
    lora_params = [p for m in modules for p in (m.lora_A, m.lora_B)]
    try:
        with fisher_pass_mode(model, gradient_checkpointing_kwargs):
            if mode != "lora_params":
                handles.append(base_model_of(model).get_input_embeddings().register_forward_hook(embed_hook))
                handles += [m.layer.base_layer.register_forward_hook(forward_hook(m.name)) for m in modules]
            indices = list(range(process_index, len(samples), num_processes))
            step = batch_size if mode != "lora_params" else 1
            for b0 in range(0, len(indices), step):
                idx = indices[b0 : b0 + step]
                input_ids, attn, target = collate([samples[i] for i in idx], pad_token_id, device)
                halves = torch.tensor([i % 2 for i in idx])
                state.update(halves=halves, attn=attn.float())
                logits = unwrap(model)(input_ids=input_ids, attention_mask=attn, use_cache=False).logits
                seq_logp = sequence_log_probs(logits, input_ids, target, fisher_type, generator)
                if mode == "lora_params":
                    grads = torch.autograd.grad(seq_logp.sum(), lora_params, allow_unused=True)
                    h = int(halves[0])
                    for m, gA, gB in zip(modules, grads[0::2], grads[1::2]):
                        key_A, key_B = keys[m.name]
                        if gA is not None:
                            acc[h][key_A].addcmul_(gA.float(), gA.float())
                        if gB is not None:
                            acc[h][key_B].addcmul_(gB.float(), gB.float())
                else:
                    torch.autograd.grad(seq_logp.sum(), state["embeds"])
                ntok = target.sum(dim=1).double()
                for h in (0, 1):
                    sel = halves.to(device) == h
                    counts[h, 0] += sel.sum()
                    counts[h, 1] += ntok[sel].sum()
                    counts[h, 2] += attn[sel].sum()
                state.pop("embeds", None)
    finally:
        for handle in handles:
            handle.remove()

    _all_reduce([counts] + [t for half in acc for t in half.values()])
    # normalise each half by its own token count, then combine: F = (sum_even + sum_odd) / all tokens
    tensors, dot, n0, n1 = {}, 0.0, 0.0, 0.0
    total_tokens = float(counts[:, 1].sum())
    total_positions = float(counts[:, 2].sum())
    if total_tokens == 0:
        raise ValueError("The Fisher samples hold no token to model.")
    for key in acc[0]:
        column = 2 if key in per_position else 1
        halves_f = [acc[h][key] / max(float(counts[h, column]), 1.0) for h in (0, 1)]
        dot += float((halves_f[0] * halves_f[1]).sum())
        n0 += float((halves_f[0] ** 2).sum())
        n1 += float((halves_f[1] ** 2).sum())
        total = (acc[0][key] + acc[1][key]) / (total_positions if key in per_position else total_tokens)
        tensors[key] = total.to(dtype)
    agreement = dot / (n0 * n1) ** 0.5 if n0 > 0 and n1 > 0 else None
    return FisherEstimate(
        tensors=tensors,
        mode=mode,
        fisher_type=fisher_type,
        n_samples=int(counts[:, 0].sum()),
        n_tokens=int(total_tokens),
        split_half_agreement=agreement,
        seconds=time.perf_counter() - start,
    )


def fisher_quantiles(
    tensors: dict[str, torch.Tensor], mode: str, max_entries: int = 1_000_000, seed: int = 0
) -> dict[str, float]:
    """Summary statistics of the Fisher's entries for the start-of-run log.

    Args:
        tensors (`dict[str, torch.Tensor]`):
            Fisher tensors keyed as `fisher_key_shapes` says.
        mode (`str`):
            Their mode; `kfac` entries are the products of the two factors.
        max_entries (`int`, *optional*, defaults to `1_000_000`):
            Quantiles are computed on a seeded random subset of at most this many entries.
        seed (`int`, *optional*, defaults to `0`):
            Seed of that subset.

    Returns:
        `dict[str, float]`: `ewc/fisher_q50`, `ewc/fisher_q90`, `ewc/fisher_q99`, `ewc/fisher_max`,
        `ewc/fisher_mean` and `ewc/fisher_entries`.
    """
    # Blocks of entries, never materialized: a kfac block is the outer product of its two factors. Materializing them
    # (or concatenating the full-mode tensors) took 8 bytes of host memory per adapted base weight: 56 GB for an 8B
    # model. Mean and max are exact; the quantiles come from `max_entries` entries drawn uniformly (all entries when
    # there are no more than that).
    blocks = []
    for key, t in tensors.items():
        if mode == "kfac":
            if key.endswith(".kfac_out"):
                blocks.append((t.float().reshape(-1), tensors[key[: -len("out")] + "in"].float().reshape(-1)))
        else:
            blocks.append((t.float().reshape(-1), None))
    sizes = [a.numel() * (b.numel() if b is not None else 1) for a, b in blocks]
    total = sum(sizes)
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, total, (max_entries,), generator=g) if total > max_entries else torch.arange(total)
    picks = picks.sort().values
    sample, total_sum, total_max, offset = [], 0.0, float("-inf"), 0
    for (a, b), size in zip(blocks, sizes):
        if b is None:
            total_sum += float(a.double().sum())
            total_max = max(total_max, float(a.max()))
        else:  # Fisher factors are non-negative: the max of the products is the product of the maxima
            total_sum += float(a.double().sum() * b.double().sum())
            total_max = max(total_max, float(a.max() * b.max()))
        lo, hi = torch.searchsorted(picks, offset), torch.searchsorted(picks, offset + size)
        local = (picks[lo:hi] - offset).to(a.device)
        sample.append((a[local] if b is None else a[local // b.numel()] * b[local % b.numel()]).cpu())
        offset += size
    allf = torch.cat(sample)
    q = torch.quantile(allf, torch.tensor([0.5, 0.9, 0.99]))
    mean = total_sum / total
    return {
        "ewc/fisher_q50": float(q[0]),
        "ewc/fisher_q90": float(q[1]),
        "ewc/fisher_q99": float(q[2]),
        "ewc/fisher_max": total_max,
        "ewc/fisher_mean": mean,
        "ewc/fisher_entries": float(total),
    }
