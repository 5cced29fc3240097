"""The package's layers import one way: every ``ddpm`` import points to the module's own layer or one
below it (the order is ``ddpm.LAYERS``, written once beside the package docstring), the import graph
has no cycles, and no function hides an import, except of the optional or slow-to-import third-party
packages listed here with their reason."""

from __future__ import annotations

import ast
from pathlib import Path

import ddpm

SRC = Path(ddpm.__file__).parent
# Third-party modules a function may import where it needs them, and why.
DEFERRED = {
    "triton": "optional: only on CUDA, for torch.compile",
    "torch.utils.tensorboard": "optional: --logger tensorboard",
    "datasets": "optional: hf: data sets",
    "torch_fidelity": "the FID Inception network, only when asked for",
    "torchvision": "slow to import, and only downloads use it",
    "torchmetrics": "slow to import, and only the metrics use it",
    "matplotlib": "slow to import, and only pictures use it",
    "sklearn": "slow to import, and only the digits use it",
    "gradio": "optional: the [demo] extra",
    "webdataset": "optional: the [shards] extra, for sets larger than memory",
    "wandb": "optional: --logger wandb",
    "transformers": "optional: a frozen CLIP or T5 text encoder (--text-encoder clip|t5)",
}


def module_name(path: Path) -> str:
    return ".".join(("ddpm", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")


def layer_of(module: str) -> int:
    """Index in ddpm.LAYERS of a ddpm module; the package itself and ``ddpm.__main__`` sit on top."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return len(ddpm.LAYERS)
    assert parts[1] in ddpm.LAYERS, f"{module} belongs to no layer of ddpm.LAYERS"
    return ddpm.LAYERS.index(parts[1])


def module_level(body: list[ast.stmt]):
    """The statements run at import time: the module body and its if/try blocks (``TYPE_CHECKING``)."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            yield from module_level(node.body + node.orelse + getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                yield from module_level(handler.body)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import statement; ``from ddpm import x`` names
    module ddpm.x when x is one."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in module_level(tree.body)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [node.module]
            if node.module == "ddpm":
                targets = [f"ddpm.{a.name}" if (SRC / a.name).with_suffix(".py").exists() or (SRC / a.name).is_dir()
                           else "ddpm" for a in node.names]
            out += [(t, node.lineno, id(node) in top) for t in targets]
    return out


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_imports_point_down_or_sideways():
    upward = []
    for name, path in MODULES.items():
        for target, line, _ in imports(path):
            if target.split(".")[0] == "ddpm" and layer_of(target) > layer_of(name):
                upward.append(f"{path.relative_to(SRC.parent)}:{line} {name} imports {target} from a higher layer")
    assert not upward, "\n".join(upward)


def test_no_function_local_imports_but_the_deferred_ones():
    hidden = []
    for name, path in MODULES.items():
        for target, line, at_top in imports(path):
            if not at_top and not any(target == d or target.startswith(d + ".") for d in DEFERRED):
                hidden.append(f"{path.relative_to(SRC.parent)}:{line} imports {target} inside a function")
    assert not hidden, "\n".join(hidden)


def test_the_import_graph_has_no_cycles():
    graph = {name: {t for t, _, _ in imports(path) if t in MODULES and t != name} for name, path in MODULES.items()}
    # A package's __init__ may re-export its modules; that edge is not a cycle of the layers.
    graph = {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [node, nxt]))
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_layer_test_sees_an_upward_import(tmp_path):
    """The checker itself: a module of a low layer importing the pipeline is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from ddpm.pipeline import Run\n\ndef f():\n    from ddpm.config import RunConfig\n")
    found = imports(bad)
    assert ("ddpm.pipeline", 1, True) in found and ("ddpm.config", 4, False) in found
    assert layer_of("ddpm.pipeline.run") > layer_of("ddpm.diffusion.schedule")


def test_nothing_in_src_unpickles():
    """Weights load with safetensors or torch.load(weights_only=True); no pickle.load, no allow_pickle=True."""
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if func in ("pickle.load", "pickle.loads", "cloudpickle.load", "dill.load") or (
                    func.endswith("torch.load") and keywords.get("weights_only") != "True") or (
                    func.endswith("load") and keywords.get("allow_pickle") == "True"):
                found.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {ast.unparse(node)[:80]}")
    assert not found, "\n".join(found)
