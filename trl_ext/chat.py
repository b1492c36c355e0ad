"""Chat with a trained adapter: `trl-ext chat OUTPUT_DIR [PROMPT]` loads its base and the adapter (as the README's
Python snippet does), applies the tokenizer's chat template and answers one prompt, or runs a loop on stdin."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trl_ext.assets import resolve_builtin
from trl_ext.model_source import check_model_source
from trl_ext.modeling import load_tokenizer


class ChatSession:
    """A causal-LM adapter on its base, answering chat messages.

    The base is the adapter's `base_model_name_or_path` (a `builtin:` name, a local directory or a Hub id), loaded
    unquantized, or in 4 bits with `device_map="auto"` (`load_in_4bit`; bitsandbytes runs it on a GPU or on CPU).
    The tokenizer is the adapter directory's when it saved one, else the base's.

    Args:
        adapter_path (`str`):
            A training run's output directory (`adapter_config.json`), e.g. `outputs/quickstart-rlhf/ppo`.
        base_model (`str`, *optional*):
            The base to load instead of the one the adapter names.
        load_in_4bit (`bool`, *optional*, defaults to `False`):
            Load the base in 4 bits (bitsandbytes NF4), as QLoRA trained it.

    Raises:
        FileNotFoundError: `adapter_path` holds no `adapter_config.json`.
        ValueError: The adapter is not a causal-LM policy (a reward model's `SEQ_CLS` adapter, for example).
    """

    def __init__(self, adapter_path: str, base_model: str | None = None, load_in_4bit: bool = False):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        config_file = Path(adapter_path) / "adapter_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{adapter_path} has no adapter_config.json: pass the directory a training run (or a pipeline "
                "stage) saved its adapter to, e.g. outputs/quickstart-rlhf/ppo."
            )
        config = json.loads(config_file.read_text())
        if config.get("task_type") not in (None, "CAUSAL_LM"):
            raise ValueError(
                f"{adapter_path} is a {config['task_type']} adapter (a reward model?), not a policy to chat with; "
                "pass the output of an sft, dpo, kto, grpo or ppo run."
            )
        key = "--base-model" if base_model else f"the base of {adapter_path}"
        base = resolve_builtin(check_model_source(base_model or config["base_model_name_or_path"], key=key))
        kwargs = {}
        if load_in_4bit:
            # NF4 with nested quantization, as the QLoRA recipes train (bitsandbytes' own default is fp4)
            quantization = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True
            )
            kwargs = {"quantization_config": quantization, "device_map": "auto"}
        source = adapter_path if (Path(adapter_path) / "tokenizer_config.json").is_file() else base
        self.tokenizer = load_tokenizer(source)
        self.model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, **kwargs), adapter_path)
        self.model.eval()

    def reply(self, messages: list[dict[str, str]], max_new_tokens: int = 128, temperature: float = 0.0) -> str:
        """The model's next assistant turn after `messages`.

        Args:
            messages (`list[dict[str, str]]`):
                The conversation so far (`role`, `content`), ending with a user turn.
            max_new_tokens (`int`, *optional*, defaults to `128`):
                Longest answer in tokens.
            temperature (`float`, *optional*, defaults to `0.0`):
                Sampling temperature; `0` answers greedily.

        Returns:
            `str`: the answer, special tokens removed.
        """
        import torch

        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def chat_cli(argv: list[str] | None = None) -> int:
    """`trl-ext chat OUTPUT_DIR [PROMPT] [--max-new-tokens N] [--temperature T] [--base-model NAME] [--4bit]`.

    With a prompt, prints the answer and exits; without one, reads a prompt per line from stdin (the conversation
    accumulates; an empty line or end of input ends it).

    Args:
        argv (`list[str]`, *optional*):
            Command-line arguments after `chat`. Defaults to `sys.argv[1:]`.

    Returns:
        `int`: 0 on success, 2 on bad input.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="trl-ext chat", description="Chat with a trained adapter on its base.")
    parser.add_argument("adapter", help="a training run's output_dir (adapter_config.json), e.g. a pipeline stage's")
    parser.add_argument("prompt", nargs="?", default=None, help="one user message; omit it for a loop on stdin")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 answers greedily")
    parser.add_argument("--base-model", default=None, help="base model (default: the one the adapter names)")
    parser.add_argument("--4bit", dest="load_in_4bit", action="store_true", help="load the base in 4 bits (NF4)")
    args = parser.parse_args(argv)
    try:
        session = ChatSession(args.adapter, base_model=args.base_model, load_in_4bit=args.load_in_4bit)
    except (OSError, ValueError, KeyError) as err:  # RecipeError and FileNotFoundError included
        print(f"trl-ext: error: {err}", file=sys.stderr)
        return 2
    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    if args.prompt is not None:
        print(session.reply([{"role": "user", "content": args.prompt}], **options))
        return 0
    interactive = sys.stdin.isatty()
    messages: list[dict[str, str]] = []
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        messages.append({"role": "user", "content": line.strip()})
        answer = session.reply(messages, **options)
        messages.append({"role": "assistant", "content": answer})
        print(f"model> {answer}" if interactive else answer, flush=True)
