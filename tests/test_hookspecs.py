"""Every hook in ``taskloom.hookspecs`` is named, typed, documented and tested.

As datasette does: the test suite is searched for each hook's name, so a new hook cannot land
without a test that uses it.
"""

from __future__ import annotations

import ast
import inspect
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from taskloom import hookspecs
from taskloom.plugins import get_plugin_manager

TESTS = Path(__file__).parent

HOOKSPECS: dict[str, Callable[..., Any]] = {
    name: obj for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, "taskloom_spec")
}


def test_the_hookspec_module_defines_hooks() -> None:
    assert len(HOOKSPECS) >= 11
    assert set(HOOKSPECS) <= set(vars(get_plugin_manager().hook))


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_hookspec_is_named_taskloom_something(name: str) -> None:
    assert re.fullmatch(r"taskloom_[a-z][a-z0-9_]*", name)
    assert HOOKSPECS[name].__name__ == name


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_hookspec_has_a_docstring_covering_parameters_and_result(name: str) -> None:
    spec = HOOKSPECS[name]
    doc = inspect.getdoc(spec)
    assert doc and doc.strip(), f"{name} has no docstring"
    parameters = inspect.signature(spec).parameters
    for param in parameters:
        assert f":param {param}:" in doc, f"{name}'s docstring does not document {param!r}"
    if spec.__annotations__.get("return") not in ("None", None):
        assert ":return:" in doc, f"{name}'s docstring does not say what it returns"


def _type_checking_namespace() -> tuple[dict[str, Any], dict[str, str]]:
    """The hookspec module's globals plus each name its ``if TYPE_CHECKING:`` block imports.

    Names are imported one by one, so a broken import fails only the hooks that use it; the
    second result maps each name that could not be imported to the reason.
    """
    namespace = dict(vars(hookspecs))
    broken: dict[str, str] = {}
    for node in ast.parse(inspect.getsource(hookspecs)).body:
        if not (isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")):
            continue
        for stmt in node.body:
            singles: list[ast.stmt] = [stmt]
            if isinstance(stmt, ast.ImportFrom):
                singles = [ast.ImportFrom(stmt.module, [alias], stmt.level) for alias in stmt.names]
            for single in singles:
                module = ast.fix_missing_locations(ast.Module(body=[single], type_ignores=[]))
                try:
                    exec(compile(module, hookspecs.__file__, "exec"), namespace)
                except ImportError as exc:
                    for alias in getattr(single, "names", []):
                        broken[alias.asname or alias.name] = f"{type(exc).__name__}: {exc}"
    return namespace, broken


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_hookspec_annotates_every_parameter_and_its_return(name: str) -> None:
    spec = HOOKSPECS[name]
    annotations = spec.__annotations__
    for param in inspect.signature(spec).parameters:
        assert param in annotations, f"{name}: parameter {param!r} has no type annotation"
    assert "return" in annotations, f"{name} has no return annotation"
    namespace, broken = _type_checking_namespace()
    try:
        hints = typing.get_type_hints(spec, globalns=namespace)
    except NameError as exc:  # an annotation names something that does not exist
        pytest.fail(f"{name}: an annotation does not resolve: {exc} ({broken.get(exc.name or '', '')})")
    assert set(hints) == set(annotations)


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_hookspec_is_used_by_a_test(name: str) -> None:
    users = [
        path.name
        for path in sorted(TESTS.rglob("test_*.py"))
        if path.name != Path(__file__).name and name in path.read_text(encoding="utf-8")
    ]
    assert users, f"no test under {TESTS} mentions the hook {name}"
