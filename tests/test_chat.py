"""`trl-ext chat OUTPUT_DIR`: the adapter on its base, the chat template applied, one answer or a loop on stdin."""

from __future__ import annotations

import io

import pytest
import torch
from test_reference import _random_adapter

from trl_ext.cli import main


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return _random_adapter(tmp_path_factory.mktemp("policy") / "policy", "CAUSAL_LM", seed=5)


def _greedy(adapter, messages, max_new_tokens):
    """The README's snippet: base + adapter, chat template, greedy decoding."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext.assets import resolve_builtin

    base_path = resolve_builtin("builtin:tiny-chat")
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(adapter)).eval()
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_chat_answers_one_prompt_as_the_readme_snippet_does(policy, capsys):
    question = [{"role": "user", "content": "What can I buy in Istra?"}]
    assert main(["chat", str(policy), question[0]["content"], "--max-new-tokens", "12"]) == 0
    answer = capsys.readouterr().out.strip()
    assert answer and answer == _greedy(policy, question, 12)


def test_chat_loop_keeps_the_conversation_and_stops_at_an_empty_line(policy, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Which river is Jorvik on?\nAnd what is it known for?\n\nignored\n"))
    assert main(["chat", str(policy), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    history = [{"role": "user", "content": "Which river is Jorvik on?"}]
    first = _greedy(policy, history, 8)
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "And what is it known for?"}]
    second = _greedy(policy, history, 8)  # the second turn sees the first
    assert out == f"{first}\n{second}\n"


def test_chat_refuses_a_directory_without_an_adapter_and_a_reward_model(tmp_path, capsys):
    from test_reference import _random_adapter as adapter

    assert main(["chat", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trl-ext: error:") and "has no adapter_config.json" in err and len(err.splitlines()) == 1
    reward = adapter(tmp_path / "rm", "SEQ_CLS", seed=6)
    assert main(["chat", str(reward), "hi"]) == 2
    assert "SEQ_CLS adapter (a reward model?), not a policy to chat with" in capsys.readouterr().err


def test_chat_in_4_bits_loads_the_base_as_nf4_and_answers(policy):
    import bitsandbytes as bnb

    from trl_ext.chat import ChatSession

    session = ChatSession(str(policy), load_in_4bit=True)
    quantized = [m for m in session.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(m.weight.quant_type == "nf4" for m in quantized)
    answer = session.reply([{"role": "user", "content": "What can I buy in Istra?"}], max_new_tokens=8)
    assert isinstance(answer, str) and answer
