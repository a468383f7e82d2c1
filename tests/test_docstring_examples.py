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
    for info in pkgutil.walk_packages(prefect_dintero.__path__, "prefect_dintero."):
        if info.name.endswith(("__main__", ".testing")):
            continue
        module = importlib.import_module(info.name)
        own = [
            obj
            for _, obj in inspect.getmembers(module)
            if getattr(obj, "__module__", None) == info.name
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
                name = getattr(obj, "__qualname__", getattr(obj, "__name__", "module"))
                found.append((f"{info.name}.{name}[{i}]", inspect.cleandoc(code)))
    return sorted(set(found))


EXAMPLES = _examples()


@pytest.mark.parametrize(("where", "code"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_docstring_example_runs(where, code):
    exec(compile(code, where, "exec"), {"__name__": "__docstring_example__"})
