"""The Markdown report of `benchmarks/ppo_vs_trl112.py` (tables from the runs in `ppo_vs_trl112.json`)."""

from __future__ import annotations

import statistics
from pathlib import Path

SIDES = {"ours": "trl-ext", "ours-recompute": "trl-ext, old log-probs recomputed", "trl112": "TRL 1.12"}


def _mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def _sd(xs):
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _group(runs, **match):
    return [r for r in runs if all(r.get(k) == v for k, v in match.items())]


def speed_rows(runs, epochs):
    """One row per (model, precision, side) of the runs at `epochs` PPO epochs: means over seeds."""
    runs = [r for r in runs if r["epochs"] == epochs]
    rows = []
    configs = sorted({(r["model"], r["precision"]) for r in runs}, reverse=True)
    for model, precision in configs:
        for side in SIDES:
            group = _group(runs, model=model, precision=precision, variant=side)
            if group:
                rows.append((model, precision, side, group))
    return rows


def _cpu(runs, **match):
    group = _group(runs, **match)
    return _mean([r["cpu_seconds_per_rollout"] for r in group]) if group else None


def changes(runs, epochs) -> list[str]:
    """What reading the old log-probabilities off generation bought, and where trl-ext still spends more than TRL 1.12
    (the phases of the fp32 compute model), computed from the runs."""
    match = dict(model="small", precision="fp32", epochs=epochs)
    ours, recompute, trl = (_cpu(runs, variant=v, **match) for v in ("ours", "ours-recompute", "trl112"))
    if None in (ours, recompute, trl):
        return []
    phase = lambda variant, name: _mean([r["phases"].get(name, 0.0) for r in _group(runs, variant=variant, **match)])  # noqa: E731
    saved, left = phase("ours-recompute", "old log-probs"), phase("ours", "old log-probs")
    lines = [
        "## What was changed in trl-ext's PPO for speed, and what it bought",
        "",
        "- The rollout's old log-probabilities are read off generation (`trl_ext/trainers/ppo_rollout.py`: a forward "
        "hook keeps each sampled token's log-probability at the trainer's temperature, one vocabulary row at a time) "
        "instead of a second policy pass over the rollout, as TRL 1.12 did. On the fp32 compute model the "
        f"`old log-probs` phase went from {saved:.3f} to {left:.3f} CPU s per rollout "
        f"({100 * (saved - left) / recompute:.0f} % of the rollout). The whole runs measured {recompute:.2f} "
        f"(recomputing) and {ours:.2f} CPU s per rollout ({recompute / trl:.2f}x and {ours / trl:.2f}x TRL 1.12's "
        f"{trl:.2f}); the difference beyond the phase itself is run-to-run spread (one seed per variant, runs "
        "sharing an overloaded machine).",
        "",
        "Where trl-ext still spends more CPU than TRL 1.12 (fp32 compute model, s per rollout):",
        "",
        "| phase | trl-ext | TRL 1.12 | difference |",
        "|---|---|---|---|",
    ]
    ours_forward = phase("ours", "train forward: policy") + phase("ours", "train forward: critic")
    pairs = [
        (name, phase("ours", name), phase("trl112", name))
        for name in _group(runs, variant="ours", **match)[0]["phases"]
    ]
    pairs = [p for p in pairs if not p[0].startswith("train forward")]
    pairs.append(("train forward (policy + critic)", ours_forward, phase("trl112", "train forward: policy + critic")))
    for name, a, b in sorted(pairs, key=lambda p: p[2] - p[1]):
        lines.append(f"| {name} | {a:.3f} | {b:.3f} | {a - b:+.3f} |")
    return lines + [""]


