"""The project's floors: melanoma_screen at the bottom, data_prep on it, the scripts on top.

Every import statement is read from the source (function bodies included, since a
lazy import is an arrow all the same), so the test sees what the code asks for,
not what happened to be imported in this process.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("melanoma_screen", "data_prep")
TOP_LEVEL_SCRIPTS = {path.stem for path in REPO_ROOT.glob("*.py")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """The project modules (and packages) that the file imports, as absolute dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            # `from . import metrics` imports a module, `from .metrics import x` a name: keep both readings.
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PACKAGES or name in TOP_LEVEL_SCRIPTS}


def project_modules(package: str) -> dict[str, Path]:
    return {module_name(path): path for path in sorted((REPO_ROOT / package).rglob("*.py"))}


def known_module(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name refers to: itself, or its parent when the last part is a name inside it."""
    if name in modules:
        return name
    parent = name.rpartition(".")[0]
    return parent if parent in modules else None


def import_graph(package: str) -> dict[str, set[str]]:
    modules = project_modules(package)
    graph = {}
    for name, path in modules.items():
        targets = {known_module(target, modules) for target in imported_modules(path)}
        graph[name] = {target for target in targets if target and target != name and target != package}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walk_sees_lazy_and_relative_imports():
    # inference imports the input check at the top, relatively; the ground floor's own graph must show it.
    assert "melanoma_screen.input_check" in import_graph("melanoma_screen")["melanoma_screen.inference"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle(package):
    cycle = find_cycle(import_graph(package))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_melanoma_screen_imports_nothing_above_it():
    upward = {}
    for name, path in project_modules("melanoma_screen").items():
        above = {target for target in imported_modules(path) if not target.startswith("melanoma_screen")}
        if above:
            upward[name] = sorted(above)
    assert not upward, f"melanoma_screen imports data_prep or a top-level script: {upward}"


def test_data_prep_imports_no_top_level_script():
    upward = {}
    for name, path in project_modules("data_prep").items():
        above = {target for target in imported_modules(path) if target.split(".")[0] in TOP_LEVEL_SCRIPTS}
        if above:
            upward[name] = sorted(above)
    assert not upward, f"data_prep imports a top-level script: {upward}"


def project_sources() -> dict[str, Path]:
    """Every Python file of the project outside tests/, by its path from the repository root."""
    return {path.relative_to(REPO_ROOT).as_posix(): path for path in sorted(REPO_ROOT.rglob("*.py"))
            if path.relative_to(REPO_ROOT).parts[0] not in ("tests", ".git") and ".venv" not in path.parts}


def calls(path: Path, accept) -> list[int]:
    """Line numbers of the calls in a file that `accept(node)` picks."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and accept(node)]


def is_from_pretrained(node: ast.Call) -> bool:
    return isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained"


def is_architecture_test(node: ast.Call) -> bool:
    return (isinstance(node.func, ast.Name) and node.func.id == "hasattr" and len(node.args) == 2
            and isinstance(node.args[1], ast.Constant) and node.args[1].value in ("vit", "levit"))


def test_the_checks_below_see_the_calls_they_look_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("m = Auto.from_pretrained('model')\nif hasattr(m, 'levit'):\n    pass\nhasattr(m, 'config')\n")
    assert calls(sample, is_from_pretrained) == [1]
    assert calls(sample, is_architecture_test) == [2]


def test_only_model_folder_reads_a_model_folder_with_from_pretrained():
    allowed = {"melanoma_screen/model_folder.py"}
    found = {name: lines for name, path in project_sources().items()
             if name not in allowed and (lines := calls(path, is_from_pretrained))}
    assert not found, f"from_pretrained outside melanoma_screen/model_folder.py (call model_folder instead): {found}"


def test_only_the_architecture_registry_tells_a_vit_from_a_levit():
    allowed = {"melanoma_screen/architectures.py"}
    found = {name: lines for name, path in project_sources().items()
             if name not in allowed and (lines := calls(path, is_architecture_test))}
    assert not found, f'hasattr(model, "vit"/"levit") outside melanoma_screen/architectures.py (use adapter_for): {found}'


def test_app_is_shaped_like_a_gradio_demo():
    # Views and routes live in melanoma_screen (app_views, app_routes); app.py keeps the model, the
    # analysis, the layout and the wiring, readable top to bottom.
    lines = (REPO_ROOT / "app.py").read_text(encoding="utf-8").count("\n")
    assert lines < 350, f"app.py has {lines} lines: move views or routes into melanoma_screen"


# ------------------------------------------------------------------ one upload, page to JSON

# What tests/test_structure.py's upload trace runs, in a process of its own (importing app.py loads a model and
# builds the page). It prints the project functions one real upload crosses, as JSON; see test_one_upload_... below.
UPLOAD_TRACE = r'''
import inspect, json, os, sys
from pathlib import Path

sys.path.insert(0, os.getcwd())
import app

app.heatmap = lambda picture: None  # after the JSON, and it would wait for PyTorch: not part of the path
calls, stack, marks = [], [], {}
state = {"done": False, "depth": 0, "deepest": []}


def name_of(frame):
    """module.qualname of a function written in app.py or melanoma_screen/, else None.

    Comprehensions and lambdas are expressions read in their function; a dataclass's __init__ is written by
    Python (its code comes from no file of the project).
    """
    module, code = frame.f_globals.get("__name__", ""), frame.f_code
    if not (module == "app" or module.startswith("app_") or module.startswith("melanoma_screen.")):
        return None
    if code.co_name.startswith("<") or not os.path.isfile(code.co_filename):
        return None
    return module.rpartition(".")[2] + "." + frame.f_code.co_qualname


def is_property(frame):
    owner, _, attribute = frame.f_code.co_qualname.rpartition(".")
    cls = frame.f_globals.get(owner)
    found = inspect.getattr_static(cls, attribute, None) if isinstance(cls, type) else None
    return isinstance(found, property) or type(found).__name__ == "cached_property"


def profile(frame, event, arg):
    if state["done"]:
        return
    if event == "call":
        name = name_of(frame)
        if name is None:
            return
        caller = stack[-1][1] if stack else None
        calls.append({"name": name, "caller": caller, "property": is_property(frame)})
        stack.append((frame, name))
        if len(stack) > state["depth"]:
            state["depth"], state["deepest"] = len(stack), [entry[1] for entry in stack]
        if name in ("calibration.risk_level", "inference.Prediction.to_json"):
            marks[name] = [entry[1] for entry in stack[:-1]]
    elif event == "return" and stack and stack[-1][0] is frame:
        stack.pop()
        if frame.f_code.co_qualname == "Prediction.to_json":
            state["done"] = True  # the JSON answer is made


picture = str(sorted(Path("examples").glob("*.jpg"))[0])
app.show_analysis(picture, "en")  # once before: first-call work (BLAS set-up, caches) is not the path
sys.setprofile(profile)
app.show_analysis(picture, "en")
sys.setprofile(None)
print(json.dumps({"calls": calls, "marks": marks, "depth": state["depth"], "deepest": state["deepest"]}))
'''

# The functions one upload crosses, from the page handler to its JSON (docs/app.md lists them):
#   the route: the functions on the call stack when the risk level is chosen and when the JSON is made
#   (calibration.risk_level, Prediction.to_json), the ones a reader reads line by line;
#   and every function a route function calls. What those call in turn is theirs, as a library's
#   insides would be (Preprocess's resizing, the input check's distances).
# Not counted: properties (attribute reads), StageClock (the CPU-time accounting of /api/timings), comprehensions
# and lambdas (expressions inside their function), and code Python writes (a dataclass's __init__).
# The trace stops when the JSON is made: the page's view and heat-map come after it.
MAX_UPLOAD_FUNCTIONS = 8
# And no call nests deeper than this under the page handler, so that layers cannot hide inside a step.
MAX_UPLOAD_DEPTH = 8


def crossed_functions(trace: dict) -> list[str]:
    route = {"app.show_analysis"} | {name for stack in trace["marks"].values() for name in stack}
    crossed = []
    for call in trace["calls"]:
        name = call["name"]
        counted = name in route or call["caller"] in route
        if counted and not call["property"] and ".StageClock." not in name and name not in crossed:
            crossed.append(name)
    return crossed


@pytest.fixture(scope="module")
def upload_trace() -> dict:
    import json
    import os
    import subprocess
    import sys

    if not (REPO_ROOT / "model" / "model.safetensors").is_file():
        pytest.skip("the shipped model is not in model/")
    env = {**os.environ, "MODEL_ID": str(REPO_ROOT / "model"), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run([sys.executable, "-c", UPLOAD_TRACE], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_crossed_functions_follow_the_route_and_stop_at_its_steps():
    trace = {"marks": {"calibration.risk_level": ["app.show_analysis", "app.analyse", "m.predict"]},
             "calls": [{"name": "app.analyse", "caller": "app.show_analysis", "property": False},
                       {"name": "m.predict", "caller": "app.analyse", "property": False},
                       {"name": "m.step", "caller": "m.predict", "property": False},
                       {"name": "m.inside_the_step", "caller": "m.step", "property": False},
                       {"name": "m.Result.ok", "caller": "m.predict", "property": True},
                       {"name": "inference.StageClock.stage", "caller": "m.predict", "property": False}]}
    assert crossed_functions(trace) == ["app.analyse", "m.predict", "m.step"]


def test_one_upload_crosses_few_functions_from_the_page_to_its_json(upload_trace):
    crossed = crossed_functions(upload_trace)
    # The trace saw the whole way: the page handler, the shared analysis, the model, the JSON.
    assert {"app.analyse", "inference.ScreeningModel.predict_decoded", "inference.Prediction.to_json"} <= set(crossed)
    assert len(crossed) <= MAX_UPLOAD_FUNCTIONS, (
        f"one upload crosses {len(crossed)} functions (at most {MAX_UPLOAD_FUNCTIONS}): " + " -> ".join(crossed))
    deepest = " -> ".join(upload_trace["deepest"])
    assert upload_trace["depth"] <= MAX_UPLOAD_DEPTH, (
        f"project calls nest {upload_trace['depth']} deep under the page handler: {deepest}")
    # docs/app.md lists the functions; a list that no longer matches the code says so here.
    documented = (REPO_ROOT / "docs" / "app.md").read_text(encoding="utf-8")
    missing = [name for name in crossed if f"`{name.split('.', 1)[1]}`" not in documented]
    assert not missing, f"docs/app.md does not list {missing} among the functions one upload crosses"


def _puts_the_root_on_the_path(node: ast.stmt) -> bool:
    """sys.path.insert(...) itself, or benchmarks' `import common`/`from common import`, which does it."""
    if isinstance(node, ast.Import) and any(alias.name == "common" for alias in node.names):
        return True
    if isinstance(node, ast.ImportFrom) and node.module == "common" and not node.level:
        return True
    return "sys.path.insert" in ast.unparse(node)


@pytest.mark.parametrize("script", sorted(str(path.relative_to(REPO_ROOT)) for folder in ("experiments", "benchmarks")
                                          for path in (REPO_ROOT / folder).glob("*.py")))
def test_a_script_below_the_root_can_be_run_as_its_docstring_says(script):
    """`python experiments/x.py` puts experiments/, not the root, on sys.path: a module-level import of
    the project's packages must come after the line that adds the root."""
    body = ast.parse((REPO_ROOT / script).read_text(encoding="utf-8")).body
    for node in body:
        if _puts_the_root_on_the_path(node):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(name.split(".")[0] in PACKAGES for name in names), \
                f"{script}:{node.lineno} imports {names} before adding the repository root to sys.path"
