"""The EWC penalty `lambda/2 * sum(F * (s B A - delta_anchor)^2)` in full weight space, in float32 row chunks.

No dense (out, in) product outlives one chunk: value and gradients are computed chunk by chunk, both in
`FullWeightPenalty` (a custom autograd function that recomputes the chunks in backward) and in
`EWCPenalty.value_and_grads` (what the trainers use: no autograd graph at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trl_ext.ewc.fisher import fisher_key_shapes

#: float32 elements per chunk of the (out, in) difference (16 MiB).
CHUNK_ELEMENTS = 1 << 22


@dataclass
class Anchor:
    """`delta_anchor = scaling * B @ A` of a previous adapter (online EWC), kept as low-rank factors."""

    scaling: float
    lora_A: torch.Tensor  # (r, in)
    lora_B: torch.Tensor  # (out, r)


def _fisher_rows(fisher, r0: int, r1: int) -> torch.Tensor:
    if isinstance(fisher, tuple):  # kfac: (out,), (in,)
        return fisher[0][r0:r1].float().unsqueeze(1) * fisher[1].float().unsqueeze(0)
    return fisher[r0:r1].float()


def module_penalty(
    A, B, scaling: float, fisher, anchor: Anchor | None = None, grads: bool = True, chunk_elements: int | None = None
):
    """The quadratic form `sum F * D^2` of one module and its gradients, for `D = scaling * B @ A - delta_anchor`.

    Everything is computed in float32, row chunk by row chunk, so no dense (out, in) product outlives one chunk.

    Args:
        A (`torch.Tensor`):
            LoRA A, shape (r, in).
        B (`torch.Tensor`):
            LoRA B, shape (out, r).
        scaling (`float`):
            The adapter's scaling `s`.
        fisher (`torch.Tensor` or `tuple[torch.Tensor, torch.Tensor]`):
            Full (out, in) diagonal, or the kfac factors `(out,)`, `(in,)`.
        anchor (`Anchor`, *optional*):
            `delta_anchor`; zero when `None`.
        grads (`bool`, *optional*, defaults to `True`):
            Whether to compute the gradients.
        chunk_elements (`int`, *optional*):
            float32 elements per chunk; `CHUNK_ELEMENTS` when `None`.

    Returns:
        `tuple`: `(sum F * D^2, dA, dB)`, where `dA`/`dB` are the gradients of `sum F * D^2 / 2` with respect to A
        and B (`None` when `grads` is false).
    """
    A32, B32 = A.detach().float(), B.detach().float()
    chunk_elements = chunk_elements or CHUNK_ELEMENTS
    out_features, in_features = B32.shape[0], A32.shape[1]
    rows = max(1, chunk_elements // max(in_features, 1))
    value = torch.zeros((), dtype=torch.float32, device=A32.device)
    gA = torch.zeros_like(A32) if grads else None
    gB = torch.zeros_like(B32) if grads else None
    if anchor is not None:
        aA, aB = anchor.lora_A.float(), anchor.lora_B.float()
    for r0 in range(0, out_features, rows):
        r1 = min(out_features, r0 + rows)
        D = scaling * (B32[r0:r1] @ A32)
        if anchor is not None:
            D = D - anchor.scaling * (aB[r0:r1] @ aA)
        FD = _fisher_rows(fisher, r0, r1) * D
        value += (FD * D).sum()
        if grads:
            gB[r0:r1] = scaling * (FD @ A32.T)
            gA += scaling * (B32[r0:r1].T @ FD)
    return value, gA, gB


class FullWeightPenalty(torch.autograd.Function):
    """`sum F * (s B A - delta)^2 / 2` of one module, differentiable in A and B, chunked in forward and backward."""

    @staticmethod
    def forward(ctx, A, B, scaling, fisher, anchor):
        value, _, _ = module_penalty(A, B, scaling, fisher, anchor, grads=False)
        ctx.save_for_backward(A, B)
        ctx.extra = (scaling, fisher, anchor)
        return value / 2

    @staticmethod
    def backward(ctx, grad_output):
        A, B = ctx.saved_tensors
        scaling, fisher, anchor = ctx.extra
        _, gA, gB = module_penalty(A, B, scaling, fisher, anchor, grads=True)
        return (gA * grad_output).to(A.dtype), (gB * grad_output).to(B.dtype), None, None, None


class EWCPenalty:
    """The EWC penalty over every adapted module: `ewc_lambda/2 * sum F (s B A - delta_anchor)^2`.

    In `lora_params` mode the penalty is `ewc_lambda/2 * sum F_A (A - A*)^2 + F_B (B - B*)^2` with `A*`, `B*` the
    values at construction.

    Args:
        modules (`list[AdaptedModule]`):
            The adapted modules the penalty covers.
        fisher (`dict[str, torch.Tensor]`):
            Fisher tensors keyed as `trl_ext.ewc.fisher.fisher_key_shapes` says; moved to each module's device.
        ewc_lambda (`float`):
            Strength of the penalty.
        mode (`str`, *optional*, defaults to `"full"`):
            Mode of `fisher`: `full`, `kfac` or `lora_params`.
        anchors (`dict[str, Anchor]`, *optional*):
            Online EWC: the previous adapter's update per module; the anchor is the base model (zero) otherwise.
    """

    def __init__(
        self,
        modules,
        fisher: dict[str, torch.Tensor],
        ewc_lambda: float,
        mode: str = "full",
        anchors: dict[str, Anchor] | None = None,
    ):
        self.modules = modules
        self.ewc_lambda = float(ewc_lambda)
        self.mode = mode
        self.anchors = anchors or {}
        self.fisher = {}
        for m in modules:
            tensors = tuple(fisher[key].to(m.lora_A.device) for key in fisher_key_shapes(m, mode))
            self.fisher[m.name] = tensors[0] if mode == "full" else tensors  # kfac: (out, in); lora_params: (A, B)
            if mode == "lora_params":
                self.anchors[m.name] = Anchor(
                    m.scaling, m.lora_A.detach().float().clone(), m.lora_B.detach().float().clone()
                )

    def loss(self) -> torch.Tensor:
        """The penalty as a differentiable float32 scalar (custom autograd, chunked)."""
        total = torch.zeros((), dtype=torch.float32, device=self.modules[0].lora_A.device)
        for m in self.modules:
            if self.mode == "lora_params":
                fA, fB = self.fisher[m.name]
                a = self.anchors[m.name]
                total = total + 0.5 * (
                    (fA.float() * (m.lora_A.float() - a.lora_A) ** 2).sum()
                    + (fB.float() * (m.lora_B.float() - a.lora_B) ** 2).sum()
                )
            else:
                total = total + FullWeightPenalty.apply(
                    m.lora_A, m.lora_B, m.scaling, self.fisher[m.name], self.anchors.get(m.name)
                )
        return self.ewc_lambda * total

    @torch.no_grad()
    def value_and_grads(self):
        """The penalty and its gradients without an autograd graph (what the trainers use).

        Returns:
            `tuple`: `(penalty, predicted_kl, grads)`: the penalty, `predicted_kl = sum F D^2 / 2` (the per-token KL
            from the anchor the Fisher predicts) and `{parameter: gradient of the penalty}` for every LoRA A and B.
        """
        quad = torch.zeros((), dtype=torch.float32, device=self.modules[0].lora_A.device)
        grads = {}
        for m in self.modules:
            if self.mode == "lora_params":
                fA, fB = self.fisher[m.name]
                a = self.anchors[m.name]
                dA, dB = m.lora_A.float() - a.lora_A, m.lora_B.float() - a.lora_B
                quad += (fA.float() * dA * dA).sum() + (fB.float() * dB * dB).sum()
                gA, gB = fA.float() * dA, fB.float() * dB
            else:
                value, gA, gB = module_penalty(
                    m.lora_A, m.lora_B, m.scaling, self.fisher[m.name], self.anchors.get(m.name)
                )
                quad += value
            grads[m.lora_A] = self.ewc_lambda * gA
            grads[m.lora_B] = self.ewc_lambda * gB
        predicted_kl = 0.5 * quad
        return self.ewc_lambda * predicted_kl, predicted_kl, grads
