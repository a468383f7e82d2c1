"""Every ```python example in a docstring of the package runs as written."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import prefect_dintero

FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _examples() -> list[tuple[str, str]]:
    found = []
    names = [i.name for i in pkgutil.walk_packages(prefect_dintero.__path__, "prefect_dintero.")]
    # The Prefect API proxy is test support beside the tests; its example runs too.
    for name in [*names, "tests.prefect_proxy"]:
        if name.endswith(("__main__", ".testing")):
            continue
        module = importlib.import_module(name)
        own = [
            obj for _, obj in inspect.getmembers(module) if getattr(obj, "__module__", None) == name
        ]
        # Methods too (DinteroClient.iter_records), each where its class defines it.
        methods = [
            member
            for cls in own
            if inspect.isclass(cls)
            for name, member in vars(cls).items()
            if inspect.isfunction(member) and not name.startswith("_")
        ]
        objects = [module, *own, *methods]
        for obj in objects:
            doc = inspect.getdoc(obj) or ""
            for i, code in enumerate(FENCE.findall(doc)):
                # Block examples load saved blocks by name; test_blocks runs those against a server.
                if ".load(" in code:
                    continue
                what = getattr(obj, "__qualname__", getattr(obj, "__name__", "module"))
                found.append((f"{name}.{what}[{i}]", inspect.cleandoc(code)))
    return sorted(set(found))


EXAMPLES = _examples()


@pytest.mark.parametrize(("where", "code"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_docstring_example_runs(where, code):
    exec(compile(code, where, "exec"), {"__name__": "__docstring_example__"})
