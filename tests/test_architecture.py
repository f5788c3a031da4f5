"""The package's shape, checked: layers and no cycles (import-linter), a torch-free bottom layer, module-top imports,
private diffusers/accelerate/torch names only in `_compat`, small functions, and one public API."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffusers_wan22"
MODULES = sorted(PACKAGE.rglob("*.py"))
# Imports allowed inside functions: optional, heavy backends that most users never load (each with a comment).
OPTIONAL_BACKENDS = {"torchao", "gguf", "peft", "gradio", "cv2", "sla", "spas_sage_attn", "sageattention", "triton",
                     "sparse_linear_attention"}
# The class-attribute protocol diffusers' / transformers' base classes document for subclasses to set, and our own
# bookkeeping attributes: reading these is not reaching into a library's internals.
PROTOCOL_ATTRS = {
    "_no_split_modules", "_keep_in_fp32_modules", "_repeated_blocks", "_skip_layerwise_casting_patterns",
    "_keys_to_ignore_on_load_unexpected", "_supports_gradient_checkpointing", "_optional_components",
    "_callback_tensor_inputs", "_exclude_from_cpu_offload", "_lora_loadable_modules", "_cp_plan",
    "_group_offload_block_modules", "_variants", "_wan22_precision", "_EXPORTS",
}
MAX_FUNCTION_LINES = 80


def _trees():
    for path in MODULES:
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_layer_contract_and_no_cycles_hold():
    """`lint-imports` (import-linter) checks the layer order, acyclic siblings and the torch-free core
    (pyproject.toml [tool.importlinter]); imports inside functions count."""
    script = Path(sys.executable).parent / "lint-imports"  # installed by the `test` extra next to this python
    proc = subprocess.run([str(script) if script.exists() else "lint-imports", "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize("module", ["diffusers_wan22", "diffusers_wan22.core.memory_planner",
                                    "diffusers_wan22.core.folders", "diffusers_wan22.commands.parser",
                                    "diffusers_wan22.commands.validate"])
def test_light_modules_import_no_torch(module):
    code = (f"import sys, {module}; heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy') "
            "if m in sys.modules); print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"import {module} loaded {proc.stdout.strip()} {proc.stderr[-500:]}"


def test_imports_sit_at_module_top():
    """Late imports only for optional heavy backends (the layer rule counts them too)."""
    late = []
    for path, tree in _trees():
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    if any(n.split(".")[0] not in OPTIONAL_BACKENDS for n in names) or getattr(node, "level", 0):
                        late.append(f"{path.relative_to(ROOT)}:{node.lineno} {names}")
    assert not late, "imports inside functions: " + ", ".join(late)


def _private_uses(tree: ast.AST) -> list[tuple[int, str]]:
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            root = node.module.split(".")[0]
            if root in ("diffusers", "accelerate", "torch", "transformers", "peft"):
                uses += [(node.lineno, a.name) for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("__"):
            owner = node.value
            is_own = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            is_super = isinstance(owner, ast.Call) and getattr(owner.func, "id", "") == "super"
            if not (is_own or is_super) and node.attr not in PROTOCOL_ATTRS:
                uses.append((node.lineno, node.attr))
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("getattr", "hasattr", "setattr")
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)):
            name = str(node.args[1].value)
            on_self = isinstance(node.args[0], ast.Name) and node.args[0].id in ("self", "cls")
            if name.startswith("_") and not name.startswith("__") and not on_self and name not in PROTOCOL_ATTRS:
                uses.append((node.lineno, name))
    return uses


def test_private_library_names_only_in_compat():
    found = []
    for path, tree in _trees():
        if path.name == "_compat.py":
            continue
        # our own private helpers (module-level `_name`) may be used anywhere in their module
        own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        found += [f"{path.relative_to(ROOT)}:{line} {name}" for line, name in _private_uses(tree) if name not in own]
    assert not found, "private names outside _compat.py: " + ", ".join(found)


def test_no_function_over_80_lines():
    long = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 80 lines: " + ", ".join(long)


def test_public_api_resolves_and_has_no_private_names():
    import diffusers_wan22

    missing = [name for name in diffusers_wan22.__all__ if getattr(diffusers_wan22, name, None) is None]
    assert not missing
    assert not [n for n in diffusers_wan22.__all__ if n.startswith("_")]


def test_user_facing_code_imports_from_the_top_level_only():
    """README, examples and docs use `from diffusers_wan22 import ...`, never a submodule."""
    files = [ROOT / "README.md", *sorted((ROOT / "examples").iterdir()), *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "docs").glob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]
    deep = []
    for path in files:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"from diffusers_wan22\.\w+ import|import diffusers_wan22\.\w+", line):
                deep.append(f"{path.relative_to(ROOT)}:{i}")
    assert not deep, "submodule imports in user-facing code: " + ", ".join(deep)


def test_every_module_is_in_the_architecture_map():
    """docs/architecture.md has one line per module: a new or moved module must be added there."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", doc, re.M))
    modules = {str(p.relative_to(PACKAGE)) for p in MODULES}
    assert modules - listed == set(), f"modules missing from docs/architecture.md: {sorted(modules - listed)}"
    assert listed - modules == set(), f"docs/architecture.md lists modules that do not exist: {sorted(listed - modules)}"
