"""Checks that run before any process loads weights: rewards importable and their arguments valid, the starting
adapter, the model and datasets reachable and readable, output_dir safe to write, and (on a GPU) the memory
estimate. `trl-ext train`, `trl-ext check` and pipelines call `preflight`; each check raises `RecipeError`.
"""

from __future__ import annotations

from pathlib import Path

from trl_ext.checkpoints import (
    describe_skipped,
    list_checkpoints,
    newest_complete_checkpoint,
    resolve_resume_checkpoint,
)
from trl_ext.data.loading import load_datasets
from trl_ext.recipe import Recipe, RecipeError


def check_reward_funcs(recipe: Recipe) -> None:
    """Refuse (RecipeError) a `reward_funcs` entry that cannot be imported, before anything loads.

    Part of the checks that need the capabilities (the recipe layer below them only checks keys and values).
    """
    if not recipe.script.reward_funcs:
        return
    from trl_ext.rewards import resolve_reward_func

    source = f"recipe {recipe.path}" if recipe.path else "the command line"
    for name in recipe.script.reward_funcs:
        try:
            resolve_reward_func(name)
        except (ImportError, AttributeError, ValueError) as err:
            raise RecipeError(f"reward_funcs entry {name!r} in {source} cannot be loaded: {err}") from None


def check_sft_adapter(recipe: Recipe) -> None:
    """Refuse (RecipeError) an `sft_adapter_path` that is not a LoRA adapter of the recipe's model, before loading."""
    path = getattr(recipe.training, "sft_adapter_path", None)
    if not path:
        return
    from trl_ext.configs.policy import check_policy_adapter

    try:
        check_policy_adapter(path, recipe.model.model_name_or_path)
    except ValueError as err:
        raise RecipeError(str(err)) from None


def preflight(recipe: Recipe) -> Recipe:
    """Every check that runs before a process loads weights: rewards importable, output_dir safe to write, the
    starting adapter fits the model."""
    check_reward_funcs(recipe)
    check_output_dir(recipe)
    prepare_packaged_model(recipe)
    check_sft_adapter(recipe)
    check_inputs(recipe)
    return recipe


def check_inputs(recipe: Recipe) -> None:
    """Refuse (RecipeError) bad input that would otherwise fail after loading: reward constructor arguments, an
    output_dir that is not a writable folder, a model that cannot be found, a dataset that cannot be read or lacks
    the method's columns, a conversational dataset for a tokenizer without a chat template, an EWC Fisher file
    computed for another model or mode."""
    from trl_ext.model_source import check_chat_template, check_model_source

    check_reward_kwargs(recipe)
    check_output_dir_writable(recipe.training.output_dir)
    check_model_source(recipe.model.model_name_or_path, recipe.model.model_revision)
    fisher = getattr(recipe.training, "ewc_fisher_path", None)
    if fisher:
        from trl_ext.ewc.io import check_fisher_header

        check_fisher_header(fisher, recipe.model.model_name_or_path, recipe.training.ewc_fisher_mode)
    if getattr(recipe.training, "critic_model_name_or_path", None):
        check_model_source(recipe.training.critic_model_name_or_path, key="critic_model_name_or_path")
    if recipe.script.dataset_streaming:
        return
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a check, not the run: the training process shows them
    try:
        train_dataset, _ = load_datasets(recipe)
    finally:
        if bars:
            datasets.enable_progress_bars()
    if len(train_dataset) == 0:
        raise RecipeError(f"The training dataset of {recipe.path or 'the recipe'} has no rows.")
    label = recipe.script.dataset_name or "datasets:"
    check_chat_template(
        recipe.model.model_name_or_path,
        train_dataset[0],
        getattr(recipe.training, "chat_template_path", None),
        label,
        revision=recipe.model.model_revision,
    )


