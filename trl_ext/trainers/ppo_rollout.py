"""The log-probabilities of the sampled tokens, read off generation instead of recomputed by another forward pass.

Generation already computes the policy's logits for every completion token; TRL 1.12's PPO took the rollout's
("old") log-probabilities from them, where GRPO runs the policy over the whole batch once more. `SampledLogps`
listens to the policy's forward passes during one `generate` call and keeps, per step, the log-probability (at the
trainer's temperature, before any top-k/top-p/min-tokens processing, as the training forward computes it) of the
token that was sampled, holding one `(B, vocab)` row of log-probabilities at a time.
"""

from __future__ import annotations

import torch


class SampledLogps:
    """A forward hook that records the log-probability of each sampled token during one `generate` call.

    Args:
        model (`torch.nn.Module`):
            The causal LM whose forward `generate` calls (the PEFT model's base model when LoRA is used).
        temperature (`float`):
            The sampling temperature; log-probabilities are those of `logits / temperature`.
    """

    def __init__(self, model: torch.nn.Module, temperature: float):
        self.temperature = temperature
        self.steps: list[torch.Tensor] = []  # log-probability of the token sampled at each step, (B,) each
        self.tokens: list[torch.Tensor] = []  # the sampled tokens, (B,) each
        self.last: torch.Tensor | None = None  # log-softmax of the latest step, (B, vocab)
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        logits = getattr(output, "logits", None)
        if input_ids is None or logits is None:
            self.calls = -1  # not a plain causal-LM forward: give up (the caller recomputes)
            return
        if self.calls > 0:  # the input's last token was sampled from the previous step's distribution
            token = input_ids[:, -1]
            self.tokens.append(token)
            self.steps.append(self.last.gather(1, token[:, None]).squeeze(1))
        if self.calls >= 0:
            self.last = torch.log_softmax(logits[:, -1].float() / self.temperature, dim=-1)
            self.calls += 1

    def remove(self) -> None:
        self.handle.remove()

    def completion_logps(self, completion_ids: list[list[int]]) -> list[list[float]] | None:
        """The log-probabilities of `completion_ids` (one list per row, as generation returned them), or `None` when
        the recorded passes do not belong to exactly these completions (another generation path, a multi-turn
        rollout, a mismatch).

        Args:
            completion_ids (`list[list[int]]`):
                The completions of the `generate` call that was recorded, each up to its end.

        Returns:
            `list[list[float]] | None`: One list of log-probabilities per completion.
        """
        longest = max((len(ids) for ids in completion_ids), default=0)
        if self.calls != longest or self.last is None or self.last.size(0) != len(completion_ids) or longest == 0:
            return None
        last_tokens = torch.tensor([ids[-1] if len(ids) == longest else 0 for ids in completion_ids])
        steps = self.steps + [self.last.gather(1, last_tokens.to(self.last.device)[:, None]).squeeze(1)]
        logps = torch.stack(steps, dim=1).cpu()
        tokens = torch.stack(self.tokens, dim=1).cpu() if self.tokens else torch.zeros(len(completion_ids), 0)
        result = []
        for row, ids in enumerate(completion_ids):
            seen = ids[: min(len(ids), longest - 1)]
            if tokens[row, : len(seen)].tolist() != seen:
                return None
            result.append(logps[row, : len(ids)].tolist())
        return result


def sampled_logps_tensor(rows: list[list[float]], width: int, device) -> torch.Tensor:
    """Right-pad per-row log-probabilities with 0 into a `(B, width)` fp32 tensor."""
    out = torch.zeros(len(rows), width, dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return out.to(device)
