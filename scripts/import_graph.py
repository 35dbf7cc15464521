"""The package's import graph between stages, generated from the source (the README's layout section shows it).

    python scripts/import_graph.py          # prints the Mermaid block the README carries
    python scripts/import_graph.py --write  # puts it into README.md between the markers
    python scripts/import_graph.py --check  # exits 1 when the README's copy is stale or a cycle exists

Every import counts, inside functions too, except those under `if TYPE_CHECKING:` (annotations only).
A module directly under `fashion/` is an entry point (`fashion-train`, `fashion-eval`, ...), except the
glue (`config`, `validation`, `machine`), which is a stage every other one may use.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fashion"
GLUE = {"config", "validation", "machine"}
BEGIN, END = "<!-- import-graph:begin -->", "<!-- import-graph:end -->"


def stage_of(module: str) -> str:
    """fashion.data.vocab -> data; fashion.train -> entry points; fashion.config -> config."""
    parts = module.split(".")
    if len(parts) > 2 or (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "config" if parts[1] in GLUE else "entry points"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fashion"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("fashion")}
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph() -> dict[str, set[str]]:
    return {module_name(p): {m for m in imports_of(p) if m != module_name(p)} for p in sorted(PACKAGE.rglob("*.py"))}


def stage_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module, imported in module_graph().items():
        if module == "fashion":
            continue
        source = stage_of(module)
        edges.setdefault(source, set()).update(stage_of(m) for m in imported if m != "fashion" and stage_of(m) != source)
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle's nodes, found by depth-first search (an empty list: the graph is acyclic)."""
    found, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def mermaid(graph: dict[str, set[str]]) -> str:
    ident = lambda stage: stage.replace(" ", "_")  # noqa: E731
    lines = ["```mermaid", "flowchart BT"]
    lines += [f"  {ident(source)}[{source}] --> {ident(target)}[{target}]"
              for source in sorted(graph) for target in sorted(graph[source])]
    return "\n".join([*lines, "```"])


def readme_block() -> str | None:
    match = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), (ROOT / "README.md").read_text(), re.S)
    return match.group(1) if match else None


def main(argv: list[str]) -> int:
    generated = mermaid(stage_graph())
    if "--write" in argv:
        readme = ROOT / "README.md"
        before, rest = readme.read_text().split(BEGIN + "\n", 1)
        readme.write_text(before + BEGIN + "\n" + generated + "\n" + END + rest.split(END, 1)[1])
        return 0
    if "--check" not in argv:
        print(generated)
        return 0
    problems = [f"stage cycle: {' -> '.join(c)}" for c in cycles(stage_graph())]
    problems += [f"module cycle: {' -> '.join(c)}" for c in cycles(module_graph())]
    if readme_block() != generated:
        problems.append("README.md's import graph is stale: python scripts/import_graph.py --write")
    print("\n".join(problems) or "import graph: acyclic, README up to date")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
