"""Live tensor bytes of a real run, by phase and category: the traced peak.

`LiveBytesTracer` is a `TorchDispatchMode` (the mechanism of PyTorch's `torch.distributed._tools.mem_tracker`,
without its module hooks, which gradient checkpointing and PEFT's adapter switching confuse): every tensor an
operator returns is registered by its storage, counted while the storage lives (a weak reference's callback
subtracts it when it is freed) and labelled with a category when it first appears. The tracer keeps, per phase, the
highest total of live bytes and the breakdown at that moment. On a CPU this is exactly what the same run would hold
on the GPU as tensors (`torch.cuda.max_memory_allocated` minus the allocator's 512-byte rounding); what it cannot see
(CUDA context, cuBLAS workspace, allocator caching) is listed in `CUDA_CONSTANTS`.

Categories: `weights` (frozen base: 4-bit data and quantization state, embeddings, head, norms), `adapters` (trainable
weights, their gradients and the optimizer states), `activations` (everything a forward/backward creates),
`logits` (tensors whose last dimension is the vocabulary or a fused LM head tile), `kv_cache` (key/value tensors
created while generating), `critic` (PPO's critic adapter/backbone/value head and their gradients), `ewc` (Fisher).
"""

from __future__ import annotations

import contextlib
import functools
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CATEGORIES = ("weights", "adapters", "activations", "logits", "kv_cache", "critic", "ewc")
#: Categories whose tensors, once the first optimizer step has made them, stay for the rest of the run.
PERSISTENT = ("adapters", "critic")
#: Tensors that would not sit on the GPU: those that exist only because the run is on a CPU (TRL's torch fallback
#: of its Triton fused LM head kernels materializes fp32 copies of every logit tile) and the host copies of emulated
#: activation offloading; tracked but left out of every total.
CPU_ONLY = "cpu_only"
#: Phase of everything before training starts (model loading, quantization); not part of the reported peak.
LOAD_PHASE = "load"

#: Substrings of parameter names that belong to PPO's critic (trl_ext.trainers.ppo_critic).
CRITIC_NAMES = ("ppo_value_head", "ppo_critic_backbone", ".critic.")

#: CUDA-only costs a CPU trace cannot see, in bytes, with their sources. Added to the traced (allocated) peak for
#: the "reserved incl. CUDA context" figure.
CUDA_CONSTANTS = {
    "cuda_context": (
        int(0.45 * 1024**3),
        "CUDA context + PyTorch kernels loaded by the first CUDA op: 300-500 MiB on Ampere/Ada with CUDA 12 "
        "(nvidia-smi before/after `torch.zeros(1, device='cuda')`; PyTorch forum 'CUDA context memory')",
    ),
    "cublas_workspace": (
        32 * 1024**2,
        "cuBLAS/cuBLASLt workspace PyTorch allocates per handle and stream: 32 MiB on Hopper, 4-8 MiB before "
        "(torch/csrc/cuda/CUDABlas.cpp, CUBLAS_WORKSPACE_CONFIG); the largest is counted",
    ),
    "allocator_fragmentation": (
        0.05,
        "caching-allocator slack, a fraction of allocated memory: max_memory_reserved/max_memory_allocated is "
        "1.03-1.10 for steady training loops (PyTorch 'CUDA semantics: memory management'); 5 % assumed",
    ),
}


def cuda_overhead_bytes(allocated: float) -> float:
    """What a GPU reserves beyond the allocated peak: CUDA context, cuBLAS workspace and allocator slack."""
    context = CUDA_CONSTANTS["cuda_context"][0] + CUDA_CONSTANTS["cublas_workspace"][0]
    return context + CUDA_CONSTANTS["allocator_fragmentation"][0] * allocated


