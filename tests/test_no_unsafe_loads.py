"""CI guard (SECURITY AR-10): application code never loads, unpickles, imports or extracts.

Uploaded model files must stay inert. This test parses every module under ``apps/`` and fails
on real calls such as ``pickle.loads(...)``, ``torch.load(...)``, ``yaml.load(...)`` without a
safe loader, ``importlib.import_module(...)`` or ``archive.extractall(...)``, and on imports of
the unpickling modules. It works on the syntax tree, not on text, so the "how to load" snippets
that ``apps/registry/detection.py`` shows to users (string literals) and comments do not trip
it, while ``import pickle as p; p.loads(x)`` and ``from pickle import loads`` still do.

If code truly needs one of these, do not add an exception here without a security review.
"""

import ast
from pathlib import Path

import pytest

APPS = Path(__file__).resolve().parent.parent / "apps"

BANNED_CALLS = frozenset(
    {
        "pickle.load",
        "pickle.loads",
        "pickle.Unpickler",
        "cloudpickle.load",
        "cloudpickle.loads",
        "dill.load",
        "dill.loads",
        "joblib.load",
        "marshal.load",
        "marshal.loads",
        "shelve.open",
        "numpy.load",
        "torch.load",
        "torch.jit.load",
        "keras.saving.load_model",
        "keras.models.load_model",
        "tensorflow.saved_model.load",
        "mlflow.pyfunc.load_model",
        "yaml.load",
        "yaml.load_all",
        "yaml.full_load",
        "yaml.full_load_all",
        "yaml.unsafe_load",
        "yaml.unsafe_load_all",
        "importlib.import_module",
        "importlib.__import__",
        "builtins.__import__",
        "__import__",
        "shutil.unpack_archive",
    }
)
BANNED_METHODS = frozenset({"extractall"})  # ZipFile/TarFile objects, whatever their name
BANNED_MODULES = frozenset({"pickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"})
SAFE_YAML_LOADERS = frozenset({"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"})


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> fully qualified name, from the module's imports."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]  # `import a.b` binds `a`
                names[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _qualified(func: ast.expr, aliases: dict[str, str]) -> str | None:
    dotted = _dotted(func)
    if dotted is None:
        return None
    head, _, rest = dotted.partition(".")
    resolved = aliases.get(head, head)
    resolved = {"np": "numpy", "tf": "tensorflow"}.get(resolved, resolved)
    return f"{resolved}.{rest}" if rest else resolved


def _uses_safe_loader(call: ast.Call) -> bool:
    for keyword in call.keywords:
        if keyword.arg == "Loader":
            loader = _dotted(keyword.value) or ""
            return loader.rsplit(".", 1)[-1] in SAFE_YAML_LOADERS
    return False


def _call_violation(call: ast.Call, aliases: dict[str, str]) -> str | None:
    name = _qualified(call.func, aliases)
    if name in BANNED_CALLS and not (name == "yaml.load" and _uses_safe_loader(call)):
        return f"call to {name}()"
    if isinstance(call.func, ast.Attribute) and call.func.attr in BANNED_METHODS:
        return f"call to .{call.func.attr}()"
    return None


def _import_violation(node: ast.AST) -> str | None:
    if isinstance(node, ast.Import):
        modules = [alias.name.split(".")[0] for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        modules = [(node.module or "").split(".")[0]]
    else:
        return None
    banned = sorted(BANNED_MODULES.intersection(modules))
    return f"import of {', '.join(banned)}" if banned else None


def violations(source: str, filename: str = "<source>") -> list[str]:
    """Every unsafe load, import or extraction in `source`, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        problem = _import_violation(node)
        if isinstance(node, ast.Call):
            problem = _call_violation(node, aliases)
        if problem:
            found.append(f"{filename}:{node.lineno}: {problem}")
    return found


def _app_modules() -> list[Path]:
    return sorted(path for path in APPS.rglob("*.py") if "migrations" not in path.parts)


def test_application_code_never_loads_user_bytes() -> None:
    modules = _app_modules()
    assert any(path.name == "detection.py" for path in modules)  # the guard sees the app
    found = [
        problem
        for path in modules
        for problem in violations(path.read_text(encoding="utf-8"), str(path.relative_to(APPS)))
    ]
    assert found == [], "unsafe loading in application code:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import pickle\npickle.loads(b'')",
        "import pickle as p\np.load(f)",
        "from pickle import loads\nloads(b'')",
        "from pickle import loads as l\nl(b'')",
        "import torch\ntorch.load('m.pt', weights_only=True)",
        "import torch as t\nt.jit.load('m.pt')",
        "import joblib\njoblib.load('m.joblib')",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
        "import yaml\nyaml.load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "import yaml\nyaml.unsafe_load(text)",
        "from yaml import full_load\nfull_load(text)",
        "import importlib\nimportlib.import_module(name)",
        "from importlib import import_module\nimport_module(name)",
        "__import__(name)",
        "import zipfile\nzipfile.ZipFile(f).extractall('/tmp')",
        "def f(archive):\n    archive.extractall(path)",
        "import shutil\nshutil.unpack_archive('a.zip')",
        "import keras\nkeras.saving.load_model('m.keras')",
        "import tensorflow as tf\ntf.saved_model.load('d')",
        "import mlflow.pyfunc\nmlflow.pyfunc.load_model('m')",
        "import cloudpickle",
        "from dill import loads",
    ],
)
def test_guard_catches_unsafe_calls(source: str) -> None:
    assert violations(source)


@pytest.mark.parametrize(
    "source",
    [
        "snippet = 'import pickle\\nmodel = pickle.load(f)'",
        "snippet = \"torch.load('m.pt')\"",
        "# pickle.loads(data) is never called here\nx = 1",
        'def f():\n    """Never call torch.load() or yaml.load(x) on user bytes."""',
        "import yaml\nyaml.safe_load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.CSafeLoader)",
        "import pickletools\npickletools.genops(data)",
        "import zipfile\nzipfile.ZipFile(f).namelist()",
        "import json\njson.load(f)",
        "template = f'{name}.load()'",
    ],
)
def test_guard_ignores_strings_comments_and_safe_calls(source: str) -> None:
    assert violations(source) == []