def check_reward_kwargs(recipe: Recipe) -> None:
    """Refuse ``reward_kwargs`` that are not a mapping per reward, name no ``reward_funcs`` entry, or that a reward
    class's constructor does not take (checked against its signature; nothing is built)."""
    import inspect
    import json

    source = f"recipe {recipe.path}" if recipe.path else "the command line"
    kwargs = recipe.script.reward_kwargs
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as err:
            raise RecipeError(f"reward_kwargs in {source} is not a JSON mapping: {err}.") from None
    if not kwargs:
        return
    if not isinstance(kwargs, dict):
        raise RecipeError(f"reward_kwargs in {source} must map a reward_funcs entry to its constructor arguments.")
    from trl_ext.rewards import resolve_reward_func

    names = list(recipe.script.reward_funcs or [])
    keys = {n: n for n in names} | {n.rsplit(".", 1)[-1]: n for n in names}
    for key, args in kwargs.items():
        if key not in keys:
            raise RecipeError(
                f"reward_kwargs key {key!r} in {source} names no reward_funcs entry (entries: {', '.join(names)}); "
                "key it by the entry or its class name."
            )
        if not isinstance(args, dict):
            raise RecipeError(f"reward_kwargs[{key!r}] in {source} must be a mapping of argument: value.")
        obj = resolve_reward_func(keys[key])
        if not inspect.isclass(obj):
            raise RecipeError(f"reward_kwargs given for {key!r}, which is a function, not a class to instantiate.")
        try:
            signature = inspect.signature(obj)
            signature.bind(**args)
        except TypeError as err:
            params = ", ".join(p for p in signature.parameters if p not in ("args", "kwargs"))
            raise RecipeError(
                f"reward_kwargs[{key!r}] in {source} do not fit {obj.__name__}({params}): {err}."
            ) from None


def prepare_packaged_model(recipe: Recipe) -> None:
    """Convert a real ``builtin:`` model made on first use (``builtin:smollm2-135m-instruct``) once, before any process.

    Raises a `RecipeError` that says what to install when the model cannot be made.
    """
    from trl_ext.data.real_models import ensure_packaged_model, packaged_model_source

    name = recipe.model.model_name_or_path
    if packaged_model_source(name) is not None:
        ensure_packaged_model(name.removeprefix("builtin:"))


def check_output_dir(recipe: Recipe) -> None:
    """Refuse to write a fresh run over checkpoints a previous run left, and a resume with nothing complete to resume
    from (`trl_ext.checkpoints.resolve_resume_checkpoint`)."""
    out = Path(recipe.training.output_dir)
    if recipe.training.resume_from_checkpoint:
        try:
            resolve_resume_checkpoint(str(out), recipe.training.resume_from_checkpoint, say=lambda message: None)
        except ValueError as err:
            raise RecipeError(str(err)) from None
        return
    checkpoints = list_checkpoints(out)
    if not checkpoints:
        return
    names = ", ".join(p.name for p in checkpoints[-3:])
    newest, skipped = newest_complete_checkpoint(out)
    if newest is None:
        raise RecipeError(
            f"output_dir {out} already holds checkpoints ({names}), none of them complete "
            f"({describe_skipped(skipped)}). Remove them, or choose another --output_dir."
        )
    incomplete = f"; incomplete, skipped: {describe_skipped(skipped)}" if skipped else ""
    raise RecipeError(
        f"output_dir {out} already holds checkpoints ({names}); a new run would overwrite them. Resume from "
        f"{newest.name}, the newest complete one{incomplete}, with --resume_from_checkpoint true, or choose another "
        "--output_dir."
    )


def check_output_dir_writable(output_dir: str) -> None:
    """Refuse (RecipeError) an output_dir that is a file, lies under a file, or cannot be written (read-only).

    Probes with a temporary file in output_dir, or in its nearest existing parent when it does not exist yet;
    creates nothing that stays.
    """
    import tempfile

    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise RecipeError(f"output_dir {output_dir} is a file, not a directory; choose another --output_dir.")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RecipeError(f"output_dir {output_dir} lies under {probe}, which is a file; choose another --output_dir.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        where = "" if probe == out else f" ({probe}, where it would be created)"
        raise RecipeError(
            f"output_dir {output_dir} is not writable{where}: {err.strerror}; choose another --output_dir."
        ) from None


def check_gpu_memory(recipe: Recipe) -> None:
    """On a GPU, refuse (RecipeError) a recipe predicted not to fit this process's GPU (``skip_memory_check``)."""
    import torch

    if not torch.cuda.is_available():
        return
    from trl_ext.memory import check_recipe_memory

    device = torch.cuda.current_device()
    check_recipe_memory(recipe, torch.cuda.get_device_properties(device).total_memory)
