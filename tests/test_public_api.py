"""The package's public API: every exported name resolves, and `import trl_ext` stays light."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys

import pytest

import trl_ext


def test_every_name_in_all_resolves_to_the_object_of_its_module():
    for name in trl_ext.__all__:
        obj = getattr(trl_ext, name)
        assert obj.__name__ == name, name
        module = sys.modules[trl_ext._EXPORTS[name]]
        assert getattr(module, name) is obj


def test_unknown_name_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="module 'trl_ext' has no attribute 'NoSuchTrainer'"):
        trl_ext.NoSuchTrainer  # noqa: B018


def test_type_checking_imports_list_the_same_names_as_all():
    tree = ast.parse(inspect.getsource(trl_ext))
    block = next(
        node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    )
    imported = {(node.module, alias.name) for node in block.body for alias in node.names}
    assert imported == {(module, name) for name, module in trl_ext._EXPORTS.items()}


def test_import_trl_ext_loads_neither_torch_nor_trl():
    code = "import sys, trl_ext; print(sorted(m for m in ('torch', 'trl', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
