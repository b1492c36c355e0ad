"""Pipelines: several training stages in one recipe (``stages:``), validated together before any weight loads.

A pipeline recipe holds the keys every stage shares (model, quantization, LoRA, ``output_dir``, ...) at the top level
and a ``stages:`` list; each stage has a ``name``, a ``method`` and its own keys, which win over the shared ones::

    model_name_or_path: builtin:tiny-chat
    load_in_4bit: true
    use_peft: true
    output_dir: outputs/quickstart-rlhf
    stages:
      - {name: sft, method: sft, dataset_name: builtin:instructions}
      - {name: reward, method: reward, dataset_name: builtin:preferences}
      - {name: ppo, method: ppo, dataset_name: builtin:prompts, sft_adapter_path: sft, reward_adapter_path: reward}

Each stage writes to ``<output_dir>/<stage name>/``. A key of `REFERENCE_KEYS` whose value is the name of an earlier
stage means that stage's output (its adapter directory, or its Fisher file for ``ewc_fisher_path``). A stage with
EWC (``ewc_lambda > 0``) is anchored at the previous stage's policy (online EWC): its ``ewc_anchor_adapter`` is the
policy it starts from (``sft_adapter_path``'s stage, else the last earlier stage that trains a policy), and the Fisher
that stage saved feeds this one (``ewc_fisher_path``), unless the stage sets those keys itself.

`load_pipeline` reads and checks every stage (keys, values, references) and builds each stage's flat recipe; it loads
no weights. Running the stages is `trl_ext.pipeline_cli`.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trl_ext.recipe import METHODS, PARSER_KEYS, Recipe, RecipeError, build_recipe, read_recipe_mapping, recipe_fields
from trl_ext.recipe_syntax import split_cli

#: Keys whose value may be the name of an earlier stage, and what of that stage's output it then means.
REFERENCE_KEYS: dict[str, str] = {
    "sft_adapter_path": "policy",
    "reward_adapter_path": "reward",
    "ewc_anchor_adapter": "policy",
    "ewc_fisher_path": "fisher",
}
#: Keys whose config check needs a reference key set (they are set with it, after validation).
DEPENDENT_KEYS: dict[str, str] = {"critic_init_from_reward": "reward_adapter_path"}
#: Methods whose output is not a policy (a later stage cannot start from it).
NON_POLICY_METHODS = ("reward",)
#: File names a stage writes next to its trainer's output.
STAGE_RECIPE_FILE = "stage_recipe.yaml"
STAGE_COMPLETE_FILE = "stage_complete.json"
FISHER_FILE = "ewc_fisher.safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Stage:
    """One stage of a pipeline.

    Args:
        name (`str`):
            The stage's name, also its output directory under the pipeline's ``output_dir``.
        index (`int`):
            Position in the pipeline (0-based).
        method (`str`):
            The stage's training method.
        raw (`dict`):
            The flat recipe the stage runs: the shared keys, the stage's keys, references resolved to paths.
        recipe (`Recipe`):
            The validated recipe (references to stages not yet run are set on it after validation).
        references (`dict[str, str]`):
            Recipe key -> the earlier stage whose output it names.
        overrides (`list[str]`):
            The command-line overrides that apply to this stage's method.
    """

    name: str
    index: int
    method: str
    raw: dict
    recipe: Recipe
    references: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    @property
    def output_dir(self) -> Path:
        return Path(self.raw["output_dir"])

    @property
    def complete(self) -> bool:
        """Whether the stage ran to the end (`mark_complete` wrote its marker)."""
        return (self.output_dir / STAGE_COMPLETE_FILE).is_file()

    def last_checkpoint(self) -> Path | None:
        """The stage's newest ``checkpoint-N`` directory, or None."""
        found = [p for p in self.output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
        return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)

    def write_recipe(self) -> Path:
        """Write the stage's flat recipe to ``<stage output_dir>/stage_recipe.yaml`` (what its process loads)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / STAGE_RECIPE_FILE
        header = f"# Stage {self.name!r} ({self.method}) of a pipeline, written by trl-ext train.\n"
        path.write_text(header + yaml.safe_dump(self.raw, sort_keys=False), encoding="utf-8")
        return path

    def recipe_changed(self) -> bool:
        """Whether a complete stage's recorded recipe differs from the one it would run now."""
        try:
            recorded = json.loads((self.output_dir / STAGE_COMPLETE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        now = json.loads(json.dumps({"recipe": self.raw, "overrides": self.overrides}))
        return {k: recorded.get(k) for k in now} != now

    def mark_complete(self) -> None:
        """Record that the stage finished: a re-run of the pipeline skips it."""
        marker = {"stage": self.name, "method": self.method, "recipe": self.raw, "overrides": self.overrides}
        (self.output_dir / STAGE_COMPLETE_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")


@dataclass
class Pipeline:
    """A validated pipeline: its stages in order.

    Args:
        path (`str` or `None`):
            The pipeline recipe file.
        output_dir (`Path`):
            The directory every stage writes under.
        stages (`list[Stage]`):
            The stages, in the order they run.
    """

    path: str | None
    output_dir: Path
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        """The stage called `name`; a RecipeError names the closest one otherwise."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        names = [s.name for s in self.stages]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"Pipeline {self.path} has no stage {name!r}; its stages are {', '.join(names)}.{hint}")

    def dependencies(self, stage: Stage) -> list[Stage]:
        """The earlier stages whose output `stage` reads."""
        return [self.stage(name) for name in dict.fromkeys(stage.references.values())]


def is_pipeline(path) -> bool:
    """Whether the recipe file at `path` is a pipeline (has ``stages:``); False when it cannot be read."""
    try:
        return "stages" in read_recipe_mapping(path)
    except RecipeError:
        return False


def load_pipeline(path, overrides: list[str] | None = None) -> Pipeline:
    """Read a pipeline recipe and validate every stage, loading no weights.

    Checks every stage's keys and values (as `trl_ext.recipe.load_recipe` does for one recipe), the stage names, and
    every cross-stage reference (it must name an earlier stage whose output is of the right kind).

    Args:
        path (`str` or `os.PathLike`):
            The pipeline recipe (a YAML mapping with ``stages:``).
        overrides (`list[str]`, *optional*):
            ``--key value`` overrides; each applies to every stage whose method has the key. ``--output_dir`` moves
            the whole pipeline.

    Returns:
        `Pipeline`: the stages in order, each with its flat recipe.

    Raises:
        RecipeError: naming the stage, the key and the fix.
    """
    raw = read_recipe_mapping(path)
    return build_pipeline(raw, overrides, path=str(path))


def build_pipeline(raw: dict, overrides: list[str] | None = None, path: str | None = None) -> Pipeline:
    """Validate a pipeline mapping (see `load_pipeline`)."""
    source = f"pipeline {path}" if path else "the pipeline"
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise RecipeError(f"'stages' in {source} must be a non-empty list of stages, each with a name and a method.")
    shared = {k: v for k, v in raw.items() if k != "stages"}
    if "method" in shared:
        raise RecipeError(f"{source} has a top-level 'method'; each stage names its own method. Remove it.")
    cli = split_cli(list(overrides or []))
    root = next((v for k, v in cli if k == "output_dir"), None) or shared.pop("output_dir", None)
    shared.pop("output_dir", None)
    if not root:
        raise RecipeError(f"{source} has no 'output_dir'; every stage writes to <output_dir>/<stage name>/.")
    cli = [(k, v) for k, v in cli if k != "output_dir"]
    if any(k == "method" for k, _ in cli):
        raise RecipeError("--method cannot override a pipeline; each stage names its own method.")

    names: list[str] = []
    for i, entry in enumerate(stages_raw):
        where = f"stage {i + 1} of {source}"
        if not isinstance(entry, dict):
            raise RecipeError(f"{where} must be a mapping with 'name' and 'method', got {type(entry).__name__}.")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RecipeError(f"{where} needs a 'name' (letters, digits, '.', '_', '-'): it names its output dir.")
        if name in names:
            raise RecipeError(f"{where}: stage name {name!r} is used twice; give every stage its own name.")
        names.append(name)

    stages: list[Stage] = []
    for i, entry in enumerate(stages_raw):
        stage = _build_stage(i, entry, shared, Path(root), cli, stages, names, path)
        stages.append(stage)
    unused = [k for k, _ in cli if not any(k in recipe_fields(s.method) for s in stages)]
    if unused:
        raise RecipeError(f"The command-line override --{unused[0]} is a key of no stage's method in {source}.")
    return Pipeline(path=path, output_dir=Path(root), stages=stages)


def _build_stage(i, entry, shared, root, cli, earlier, names, path) -> Stage:
    source = f"pipeline {path}" if path else "the pipeline"
    name = entry["name"]
    where = f"stage {name!r} ({i + 1} of {len(names)}) of {source}"
    own = {k: v for k, v in entry.items() if k != "name"}
    for key in ("output_dir", "stages"):
        if key in own:
            raise RecipeError(f"{where} sets {key!r}; stages write to <output_dir>/{name}/, set output_dir at the top.")
    method = own.get("method")
    if method not in METHODS:
        close = difflib.get_close_matches(str(method), list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"{where}: unknown method {method!r}; choose one of {', '.join(METHODS)}.{hint}")
    fields = recipe_fields(method)
    for key in shared:
        if key not in fields and key not in PARSER_KEYS and key not in own:
            raise RecipeError(
                f"{where}: the top-level key {key!r} is shared by every stage, but method {method!r} has no such "
                "key. Move it into the stages that use it."
            )
    merged = copy.deepcopy({**shared, **own})
    if isinstance(shared.get("env"), dict) and isinstance(own.get("env"), dict):
        merged["env"] = {**shared["env"], **own["env"]}
    merged["output_dir"] = str(root / name)
    stage_cli = [(k, v) for k, v in cli if k in fields]
    overrides = [tok for k, v in stage_cli for tok in ([f"--{k}"] if v is None else [f"--{k}", v])]

    references = _references(merged, own, where, earlier, names, name)
    resolved = {key: _resolve(key, ref, root) for key, ref in references.items()}
    # The references are set after validation: their outputs do not exist until the earlier stages have run.
    for key, needs in DEPENDENT_KEYS.items():
        if needs not in resolved:
            continue
        if key in merged:
            resolved[key] = merged[key]
        given = [v for k, v in stage_cli if k == key]
        if given:  # from the command line: into the stage's recipe file, set with its reference
            resolved[key] = True if given[-1] is None else yaml.safe_load(given[-1])
            overrides = [tok for k, v in stage_cli if k != key for tok in ([f"--{k}"] if v is None else [f"--{k}", v])]
    checked = {k: v for k, v in merged.items() if k not in resolved}
    try:
        recipe = build_recipe(checked, overrides, path=path, deferred=resolved)
    except RecipeError as err:
        raise RecipeError(f"{where}: {err}") from None
    if resolved.get("critic_init_from_reward") and recipe.training.critic != "adapter":
        raise RecipeError(f"{where}: critic_init_from_reward needs critic: adapter (got {recipe.training.critic!r}).")
    ewc_refs, ewc_values = _online_ewc(recipe, merged, references, earlier, where)
    references.update(ewc_refs)
    resolved.update(ewc_values)
    resolved.update({key: _resolve(key, ref, root) for key, ref in ewc_refs.items()})
    for key, value in resolved.items():
        merged[key] = value
        _set_key(recipe, key, value)
    return Stage(name, i, method, merged, recipe, references, overrides)


def _references(merged: dict, own: dict, where: str, earlier: list[Stage], names: list[str], name: str) -> dict:
    """Reference key -> the earlier stage it names, checked for order and kind."""
    refs: dict[str, str] = {}
    by_name = {s.name: s for s in earlier}
    for key, kind in REFERENCE_KEYS.items():
        value = merged.get(key)
        if not isinstance(value, str) or "/" in value or "\\" in value or Path(value).exists():
            continue  # a path, checked by the method's own validation
        if value not in names:
            close = difflib.get_close_matches(value, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RecipeError(
                f"{where}: {key}: {value!r} names no stage and no existing path; the stages are "
                f"{', '.join(names)}.{hint}"
            )
        if value not in by_name:
            raise RecipeError(
                f"{where}: {key}: {value!r} names a stage that does not run before {name!r}; a stage can only use "
                "the output of an earlier stage. Reorder the stages."
            )
        target = by_name[value]
        if kind == "reward" and target.method != "reward":
            raise RecipeError(
                f"{where}: {key}: stage {value!r} (method {target.method}) trains no reward model; name a stage with "
                "`method: reward`."
            )
        if kind == "policy" and target.method in NON_POLICY_METHODS:
            raise RecipeError(
                f"{where}: {key}: stage {value!r} trains a reward model, not a policy; name a policy stage (sft, ...)."
            )
        if kind == "fisher" and not _saves_fisher(target):
            raise RecipeError(
                f"{where}: {key}: stage {value!r} writes no Fisher file; give it ewc_lambda > 0 (and leave "
                "ewc_save_fisher on)."
            )
        refs[key] = value
    return refs


def _resolve(key: str, stage_name: str, root: Path) -> str:
    out = root / stage_name
    return str(out / FISHER_FILE) if REFERENCE_KEYS[key] == "fisher" else str(out)


def _anchor_stage(merged: dict, references: dict, earlier: list[Stage]) -> Stage | None:
    """The policy a stage starts from: its ``sft_adapter_path`` stage, else the last earlier policy stage."""
    by_name = {s.name: s for s in earlier}
    if "sft_adapter_path" in references:
        return by_name[references["sft_adapter_path"]]
    if merged.get("sft_adapter_path"):
        return None  # starts from an adapter outside the pipeline: the trainer anchors EWC at it by default
    policies = [s for s in earlier if s.method not in NON_POLICY_METHODS]
    return policies[-1] if policies else None


def _online_ewc_refs(recipe: Recipe, merged: dict, references: dict, earlier: list[Stage]) -> dict[str, str]:
    if not _ewc_enabled(recipe):
        return {}
    anchor = _anchor_stage(merged, references, earlier)
    if anchor is None:
        return {}
    refs = {}
    if merged.get("ewc_anchor_adapter") is None:
        refs["ewc_anchor_adapter"] = anchor.name
        if merged.get("ewc_fisher_path") is None and _saves_fisher(anchor):
            refs["ewc_fisher_path"] = anchor.name
    return refs


def _online_ewc(recipe: Recipe, merged: dict, references: dict, earlier: list[Stage], where: str):
    """The online-EWC keys a stage with EWC gets in a pipeline: (anchor/Fisher references, other values).

    The anchor is the policy the stage starts from, the Fisher the one that stage saved (accumulated with this
    stage's own, ``ewc_gamma``), and the stage saves its Fisher for the next one.
    """
    if not _ewc_enabled(recipe):
        return {}, {}
    values: dict[str, Any] = {}
    if merged.get("ewc_save_fisher") is None:
        values["ewc_save_fisher"] = True  # the next stage's online EWC reads it
    refs = _online_ewc_refs(recipe, merged, references, earlier)
    mode = recipe.training.ewc_fisher_mode
    if refs and mode == "lora_params":
        raise RecipeError(
            f"{where}: EWC in a pipeline anchors each stage at the previous stage's policy (online EWC), which needs "
            "ewc_fisher_mode full or kfac, not lora_params."
        )
    if mode == "kfac":
        refs.pop("ewc_fisher_path", None)  # a factored Fisher cannot be accumulated across stages
    return refs, values


def _ewc_enabled(recipe: Recipe) -> bool:
    return bool(getattr(recipe.training, "ewc_enabled", False))


def _saves_fisher(stage: Stage) -> bool:
    return _ewc_enabled(stage.recipe) and bool(stage.raw.get("ewc_save_fisher"))


def _set_key(recipe: Recipe, key: str, value) -> None:
    """Set a key resolved after validation on the config that owns it."""
    for config in (recipe.training, recipe.script, recipe.model):
        if hasattr(config, key):
            setattr(config, key, value)
            return
