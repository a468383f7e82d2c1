"""The package's shape: the Prefect layer loads by file path, the core without Prefect."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from unittest.mock import ANY

ROOT = Path(__file__).resolve().parents[1]

FLOW_FILES = {
    "flows/sync.py:dintero_sync": "dintero-sync",
    "flows/login.py:dintero_login": "dintero-login",
    "flows/accounts.py:dintero_sync_accounts": "dintero-sync-accounts",
    "flows/summary.py:dintero_sync_summary": "dintero-sync-summary",
}


def run_python(code: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_each_flow_file_loads_by_path_and_deploys_from_source():
    # What `flow.serve()` from a file, `prefect deploy flows/sync.py:dintero_sync` and a worker
    # pulling the source do: load the file by path. Placeholders are refused, so an import that
    # only works inside the package (a relative one) fails here instead of deploying a stub.
    out = run_python(
        f"""
        from prefect.flows import Flow, load_flow_from_entrypoint

        for entrypoint, name in {FLOW_FILES!r}.items():
            flow = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
            assert isinstance(flow, Flow) and flow.name == name, (entrypoint, flow)
            print("loaded", entrypoint, flow.fn.__module__)

        # The object `.serve()` and `.deploy()` start from, built from the source tree.
        sync = Flow.from_source(source={str(ROOT)!r}, entrypoint="flows/sync.py:dintero_sync")
        deployment = sync.to_deployment(name="by-path")
        assert deployment.entrypoint == "flows/sync.py:dintero_sync", deployment.entrypoint
        schema = deployment._parameter_openapi_schema.properties
        assert {{"credentials_block", "lookback_hours", "destination"}} <= set(schema), schema
        print("deployable", deployment.name)
        """,
    )
    assert out.count("loaded ") == len(FLOW_FILES)
    assert "deployable by-path" in out


def test_the_core_imports_with_prefect_absent():
    # Every core module, with `prefect` made unimportable: the core is usable without Prefect.
    out = run_python(
        """
        import importlib, pkgutil, sys

        class NoPrefect:
            def find_spec(self, name, path=None, target=None):
                if name == "prefect" or name.startswith("prefect."):
                    raise ModuleNotFoundError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, NoPrefect())
        import prefect_dintero

        prefect_side = {"prefect_dintero.blocks", "prefect_dintero.tasks",
                        "prefect_dintero.flows", "prefect_dintero.cli"}
        names = []
        for info in pkgutil.walk_packages(prefect_dintero.__path__, "prefect_dintero."):
            if any(info.name == p or info.name.startswith(p + ".") for p in prefect_side):
                continue
            if info.name.endswith(".__main__"):  # runs a program; what it imports is checked
                continue
            importlib.import_module(info.name)
            names.append(info.name)
        assert not [m for m in sys.modules if m == "prefect" or m.startswith("prefect.")]
        print(len(names), " ".join(sorted(names)))
        """,
        cwd=Path("/"),
    )
    count, modules = out.split(" ", 1)
    for core in (
        "prefect_dintero.sync.stream_sync",
        "prefect_dintero.sink",
        "prefect_dintero.client",
        "prefect_dintero.emulator.app",
        "prefect_dintero.streams.catalog",
    ):
        assert core in modules.split(), (core, modules)
    assert int(count) >= 25


#: Import names that differ from the distribution a requirement names.
DISTRIBUTIONS = {"yaml": "pyyaml"}


_IMPORTS = """
import ast, json, sys
found = {}
for path in sys.argv[1:]:
    names = found[path] = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
print(json.dumps(found))
"""


def _imports(paths: list[Path]) -> dict[str, list[str]]:
    """The absolute imports of each file, parsed in a fresh interpreter: CPython 3.11.7's
    ``ast.parse`` can fail with "AST constructor recursion depth mismatch" in a process where
    an earlier test hit a RecursionError (the deeply nested JSON page of test_bad_input, when
    xdist hands both files to one worker)."""
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS, *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)


def test_what_the_package_imports_is_declared():
    # Every third-party module the installed package (the core, blocks, tasks, flows and the
    # CLI) imports at module level or in a function is a declared dependency, so a fresh install
    # never depends on what Prefect happens to pull in. The optional extras' modules are
    # imported only when their database is used.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower().replace("-", "_")
        for requirement in project["dependencies"]
    }
    extras = {
        re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower().replace("-", "_")
        for name, requirements in project["optional-dependencies"].items()
        if name != "dev"
        for requirement in requirements
    }
    # pytest: only the emulator's pytest plugin (loaded by pytest itself) imports it.
    allowed = {"prefect_dintero", "pytest", "duckdb", "psycopg", "prefect_sqlalchemy"}
    assert allowed - {"prefect_dintero", "pytest"} <= extras | {"duckdb"}
    imported: dict[str, str] = {}
    paths = [
        path
        for folder in ("src/prefect_dintero", "blocks", "tasks", "flows", "cli")
        for path in (ROOT / folder).rglob("*.py")
    ]
    for path, names in _imports(paths).items():
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in allowed:
                imported.setdefault(top.lower(), str(Path(path).relative_to(ROOT)))
    missing = {
        module: where
        for module, where in imported.items()
        if DISTRIBUTIONS.get(module, module) not in declared
    }
    assert not missing, f"imported by the package but not declared in pyproject.toml: {missing}"
    assert {"sqlalchemy", "starlette", "uvicorn", "httpx", "prefect", "yaml"} <= imported.keys()


def test_nothing_points_outside_the_repository():
    """Users never have the developers' shared notes: the code and docs cite Dintero's and
    Prefect's own pages, and say in their own words what they rely on."""
    import subprocess

    # Spelled in parts, so this file does not cite the folder itself.
    outside_folder = "/".join(("..", "sha" + "red"))
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    outside = [
        name
        for name in tracked
        if (ROOT / name).is_file() and outside_folder in (ROOT / name).read_text(errors="replace")
    ]
    assert not outside, outside


