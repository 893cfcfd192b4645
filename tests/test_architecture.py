"""The layer order of pilotlogger/ (docs/architecture.md), checked on every run.

Each module sits in one layer and may import only modules of lower layers: no upward
import, no import between modules of the same layer, hence no cycle.  Every import
counts — at the top of a module or lazily inside a function, relative or absolute —
and so does the sink factory's table of sink modules (``sinks.MODULES``), which it
imports by name.  A new module must be given a layer here and a line in the document.
"""

import ast
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "pilotlogger"

#: Lowest first.  Keep docs/architecture.md ("Layers") in step.
LAYERS = (
    ("secrets", {"redact"}),
    (
        "foundations",
        {
            "version",
            "console",
            "events",
            "x509",
            "power",
            "stompcodec",
            "tls",
            "dedup",
            "cli_help",
            "peeruid",
            "concurrency",
        },
    ),
    ("state machines and storage", {"stompsession", "spool", "sink", "timeline", "httpd", "echoes"}),
    ("receiving rules", {"diracform"}),
    ("views", {"timeline_html"}),
    ("configuration", {"config"}),
    ("sinks and node facts", {"stdoutsink", "stompclient", "https", "probes", "serve", "relay", "pilotcred"}),
    ("sink factory", {"sinks"}),
    ("shipping", {"ship"}),
    ("recording", {"recorder", "relayrun"}),
    ("entry points", {"wrapper", "handler", "consumer", "doctor"}),
    ("command line", {"cli"}),
    ("package", {"__init__", "__main__"}),
)


def layer_of(module: str) -> int:
    for i, (_, modules) in enumerate(LAYERS):
        if module in modules:
            return i
    raise AssertionError("pilotlogger/%s.py has no layer: add it to LAYERS and docs/architecture.md" % module)


def imports_of(path: Path) -> dict:
    """{imported module of ours: first line importing it}, lazy imports included."""
    found = {}

    def add(name, node):
        if name:
            name = name.split(".")[0]
            if not (PACKAGE / (name + ".py")).exists():
                name = "__init__"  # `from . import __version__`: a name the package itself defines
            found.setdefault(name, node.lineno)

    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    add(node.module, node)
                else:
                    for alias in node.names:
                        add(alias.name, node)
            elif node.level == 0 and (node.module or "").split(".")[0] == "pilotlogger":
                rest = node.module.split(".", 1)[1:] or [alias.name for alias in node.names]
                for name in rest:
                    add(name, node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pilotlogger."):
                    add(alias.name.split(".", 1)[1], node)
        elif isinstance(node, ast.Assign) and path.stem == "sinks":
            if any(isinstance(t, ast.Name) and t.id == "MODULES" for t in node.targets):
                for value in node.value.values:  # the modules the factory imports by name
                    add(value.value if hasattr(value, "value") else value.s, node)
    return found


def violations() -> list:
    problems = []
    for path in sorted(PACKAGE.glob("*.py")):
        here = layer_of(path.stem)
        for target, line in sorted(imports_of(path).items()):
            there = layer_of(target)
            if there >= here:
                kind = "a cycle-prone import within" if there == here else "an upward import into"
                problems.append(
                    "pilotlogger/%s:%d imports %s: %s layer %r (from %r)"
                    % (path.name, line, target, kind, LAYERS[there][0], LAYERS[here][0])
                )
    return problems


def test_every_import_goes_down_the_layers():
    problems = violations()
    assert not problems, "layer contract broken (docs/architecture.md):\n" + "\n".join(problems)


def test_every_module_has_a_layer_and_a_place_in_the_document():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    placed = set().union(*(m for _, m in LAYERS))
    assert modules == placed, "unplaced: %s; gone: %s" % (sorted(modules - placed), sorted(placed - modules))
    assert [m for m in sorted(modules) if "`%s.py`" % m not in doc] == []


def test_the_check_sees_lazy_and_absolute_imports(tmp_path):
    """The checker itself: an import inside a function and an absolute one are both found."""
    source = tmp_path / "probe.py"
    source.write_text(
        "import pilotlogger.spool\n\ndef f():\n    from .cli import main\n    from pilotlogger import ship\n"
        "    from . import __version__\n"
    )
    assert imports_of(source) == {"spool": 1, "cli": 4, "ship": 5, "__init__": 6}