class LiveBytesTracer(TorchDispatchMode):
    """Count live tensor bytes per category; keep each phase's peak and its breakdown.

    Args:
        vocab_sizes (`tuple[int, ...]`, *optional*):
            Last dimensions that mark a tensor as logits (the vocabulary, the fused LM head's vocabulary tile).
        kv_shape (`tuple[int, int]` or `None`, *optional*):
            `(num_kv_heads, head_dim)`: 4-d tensors of this shape created while generating count as KV cache.
    """

    def __init__(self, vocab_sizes: tuple[int, ...] = (), kv_shape: tuple[int, int] | None = None):
        super().__init__()
        self.vocab_sizes = set(vocab_sizes)
        self.kv_shape = kv_shape
        self._live: dict[int, tuple[weakref.ref, list]] = {}  # id(storage) -> (weak ref, [bytes, category])
        self.current = dict.fromkeys((*CATEGORIES, CPU_ONLY), 0)
        self.total = 0
        self.phase = LOAD_PHASE
        self._forced: str | None = None
        self.peaks: dict[str, dict] = {}

    # ------------------------------------------------------------------------------------------ registration
    def _category_for(self, t: torch.Tensor) -> str:
        if self._forced:
            return self._forced
        if self.phase == LOAD_PHASE:
            return "weights"
        if t.dim() >= 2 and t.shape[-1] in self.vocab_sizes:
            return "logits"
        if self.phase == "generation" and self.kv_shape and t.dim() == 4 and tuple(t.shape[1::2]) == self.kv_shape:
            return "kv_cache"
        return "activations"

    def _release(self, key: int, _ref=None) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            nbytes, category = entry[1]
            self.current[category] -= nbytes
            if category != CPU_ONLY:
                self.total -= nbytes

    def track(self, t, category: str | None = None) -> None:
        """Register `t`'s storage (new: counted under `category` or the automatic one; known: moved to `category`)."""
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse or other storage-less tensors
            return
        key = id(st)
        entry = self._live.get(key)
        if entry is not None:
            info = entry[1]
            if category and info[1] != category:
                self.current[info[1]] -= info[0]
                self.current[category] += info[0]
                self.total += ((category != CPU_ONLY) - (info[1] != CPU_ONLY)) * info[0]
                info[1] = category
            return
        nbytes = st.nbytes()
        if nbytes == 0:
            return
        info = [nbytes, category or self._category_for(t)]
        self._live[key] = (weakref.ref(st, functools.partial(self._release, key)), info)
        self.current[info[1]] += nbytes
        if info[1] != CPU_ONLY:
            self.total += nbytes
            self._update_peak()

    def _update_peak(self) -> None:
        peak = self.peaks.get(self.phase)
        if peak is None or self.total > peak["total"]:
            self.peaks[self.phase] = {"total": self.total, "by_category": {c: self.current[c] for c in CATEGORIES}}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out

    # ----------------------------------------------------------------------------------------------- phases
    @contextlib.contextmanager
    def in_phase(self, phase: str):
        """Attribute what runs inside to `phase` (nested phases restore the outer one on exit)."""
        outer, self.phase = self.phase, phase
        self._update_peak()
        try:
            yield
        finally:
            self.phase = outer

    @contextlib.contextmanager
    def forced_category(self, category: str):
        """Label every tensor created inside as `category` (optimizer states, Fisher accumulators)."""
        outer, self._forced = self._forced, category
        try:
            yield
        finally:
            self._forced = outer

    def wrap(self, obj, method: str, phase: str | None = None, category: str | None = None) -> bool:
        """Run `obj.method` inside a phase and/or a forced category. Returns False when `obj` has no such method."""
        fn = getattr(obj, method, None)
        if fn is None:
            return False

        @functools.wraps(fn)
        def wrapped(*a, **k):
            with contextlib.ExitStack() as stack:
                if phase:
                    stack.enter_context(self.in_phase(phase))
                if category:
                    stack.enter_context(self.forced_category(category))
                return fn(*a, **k)

        setattr(obj, method, wrapped)
        return True

    def classify_model(self, model) -> None:
        """Label a built model's tensors: trainable parameters `adapters` (their gradients too, through a hook),
        critic parameters `critic`, everything else (frozen parameters, buffers, quantization state) `weights`."""
        for name, param in model.named_parameters():
            category = "critic" if any(c in name for c in CRITIC_NAMES) else "adapters"
            if param.requires_grad:
                self.track(param, category)
                if param.grad is not None:
                    self.track(param.grad, category)
                param.register_post_accumulate_grad_hook(
                    lambda p, c=category: self.track(p.grad, c) if p.grad is not None else None
                )
            else:
                self.track(param, "weights")
                quant_state = getattr(param, "quant_state", None)
                for value in vars(quant_state).values() if quant_state is not None else ():
                    self.track(value, "weights")
        for buffer in model.buffers():
            self.track(buffer, "weights")

    # ---------------------------------------------------------------------------------------------- results
    def result(self, steady_phases: tuple[str, ...] = ()) -> dict:
        """The peak over all phases but loading: `{"peak_bytes", "phase", "by_category", "phases"}`.

        `steady_phases` are phases that recur through a run but ran only before the first optimizer step in the trace
        (GRPO/PPO's rollout: `generation`, `scoring`): from the second rollout on they run beside the optimizer states
        the first step created, which persist. Their peaks get the `adapters` and `critic` bytes alive now (after the
        run: weights and optimizer states; the trainer has freed the gradients) where those exceed the traced ones.
        """
        phases = {p: v for p, v in self.peaks.items() if p != LOAD_PHASE}
        if not phases:
            phases = dict(self.peaks)
        out = {p: {"peak_bytes": v["total"], "by_category": dict(v["by_category"])} for p, v in phases.items()}
        for name in steady_phases:
            if name in out:
                for category in PERSISTENT:
                    extra = self.current[category] - out[name]["by_category"][category]
                    if extra > 0:
                        out[name]["by_category"][category] += extra
                        out[name]["peak_bytes"] += extra
        phase = max(out, key=lambda p: out[p]["peak_bytes"])
        return {
            "peak_bytes": out[phase]["peak_bytes"],
            "phase": phase,
            "by_category": dict(out[phase]["by_category"]),
            "phases": out,
        }