#: Where each part of the package is installed from, and the layers, lowest first: a module may
#: import from its own layer and the ones below, never from one above (docs/architecture.md).
PACKAGE_ROOTS = {
    "prefect_dintero": "src/prefect_dintero",
    "prefect_dintero.blocks": "blocks",
    "prefect_dintero.tasks": "tasks",
    "prefect_dintero.flows": "flows",
    "prefect_dintero.cli": "cli",
}
LAYERS = (
    ("_version", "budget", "errors", "redact", "times", "validation"),
    ("http",),
    ("auth",),
    ("streams",),
    ("client", "bearer"),
    ("sink",),
    ("sync",),
    ("emulator",),
    ("blocks",),
    ("tasks",),
    ("flows",),
    ("cli",),
)

_GRAPH = """
import ast, json, sys
from pathlib import Path

roots = json.loads(sys.argv[1])
modules = {}
for package, folder in roots.items():
    for path in sorted(Path(folder).rglob("*.py")):
        parts = package.split(".") + list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path

def absolute(name, path, node):
    if node.level == 0:
        return node.module
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))

def known(target):
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target

edges = {}
for name, path in modules.items():
    found = set()
    # Every import statement, wherever it is: in a function, under TYPE_CHECKING.
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = absolute(name, path, node)
            subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in modules]
            targets = subs + ([module] if len(subs) < len(node.names) else [])
        else:
            continue
        found |= {t for t in map(known, targets) if t and t != name}
    edges[name] = sorted(found)
print(json.dumps(edges))
"""


def _import_graph() -> dict[str, list[str]]:
    """Which of the package's modules each of its modules imports (parsed in a fresh
    interpreter, as :func:`_imports` explains)."""
    out = subprocess.run(
        [sys.executable, "-c", _GRAPH, json.dumps(PACKAGE_ROOTS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)


def _layer(module: str) -> int | None:
    part = module.split(".")[1] if "." in module else None
    return next((n for n, names in enumerate(LAYERS) if part in names), None)


def _circles(edges: dict[str, list[str]]) -> list[list[str]]:
    """The import circles: each strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in edges.get(module, []):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while (member := stack.pop()) != module:
                group.append(member)
            if group:
                circles.append(sorted([module, *group]))

    for module in edges:
        if module not in index:
            visit(module)
    return circles


def test_no_import_circle_and_no_import_from_a_higher_layer():
    edges = _import_graph()
    assert len(edges) > 80, sorted(edges)
    assert _circles(edges) == []
    upward = [
        (module, imported)
        for module, imports in edges.items()
        if module != "prefect_dintero"  # the package's face: re-exports the blocks, lazily
        for imported in imports
        if _layer(imported) > _layer(module)  # type: ignore[operator]
    ]
    assert upward == []
    assert [m for m in edges if m != "prefect_dintero" and _layer(m) is None] == []
    # The emulator stands alone: the core's foundation, nothing of the integration it fakes.
    assert {
        imported
        for module, imports in edges.items()
        if module.startswith("prefect_dintero.emulator")
        for imported in imports
        if not imported.startswith("prefect_dintero.emulator")
    } <= {"prefect_dintero.validation"}
    # No two modules share a base name. Two exceptions: ``__main__`` (Python's name for what
    # ``python -m`` runs) and ``flows/sync.py`` beside the ``sync`` package (the flow's file is
    # the entrypoint of every deployment made from it, ours and our users').
    base: dict[str, list[str]] = {}
    for module in edges:
        base.setdefault(module.rsplit(".", 1)[-1], []).append(module)
    shared = {name: found for name, found in base.items() if len(found) > 1}
    assert shared == {
        "__main__": ANY,
        "sync": ["prefect_dintero.sync", "prefect_dintero.flows.sync"],
    }


def test_the_circle_check_finds_a_circle():
    # The check above passes on an empty list: this shows it would not miss one.
    edges = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert _circles(edges) == [["a", "b", "c"]]


def test_the_readme_fits_on_a_page_and_every_local_link_resolves():
    # The README says what the package is and how to use it; the evidence, the speed tables,
    # the emulator's reference and the operations notes are in docs/, linked from it.
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append((page.relative_to(ROOT), target))
    assert broken == []
    linked = set(re.findall(r"\]\(docs/([^)#]+)\)", readme))
    assert linked >= {p.name for p in (ROOT / "docs").glob("*.md")}  # no page left unlinked
