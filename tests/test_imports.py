"""The import directions of DESIGN.md, enforced.

Two checks: a static one over every module's source (which of our packages and which third-party
libraries each package may import, and which only lazily inside a function), and a dynamic one that
imports the light packages in a fresh interpreter and asserts torch was not pulled in.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"nanogpt", "runner", "store", "reports", "tui"}

# Which of our packages each package may import (at any depth in the file).
ALLOWED_OURS = {
    "nanogpt": {"nanogpt"},
    "store": {"store"},
    "runner": {"runner", "store", "nanogpt"},
    "reports": {"reports", "store"},
    "tui": {"tui", "store", "runner"},
}
# nanogpt modules the runner may import at module level: the config/event schema, the data format and the
# GPU lock protocol, none of which import torch. Anything else of nanogpt (the model) only inside a function.
RUNNER_TOP_LEVEL_NANOGPT = {
    "nanogpt",
    "nanogpt.config",
    "nanogpt.events",
    "nanogpt.gpu_lock",
    "nanogpt.shards",
    "nanogpt.tokenizer",
}
# The runner's public API, the only runner modules the TUI may import (DESIGN: tui -> runner's public API).
TUI_RUNNER_MODULES = {"runner", "runner.api", "runner.gpus"}
# Third-party libraries nanogpt may import at module level; `wandb` only inside a function.
NANOGPT_THIRD_PARTY = {"torch", "numpy", "tiktoken"}
NANOGPT_LAZY_THIRD_PARTY = {"wandb"}
# triton (which ships with torch's CUDA builds) only in the fused loss's and MLP's modules, which the rest of
# nanogpt imports only inside a function, on CUDA: nanogpt runs without triton (a CPU-only torch has none).
NANOGPT_TRITON_MODULES = {"fused_loss", "fused_mlp"}
# nanogpt modules that must stay free of torch so the runner can import them cheaply.
TORCH_FREE_NANOGPT = {"config", "events", "gpu_lock", "shards", "tokenizer"}
STDLIB = set(sys.stdlib_module_names)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top_level and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((alias.name, top_level) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, top_level))
            elif isinstance(child, ast.ImportFrom) and child.level > 0:
                # Relative imports stay inside the package by construction.
                continue
            # `if TYPE_CHECKING:` blocks never run.
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            visit(child, inner)

    visit(tree, True)
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(OURS))
def test_import_directions(package: str) -> None:
    problems = []
    for path in _modules(package):
        rel = path.relative_to(ROOT)
        for module, top_level in _imports(path):
            head = module.split(".")[0]
            if head in OURS and head not in ALLOWED_OURS[package]:
                problems.append(f"{rel}: imports {module} ({package} may not import {head})")
            if (
                package == "runner"
                and head == "nanogpt"
                and top_level
                and module not in RUNNER_TOP_LEVEL_NANOGPT
            ):
                problems.append(f"{rel}: imports {module} at module level (only inside a function)")
            if package == "nanogpt" and head not in OURS and head not in STDLIB:
                lazy_ok = head in NANOGPT_LAZY_THIRD_PARTY and not top_level
                lazy_ok |= head == "triton" and path.stem in NANOGPT_TRITON_MODULES
                if head not in NANOGPT_THIRD_PARTY and not lazy_ok:
                    problems.append(f"{rel}: imports {module} (nanogpt uses torch, numpy, tiktoken only)")
            triton_module = module.removeprefix("nanogpt.") in NANOGPT_TRITON_MODULES
            if package == "nanogpt" and head == "nanogpt" and triton_module and top_level:
                problems.append(f"{rel}: imports {module} at module level (it needs triton)")
            if package == "tui" and head == "runner" and module not in TUI_RUNNER_MODULES:
                problems.append(f"{rel}: imports {module} (the TUI uses runner.api and runner.gpus only)")
            if package in {"store", "tui", "reports"} and head == "torch":
                problems.append(f"{rel}: imports torch")
            if package == "nanogpt" and path.stem in TORCH_FREE_NANOGPT and head == "torch":
                problems.append(f"{rel}: imports torch (the runner imports this module)")
    assert not problems, "\n".join(problems)


def test_light_packages_do_not_load_torch() -> None:
    """The CLI, store, reports and TUI (every screen) start without paying for torch."""
    names = ["runner", "runner.cli", "store", "reports", "tui", "tui.app"]
    names += [
        f"nanogpt.{stem}" for stem in sorted(TORCH_FREE_NANOGPT) if (ROOT / "nanogpt" / f"{stem}.py").exists()
    ]
    code = "import importlib, sys\n"
    code += f"for name in {names!r}:\n    importlib.import_module(name)\n"
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {names} loaded torch"


def test_the_checker_sees_violations(tmp_path: Path) -> None:
    """The static check itself must catch a forbidden import (guards against a checker that finds nothing)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom runner import cli\n\ndef f():\n    import wandb\n")
    assert _imports(bad) == [("torch", True), ("runner", True), ("wandb", False)]
