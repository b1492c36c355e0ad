"""Random mutations of the quickstart recipes and their datasets: every outcome of `trl-ext check` (the checks
`trl-ext train` runs before it starts a process) is success or exactly one `trl-ext: error:` line, never a
traceback, and the output_dir is never touched.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import RECIPES

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "trl_ext" / "data"
#: quickstart recipe -> the bundled training file its dataset_name points at
QUICKSTARTS = {
    "dpo": DATA / "preferences" / "train.jsonl",
    "kto": DATA / "kto" / "train.jsonl",
    "grpo": DATA / "prompts" / "train.jsonl",
    "ppo": DATA / "prompts" / "train.jsonl",
}
ODD_VALUES = [None, "x", "", -1, 0, 1, 0.5, 1.5, -1e-5, 1e9, math.nan, math.inf, [], ["a"], {"a": 1}, True, "1e-5"]
NUMERIC_KEYS = [
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "beta",
    "max_length",
    "max_completion_length",
    "num_generations",
    "temperature",
    "logging_steps",
    "seed",
]
PROTECTED = {"output_dir", "env"}  # output_dir stays a fresh path the test watches


def corrupt(text: str, how: str, position: float) -> str:
    """A damaged copy of a JSONL file: truncated, a byte replaced, a line dropped or doubled, garbage, or empty."""
    at = int(position * len(text))
    lines = text.splitlines(keepends=True)
    line = min(int(position * len(lines)), len(lines) - 1)
    if how == "truncate":
        return text[:at]
    if how == "byte":
        return text[:at] + "}" + text[at + 1 :]
    if how == "drop_line":
        return "".join(lines[:line] + lines[line + 1 :])
    if how == "garbage_line":
        return "".join(lines[:line] + ["not json at all\n"] + lines[line:])
    if how == "missing_column":
        return '{"unrelated": 1}\n' * 3
    return ""  # empty


@st.composite
def mutated_recipe(draw):
    method = draw(st.sampled_from(sorted(QUICKSTARTS)))
    raw = yaml.safe_load((RECIPES / "quickstart" / f"{method}.yaml").read_text())
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "swap", "range", "data"]))
        if op == "drop":
            key = draw(st.sampled_from(sorted(set(raw) - PROTECTED)))
            raw.pop(key)
            ops.append(("drop", key))
        elif op == "swap":
            key = draw(st.sampled_from(sorted(set(raw) - PROTECTED)))
            raw[key] = draw(st.sampled_from(ODD_VALUES))
            ops.append(("swap", key, raw[key]))
        elif op == "range":
            key = draw(st.sampled_from(NUMERIC_KEYS))
            raw[key] = draw(st.sampled_from([-1, 0, 0.5, 1.5, 2, 1e9, -1e-5, math.nan]))
            ops.append(("range", key, raw[key]))
        else:
            how = draw(st.sampled_from(["truncate", "byte", "drop_line", "garbage_line", "missing_column", "empty"]))
            ops.append(("data", how, draw(st.floats(0, 1))))
    return method, raw, ops


def run_check(argv: list[str]) -> tuple[int, str, str]:
    from trl_ext.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same examples in CI on every run; change the seed by editing the strategy
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_recipe())
def test_any_mutation_is_success_or_one_error_line(case):
    method, raw, ops = case
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out_dir = tmp / "out"
        raw["output_dir"] = str(out_dir)
        for op in ops:
            if op[0] == "data":
                data = tmp / f"{method}.jsonl"
                data.write_text(corrupt(QUICKSTARTS[method].read_text(), op[1], op[2]))
                raw["dataset_name"] = str(data)
        recipe = tmp / "r.yaml"
        recipe.write_text(yaml.safe_dump(raw))
        code, out, err = run_check(["check", str(recipe)])
        assert "Traceback" not in err + out, (ops, err)
        if code == 0:
            assert "OK: ready to train" in out, (ops, out, err)
        else:
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("trl-ext: error: "), (ops, code, err)
        assert not out_dir.exists(), ops
