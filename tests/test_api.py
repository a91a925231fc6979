"""The package's shape: the public API (``__all__``, ``dir()``), import cost, and the import rules of
docs/architecture.md (every sentizoo module imports alone, no cycle, sentizoo never imports training)."""
import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

import pytest

import sentizoo

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules(package: str) -> Dict[str, Path]:
    return {_module_name(path): path for path in sorted((ROOT / package).rglob('*.py'))}


def _imports(name: str, path: Path) -> Set[str]:
    """Every module that ``name`` imports, at the top or inside a function, resolved to absolute names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split('.')[:len(name.split('.')) - node.level + (path.name == '__init__.py')]
                module = '.'.join(base + [node.module] if node.module else base)
            else:
                module = node.module
            found.add(module)
            found.update(f'{module}.{alias.name}' for alias in node.names)  # `from . import submodule`
    return found


def _graph(package: str) -> Dict[str, Set[str]]:
    """Module -> the modules of ``package`` it imports (the package itself left out: every submodule loads it)."""
    modules = _modules(package)
    return {name: {m for m in _imports(name, path) if m in modules and m not in (name, package)}
            for name, path in modules.items()}


def test_public_api_and_dir():
    names = dir(sentizoo)
    assert set(sentizoo.__all__) <= set(names)  # the lazy names too, before their first use
    for name in sentizoo.__all__:
        assert getattr(sentizoo, name) is not None, name
    assert callable(sentizoo.predict) and callable(sentizoo.amalgamate) and sentizoo.TrainOptions().lr > 0
    for internal in ('stage_features', 'needed_teachers', 'AmalgamationOutput', 'list_images', 'ImageFiles',
                     'image_csv', 'load_teachers', 'init_target_from'):
        assert internal not in sentizoo.__all__
        with pytest.raises(AttributeError):
            getattr(sentizoo, internal)


def test_import_sentizoo_stays_light():
    script = ('import sys, sentizoo\n'
              'loaded = sorted(m for m in sys.modules if m.split(".")[0] == "training" or m in '
              '("sentizoo.engine", "sentizoo.inference", "sentizoo.amalgamation", "sentizoo.cli", "sentizoo.onnx", '
              '"matplotlib", "scipy"))\n'
              'assert not loaded, loaded\n'
              'import timm; assert "amalgamator_senti_resnet50" in timm.list_models("amalgamator_*")\n')
    out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_every_sentizoo_module_imports_alone():
    """Each module in a process that has imported no sentizoo module yet (torch and timm preloaded, then one fork
    per module): an import that works only after another module has run would fail here."""
    script = ('import os, sys, importlib, torch, timm\n'
              'failed = []\n'
              'for name in sys.argv[1:]:\n'
              '    pid = os.fork()\n'
              '    if pid == 0:\n'
              '        try:\n'
              '            importlib.import_module(name)\n'
              '        except BaseException as e:\n'
              '            print(name, repr(e), flush=True)\n'
              '            os._exit(1)\n'
              '        os._exit(0)\n'
              '    if os.waitpid(pid, 0)[1]:\n'
              '        failed.append(name)\n'
              'assert not failed, failed\n')
    modules = [m for m in _modules('sentizoo') if m != 'sentizoo.__main__']  # __main__ runs the CLI
    out = subprocess.run([sys.executable, '-c', script, *modules], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize('package', ['sentizoo', 'training'])
def test_no_import_cycle(package):
    graph = _graph(package)
    assert graph, package
    done: Set[str] = set()

    def visit(name: str, path: tuple) -> None:
        if name in path:
            pytest.fail(f'import cycle: {" -> ".join(path[path.index(name):] + (name,))}')
        if name not in done:
            for imported in graph[name]:
                visit(imported, path + (name,))
            done.add(name)

    for name in graph:
        visit(name, ())


def test_sentizoo_never_imports_training():
    for name, path in _modules('sentizoo').items():
        training = sorted(m for m in _imports(name, path) if m.split('.')[0] in ('training', 'benchmarks', 'tests'))
        assert not training, f'{name} imports {training}'


def test_training_uses_no_private_name_of_sentizoo():
    for name, path in _modules('training').items():
        private = sorted(f'{node.module}.{alias.name}' for node in ast.walk(ast.parse(path.read_text()))
                         if isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] == 'sentizoo'
                         for alias in node.names if alias.name.startswith('_'))
        assert not private, f'{name} imports {private}'