def write_markdown(summary: dict, path: Path) -> None:
    runs = summary["runs"]
    s = summary["settings"]
    lines = [
        "# PPO: trl-ext vs TRL 1.12 `trl.experimental.ppo.PPOTrainer`, equal work",
        "",
        f"Made by `benchmarks/ppo_vs_trl112.py --parallel {summary.get('parallel', 1)}` in {summary['minutes']:.0f} "
        f"minutes on a shared 2-core CPU, {summary['threads']} torch thread per run. Both sides generate exactly "
        f"{s['new_tokens']} tokens per completion (`min_new_tokens == max_new_tokens`), {s['batch']} completions per "
        f"rollout, {s['ppo_epochs']} PPO epochs of {s['mini_batches']} mini-batches (the speed runs), the same LoRA "
        f"(r={s['lora_r']}, all linear layers), model, prompts and rule reward. `gc.collect()` is a no-op on both "
        "sides during training; TRL 1.12 calls it twice per rollout, and its cost, measured apart on the final heap, "
        "is the last column.",
        "",
        "**CPU seconds per rollout** (the main thread's CPU time: torch runs on it alone) is the fair measure here: "
        f"the machine ran other jobs ({summary.get('load', 'a varying load')}) and runs shared it with each other, "
        "which inflates wall time by a factor that changes from run to run. Wall seconds are listed too.",
        "",
        "| model | precision | side | CPU s / rollout | wall s / rollout | vs TRL 1.12 (CPU) | peak RSS MiB | "
        "weights MiB | base models | tokens / rollout | TRL's gc.collect, wall s / rollout |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = speed_rows(runs, s["ppo_epochs"])
    for model, precision, side, group in rows:
        cpu = [r["cpu_seconds_per_rollout"] for r in group]
        trl = _group(runs, model=model, precision=precision, variant="trl112", epochs=s["ppo_epochs"])
        ratio = _mean(cpu) / _mean([r["cpu_seconds_per_rollout"] for r in trl]) if trl else float("nan")
        gc_cost = _mean([r["gc_collect_seconds"] / r["rollouts"] for r in group]) if side == "trl112" else None
        lines.append(
            f"| {model} | {precision} | {SIDES[side]} | {_mean(cpu):.2f} ± {_sd(cpu):.2f} | "
            f"{_mean([r['seconds_per_rollout'] for r in group]):.1f} | {ratio:.2f}x | "
            f"{_mean([r['peak_rss_mib'] for r in group]):.0f} | {group[0]['weights_mib']:.1f} | "
            f"{group[0]['base_models_held']} | {group[0]['completion_tokens'] // group[0]['rollouts']} | "
            f"{'' if gc_cost is None else f'{gc_cost:.2f}'} |"
        )
    lines += ["", "## Where the time goes (CPU seconds per rollout, mean over seeds)", ""]
    for model, precision in sorted({(m, p) for m, p, _, _ in rows}, reverse=True):
        present = [(side, g) for m, p, side, g in rows if (m, p) == (model, precision)]
        phases = []
        for _, group in present:
            for r in group:
                phases += [k for k in r["phases"] if k not in phases]
        lines += [f"**{model}, {precision}**", "", "| phase | " + " | ".join(SIDES[x] for x, _ in present) + " |"]
        lines.append("|---" * (len(present) + 1) + "|")
        for phase in phases:
            cells = [f"{_mean([r['phases'].get(phase, 0.0) for r in g]):.3f}" for _, g in present]
            lines.append(f"| {phase} | " + " | ".join(cells) + " |")
        lines.append("")
    curves = [r for r in runs if r["part"] == "curves"]
    if curves:
        keys = sorted({(r["variant"], r["epochs"]) for r in curves}, key=lambda k: (k[0] != "trl112", k[1]))
        seeds = sorted({r["seed"] for r in curves})
        lines += [
            f"## Learning curves ({curves[0]['model']}, {curves[0]['precision']}, seeds {seeds})",
            "",
            "Fraction of the rollout's completions that mention the keyword, mean ± standard deviation over the "
            "seeds; CPU seconds per rollout alongside.",
            "",
            "| rollout | " + " | ".join(f"{SIDES[v]}, {e} PPO epochs" for v, e in keys) + " |",
            "|---" * (len(keys) + 1) + "|",
        ]
        per_key = {k: _group(curves, variant=k[0], epochs=k[1]) for k in keys}
        n = min(len(r["scores"]) for r in curves)
        for i in range(n):
            cells = [
                f"{_mean([r['scores'][i] for r in g]):.2f} ± {_sd([r['scores'][i] for r in g]):.2f}"
                for g in per_key.values()
            ]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
        third = max(1, n // 3)
        last = [_mean([_mean(r["scores"][n - third : n]) for r in g]) for g in per_key.values()]
        lines.append("| last third, mean | " + " | ".join(f"{x:.2f}" for x in last) + " |")
        cpu = [_mean([r["cpu_seconds_per_rollout"] for r in g]) for g in per_key.values()]
        lines.append("| CPU s / rollout | " + " | ".join(f"{x:.2f}" for x in cpu) + " |")
        lines.append("")
    lines += changes(runs, s["ppo_epochs"])
    lines += summary.get("notes", [])
    lines += [
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in s.items()) + f"; small model: {summary['small_model']}",
    ]
    path.write_text("\n".join(lines) + "\n")