#: TRL's torch fallbacks of its fused LM head kernels (`trl.kernels.chunked_logprob`): on a GPU the Triton kernels
#: keep these per-tile temporaries in registers. Private functions, wrapped because no public hook exists;
#: `tests/test_memcheck.py` fails when they move.
CPU_FALLBACKS = ("trl.kernels.chunked_logprob", ("_forward_tile", "_backward_tile", "_addmm_fp32"))
#: Where TRL's fused LM head decides to score only labelled positions (`compact`, on Triton devices).
COMPACT_SWITCH = ("trl.trainer.utils", "_use_triton")


@contextlib.contextmanager
def cpu_fallbacks_excluded(tracer: LiveBytesTracer):
    """Count the temporaries of TRL's CPU fallback tiles as `CPU_ONLY` (not part of any total) inside the block."""
    import importlib

    module = importlib.import_module(CPU_FALLBACKS[0])
    originals = {name: getattr(module, name) for name in CPU_FALLBACKS[1]}
    for name in originals:
        tracer.wrap(module, name, category=CPU_ONLY)
    # On a GPU the fused head scores only the labelled positions (TRL's `compact` path, chosen where Triton runs);
    # on a CPU it scores every position. Score as the GPU does (the torch fallback tiles handle either).
    utils = importlib.import_module(COMPACT_SWITCH[0])
    use_triton = getattr(utils, COMPACT_SWITCH[1])
    setattr(utils, COMPACT_SWITCH[1], lambda device: True)
    try:
        yield
    finally:
        setattr(utils, COMPACT_SWITCH[1], use_triton)
        for name, fn in originals.items():
            setattr(module, name, fn)


@contextlib.contextmanager
def optimizer_steps_as(tracer: LiveBytesTracer, category: str = "adapters"):
    """Count the tensors every optimizer step creates (its states) as `category`, through torch's global hooks."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    stack: list = []

    def pre(*_):
        cm = tracer.forced_category(category)
        cm.__enter__()
        stack.append(cm)

    def post(*_):
        if stack:
            stack.pop().__exit__(None, None, None)

    handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


#: The trainer modules that build TRL's activation-offloading context (`get_act_offloading_ctx_manager(model=...)`
#: when `activation_offloading` is on); `tests/test_memcheck.py` fails when they stop doing it.
OFFLOADING_TRAINERS = ("sft_trainer", "dpo_trainer", "kto_trainer", "reward_trainer")


class EmulatedOffload(torch.autograd.graph.saved_tensors_hooks):
    """TRL's `OffloadActivations` policy on a CPU, where TRL's own refuses to start (it needs an accelerator).

    As TRL's (streams mode, its defaults): every tensor autograd saves of at least `min_offload_size` bytes that is
    not a parameter or buffer is copied to the host; the last `max_fwd_stash_size` originals stay alive until more
    are offloaded (TRL keeps them until their copy completes), a storage still in that stash is kept, not copied
    again, and nothing inside the LM head is offloaded. In backward each copy comes back as a new device tensor that
    lives while autograd uses it. The host copies are tracked as `CPU_ONLY` (host memory), the copies brought back
    as activations.
    """

    def __init__(self, tracer: LiveBytesTracer, model, min_offload_size: int = 1024, max_fwd_stash_size: int = 5):
        import collections

        params = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
        stash: collections.OrderedDict = collections.OrderedDict()  # storage pointer -> original, oldest first
        self.paused = False

        def pack(t: torch.Tensor):
            key = t.untyped_storage().data_ptr()
            too_small = t.numel() * t.element_size() < min_offload_size
            if self.paused or too_small or isinstance(t, torch.nn.Parameter) or key in params or key in stash:
                return t, False
            with tracer.forced_category(CPU_ONLY):
                host = t.detach().clone()
            stash[key] = t
            while len(stash) > max_fwd_stash_size:
                stash.popitem(last=False)
            return host, True

        def unpack(packed):
            stash.clear()  # the backward has started: TRL waits for every copy and drops the stash
            t, moved = packed
            return t.clone() if moved else t

        super().__init__(pack, unpack)
        head = next((m for name, m in model.named_modules() if name.endswith("lm_head")), None)
        if head is not None:  # TRL does not offload the output head (bringing it back soon after costs more)
            head.register_forward_pre_hook(lambda *_: setattr(self, "paused", True))
            head.register_forward_hook(lambda *_: setattr(self, "paused", False), always_call=True)


@contextlib.contextmanager
def offloading_emulated(tracer: LiveBytesTracer):
    """Make the trainers build `EmulatedOffload` where TRL's `activation_offloading` asks for its own context."""
    import importlib

    modules = [importlib.import_module(f"trl.trainer.{name}") for name in OFFLOADING_TRAINERS]
    originals = [m.get_act_offloading_ctx_manager for m in modules]
    for m in modules:
        m.get_act_offloading_ctx_manager = lambda model, **_: EmulatedOffload(tracer, model)
    try:
        yield
    finally:
        for m, original in zip(modules, originals):
            m.get_act_offloading_ctx_manager = original
