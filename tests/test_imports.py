"""The package's import graph: every module imports, no cycle (function-level imports count),
and the training core never imports the tools around it (imports point from tools to core);
launch.py imports no tool, the package no `configs`, and one module owns the workdir's names."""

import ast
import importlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'alexnet_jax'


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def _imports(path: pathlib.Path) -> set:
    """alexnet_jax modules `path` imports anywhere in its body (top level or in a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from alexnet_jax import seeds`: the module seeds; `from x.parallel import AXIS`: x.parallel.
            names = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in MODULES
                     else node.module for a in node.names]
        else:
            continue
        found.update(n for n in names if n in MODULES and n != 'alexnet_jax')
    return found


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


@pytest.mark.parametrize('name', sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)


def _cycles(graph) -> list:
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = 'open'
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 'done'
    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return [' -> '.join(c) for c in cycles]


def test_no_import_cycle_in_the_core():
    core = {n: {m for m in deps if not m.startswith('alexnet_jax.tools')}
            for n, deps in GRAPH.items() if not n.startswith('alexnet_jax.tools')}
    assert not _cycles(core)


def test_no_import_cycle():
    assert not _cycles(GRAPH)


def test_the_graph_sees_function_level_imports():
    # The walk is what the two tests above rely on: a known function-level import is found.
    assert 'alexnet_jax.seed_workers' in GRAPH['alexnet_jax.tools.sweep']


def test_core_does_not_import_tools():
    core = [n for n in GRAPH if not n.startswith('alexnet_jax.tools')]
    bad = {n: sorted(m for m in GRAPH[n] if m.startswith('alexnet_jax.tools')) for n in core}
    assert not {n: m for n, m in bad.items() if m}


LAUNCH = PACKAGE.parent / 'launch.py'


def test_launch_imports_no_tool_and_the_package_no_configs():
    assert not {m for m in _imports(LAUNCH) if m.startswith('alexnet_jax.tools')}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        modules += [n.module or '' for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in modules if m.split('.')[0] == 'configs'], name
        assert 'sys.path' not in path.read_text(), name


@pytest.mark.parametrize('filename', ['results.json', 'failed.json', 'point.json',
                                      'metrics.jsonl', 'config.json'])
def test_only_the_workdir_module_names_its_files(filename):
    """Every other module asks alexnet_jax.workdirs for a path or a record."""
    owners = [str(p.relative_to(PACKAGE.parent)) for p in [*MODULES.values(), LAUNCH]
              if filename in p.read_text()]
    assert owners == ['alexnet_jax/workdirs.py']

