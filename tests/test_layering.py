"""The package's import arrows point one way (docs/architecture.md): read every module's imports
(AST, function-level imports included) and fail on a cycle or an import against the layer order."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "badc_mpi"
SCRIPTS = PACKAGE.parent / "scripts"

#: top to bottom; a unit may import units of lower layers only (and its own modules)
LAYERS: list[set[str]] = [
    {"__main__", "__init__"},
    {"cli"},
    {"orchestrate"},
    {"arguments"},
    {"api"},
    {"results", "monitor"},
    {"coordinator"},
    {"worker"},
    {"runners", "transport", "gpu", "chunker"},
    {"storage", "inputs"},
    {"options"},
    {"records", "errors", "logs", "_version"},
]
#: inside ``results/``, top to bottom: a room may import lower rooms only (``results/__init__`` is the top)
RESULTS_ROOMS: list[set[str]] = [{"__init__"}, {"review"}, {"bundle"}, {"calibrate"}, {"export"}, {"aggregate"}]
#: runs inside HawkEars' own environment: must not import badc_mpi at all
STANDALONE = {
    "badc_mpi.runners.hawkears.resident",
    "badc_mpi.runners.hawkears.resident_pipeline",
    "badc_mpi.runners.hawkears.resident_caches",
    "badc_mpi.runners.hawkears.resident_protocol",
}
#: no module may grow past this many lines (docs/architecture.md, Rules): split it by concern first
MAX_MODULE_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def imports_of(path: Path, name: str) -> set[str]:
    """Absolute ``badc_mpi...`` modules that ``path`` imports (anywhere in it)."""
    out: set[str] = set()
    base = name if is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.split(".")[0] == "badc_mpi")
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = base.split(".")[: len(base.split(".")) - node.level + 1]
                target = ".".join(parts + ([target] if target else []))
            if target.split(".")[0] != "badc_mpi":
                continue
            for alias in node.names:  # `from badc_mpi.storage import ledger` imports a module
                sub = f"{target}.{alias.name}"
                out.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() or is_package(sub) else target)
    return out


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p, module_name(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def room(module: str) -> str:
    """``badc_mpi.results.export.wildtrax`` -> ``export``; ``badc_mpi.results`` -> ``__init__``."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 else "__init__"


def room_of(r: str) -> int:
    for i, names in enumerate(RESULTS_ROOMS):
        if r in names:
            return i
    raise KeyError(r)


def layer_of(u: str) -> int:
    for i, names in enumerate(LAYERS):
        if u in names:
            return i
    raise KeyError(u)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in graph.items():
        for dst in sorted(targets):
            su, du = unit(src), unit(dst)
            if su == du == "results" and room(src) != room(dst):
                if room_of(room(dst)) <= room_of(room(src)):
                    bad.append(f"{src} -> {dst}: results/{room(dst)} is not below results/{room(src)}")
                continue
            if su == du or dst == "badc_mpi" and su == "__main__":
                continue
            if src in STANDALONE:
                bad.append(f"{src} -> {dst}: runs inside HawkEars' environment and must not import badc_mpi")
            elif layer_of(du) <= layer_of(su):
                where = "the same layer" if layer_of(du) == layer_of(su) else "a higher layer"
                bad.append(f"{src} -> {dst}: imports {where} ({du} is not below {su})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt in graph and nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_unit_has_a_layer():
    units = {unit(m) for m in import_graph()}
    unknown = [u for u in sorted(units) if not any(u in names for names in LAYERS)]
    assert unknown == [], f"add {unknown} to LAYERS here and to docs/architecture.md"
    rooms = {room(m) for m in import_graph() if unit(m) == "results"}
    unknown = [r for r in sorted(rooms) if not any(r in names for names in RESULTS_ROOMS)]
    assert unknown == [], f"add {unknown} to RESULTS_ROOMS here and to docs/architecture.md"


def test_imports_point_down_and_never_cycle():
    graph = import_graph()
    assert sum(len(t) for t in graph.values()) > 50  # the reader really sees the imports
    assert layer_violations(graph) == []
    assert cycles(graph) == []


@pytest.mark.parametrize(
    "src,dst,needle",
    [
        ("badc_mpi.storage.summary", "badc_mpi.coordinator.scheduler", "higher layer"),
        ("badc_mpi.gpu.binding", "badc_mpi.runners.base", "same layer"),
        ("badc_mpi.runners.hawkears.resident", "badc_mpi.errors", "must not import"),
        ("badc_mpi.results.aggregate.dataset", "badc_mpi.results.export.meta", "results/export is not below"),
        ("badc_mpi.results.export.write", "badc_mpi.results.bundle.views", "results/bundle is not below"),
        ("badc_mpi.monitor.state", "badc_mpi.results.aggregate.runs", "same layer"),
    ],
)
def test_the_checker_catches_a_bad_import(src, dst, needle):
    graph = import_graph()
    graph[src] = graph[src] | {dst}
    problems = layer_violations(graph)
    assert len(problems) == 1 and needle in problems[0] and src in problems[0]


def test_the_checker_catches_a_cycle(tmp_path):
    graph = import_graph()
    graph["badc_mpi.records"] = graph["badc_mpi.records"] | {"badc_mpi.coordinator.run"}
    found = cycles(graph)
    assert found and any(c[0] == c[-1] and "badc_mpi.records" in c for c in found)
    bad = tmp_path / "bad.py"  # and the AST reader sees imports inside functions
    bad.write_text("def f():\n    from badc_mpi.coordinator import run\n    import badc_mpi.api\n")
    assert imports_of(bad, "badc_mpi.records") == {"badc_mpi.coordinator.run", "badc_mpi.api"}


def oversized(paths: list[Path], limit: int = MAX_MODULE_LINES) -> list[str]:
    """``path: N lines`` for each file longer than ``limit`` lines."""
    counts = {p: len(p.read_text().splitlines()) for p in paths}
    return [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p, n in sorted(counts.items()) if n > limit]


def test_no_module_is_longer_than_the_limit():
    modules = sorted(PACKAGE.rglob("*.py")) + sorted(SCRIPTS.rglob("*.py"))
    assert len(modules) > 100  # the walk really sees the package and the scripts
    too_long = oversized(modules)
    assert too_long == [], f"over {MAX_MODULE_LINES} lines, split by concern: {too_long}"


def test_the_length_check_catches_a_long_module():
    long = PACKAGE / "records.py"
    assert oversized([long], limit=10) == [f"badc_mpi/records.py: {len(long.read_text().splitlines())} lines"]
    assert oversized([long]) == []
