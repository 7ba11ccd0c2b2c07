"""Which Keras backend ``import multinet`` and the ``multinet`` command run on.

Keras settles its backend when it is first imported, so most checks run a
fresh Python with a temporary HOME and KERAS_HOME and no KERAS_BACKEND, as a
user's first run after ``pip install -e ".[jax]"``. Each nox session installs
one backend, which is exactly the case under test: on jax and torch Keras'
default (tensorflow) is missing and multinet picks the installed one; on
tensorflow nothing may change.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import own_lines

from multinet import backend_select

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
SUPPORTED = ("jax", "torch", "tensorflow")
INSTALLED = [name for name in SUPPORTED if importlib.util.find_spec(name) is not None]
MISSING = [name for name in SUPPORTED if name not in INSTALLED]
# With no choice of the user's, Keras runs on its default, tensorflow, when it
# is installed; otherwise multinet picks jax, then torch.
EXPECTED = "tensorflow" if "tensorflow" in INSTALLED else INSTALLED[0]
PICKED = EXPECTED != "tensorflow"
NOTICE = (f"multinet: Keras' default backend 'tensorflow' is not installed; using '{EXPECTED}' "
          f"(set KERAS_BACKEND to choose)")
VALID_NAMES = "tensorflow, jax, torch, openvino, numpy"
KERAS_WRITES = {"floatx": "float32", "epsilon": 1e-07, "backend": "tensorflow",
                "image_data_format": "channels_last"}
needs_missing = pytest.mark.skipif(not MISSING, reason="every backend is installed here")


def fresh_python(tmp_path, *, code=None, args=(), keras_json=None, env=None, path=()):
    """A new Python (``-c code`` or ``-m multinet args``) as on a fresh machine."""
    home, keras_home = tmp_path / "home", tmp_path / "keras_home"
    home.mkdir(exist_ok=True)
    keras_home.mkdir(exist_ok=True)
    if keras_json is not None:
        text = keras_json if isinstance(keras_json, str) else json.dumps(keras_json, indent=4)
        (keras_home / "keras.json").write_text(text)
    environ = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    pythonpath = [*map(str, path), str(ROOT), environ.get("PYTHONPATH", "")]
    environ.update(HOME=str(home), KERAS_HOME=str(keras_home), TF_CPP_MIN_LOG_LEVEL="2",
                   MULTINET_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, pythonpath)),
                   **(env or {}))
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "multinet", *args]
    return subprocess.run(command, env=environ, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def suggested(line: str) -> set[str]:
    return set(re.findall(r"KERAS_BACKEND=(\w+)", line))


def one_error_line(result, status=1) -> str:
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = own_lines(result.stderr)
    assert len(lines) == 1, lines
    return lines[0]


# --- Keras' default backend ---------------------------------------------------


def test_import_multinet_picks_an_installed_backend_when_the_default_is_missing(tmp_path):
    result = fresh_python(tmp_path, code="import multinet, keras; print(keras.backend.backend())")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [EXPECTED]
    assert own_lines(result.stderr) == ([NOTICE] if PICKED else [])
    # The file Keras wrote is the one multinet takes for Keras' own: the next run picks again.
    written = json.loads((tmp_path / "keras_home" / "keras.json").read_text())
    assert written == KERAS_WRITES == backend_select.KERAS_DEFAULT_CONFIG


def test_the_command_runs_on_the_pick_with_the_keras_json_keras_wrote(tmp_path):
    result = fresh_python(tmp_path, args=["list"], keras_json=KERAS_WRITES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "squeezenet1_1" in result.stdout and "Traceback" not in result.stderr
    assert own_lines(result.stderr) == ([NOTICE] if PICKED else [])


def test_the_selection_imports_neither_keras_nor_a_backend():
    tree = ast.parse(Path(backend_select.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported & {"keras", "tensorflow", "jax", "torch", "multinet"} == set()


def test_keras_backend_list_matches_keras():
    source = Path(importlib.util.find_spec("keras.src.backend").origin).read_text()
    assert set(re.findall(r'backend\(\) == "(\w+)"', source)) == set(
        backend_select.KERAS_BACKENDS)


# --- choices multinet never overrides ----------------------------------------


@needs_missing
@pytest.mark.parametrize("edited", [False, True], ids=["backend-only", "edited-default"])
def test_a_keras_json_of_the_users_naming_a_missing_backend_is_kept(tmp_path, edited):
    named = MISSING[0]
    config = {**KERAS_WRITES, "image_data_format": "channels_first"} if edited else {}
    config["backend"] = named
    path = tmp_path / "keras_home" / "keras.json"
    line = one_error_line(fresh_python(tmp_path, args=["list"], keras_json=config))
    assert line.startswith(f"multinet: error: the Keras backend '{named}' named in {path} is "
                           f"not installed; install it (pip install -e \".[{named}]\")")
    assert line.endswith(f"edit {path}")
    assert suggested(line) == set(INSTALLED)

    library = fresh_python(tmp_path, code="import multinet\nmultinet.list_models()")
    assert library.returncode == 1
    assert "using '" not in library.stderr  # no pick
    message = line.removeprefix("multinet: error: ")
    assert library.stderr.splitlines()[-1] == f"ImportError: {message}"


@needs_missing
def test_keras_backend_naming_a_missing_backend_is_kept(tmp_path):
    named = MISSING[0]
    line = one_error_line(fresh_python(tmp_path, args=["list"], env={"KERAS_BACKEND": named}))
    assert line.startswith(f"multinet: error: the Keras backend '{named}' (from KERAS_BACKEND) "
                           f"is not installed; install it (pip install -e \".[{named}]\")")
    assert suggested(line) == set(INSTALLED)


@pytest.mark.parametrize("name", ["pytorch", "Jax", "tf"])
def test_a_misspelled_keras_backend_is_one_line_naming_the_valid_ones(tmp_path, name):
    result = fresh_python(tmp_path, args=["list"], env={"KERAS_BACKEND": name})
    line = one_error_line(result)
    assert line.startswith(f"multinet: error: KERAS_BACKEND='{name}' is not a Keras backend "
                           f"(valid names: {VALID_NAMES})")
    assert suggested(line) <= set(INSTALLED)
    if name == "pytorch" and "torch" not in INSTALLED:
        assert "did you mean 'torch'? It is not installed here" in line
    if name == "Jax" and "jax" in INSTALLED:
        assert line.endswith("did you mean KERAS_BACKEND=jax?")

    code = ("import sys, multinet\n"
            "try:\n    multinet.create_model\nexcept ImportError as e:\n    print(e)\n"
            "print('keras' in sys.modules)")
    library = fresh_python(tmp_path, code=code, env={"KERAS_BACKEND": name})
    assert library.stdout.splitlines() == [line.removeprefix("multinet: error: "), "False"]


def test_too_late_when_keras_was_imported_first(tmp_path):
    """Keras imported before multinet, on its default backend, which is missing: one line
    that says so and what to do; KERAS_BACKEND is left alone."""
    fake = tmp_path / "fake"
    (fake / "jax").mkdir(parents=True)
    (fake / "jax" / "__init__.py").write_text("raise ImportError('not to be imported')\n")
    code = ("import os, sys, types\n"
            "sys.modules['tensorflow'] = None\n"  # find_spec says: not installed
            "sys.modules['keras'] = types.ModuleType('keras')\n"
            "import multinet\n"
            "print(os.environ.get('KERAS_BACKEND'))\n"
            "try:\n    multinet.list_models\nexcept ImportError as e:\n    print(e)")
    result = fresh_python(tmp_path, code=code, path=[fake])
    expected = ("Keras was imported before multinet, with its default backend 'tensorflow', "
                "which is not installed; too late to switch to 'jax': set KERAS_BACKEND=jax "
                "before Python starts, or import multinet before keras")
    assert own_lines(result.stderr) == [f"multinet: {expected}"]
    assert result.stdout.splitlines() == ["None", expected]


# --- the decision itself, with the installed backends given ------------------


def resolve(tmp_path, installed, keras_json=None, **env):
    if keras_json is not None:
        text = keras_json if isinstance(keras_json, str) else json.dumps(keras_json)
        (tmp_path / "keras.json").write_text(text)
    environ = {"KERAS_HOME": str(tmp_path), **env}
    return backend_select.resolve(environ, is_installed=lambda name: name in installed,
                                  package_dir=tmp_path / "site-packages" / "multinet")


@pytest.mark.parametrize("keras_json, picked", [
    (None, True),
    (KERAS_WRITES, True),
    ({"image_data_format": "channels_first"}, True),  # names no backend
    ("{not json", True),  # Keras reads it as {}
    ({**KERAS_WRITES, "image_data_format": "channels_first"}, False),  # the user's file
    ({"backend": "tensorflow"}, False),
])
def test_only_keras_default_is_replaced(tmp_path, keras_json, picked):
    choice = resolve(tmp_path, {"torch", "jax"}, keras_json)
    if picked:
        assert (choice.backend, choice.picked, choice.problem) == ("jax", True, None)
        assert "multinet's pick" in choice.describe_source()
    else:
        assert (choice.backend, choice.picked) == ("tensorflow", False)
        assert choice.problem.startswith(
            f"the Keras backend 'tensorflow' named in {tmp_path / 'keras.json'} is not installed")
        assert suggested(choice.problem) == {"jax", "torch"}


def test_preference_and_the_default_installed(tmp_path):
    assert resolve(tmp_path, {"torch", "tensorflow"}).backend == "tensorflow"
    assert not resolve(tmp_path, {"torch", "tensorflow"}).picked
    assert resolve(tmp_path, {"torch"}).backend == "torch"
    assert resolve(tmp_path, {"torch", "jax"}).backend == "jax"
    assert resolve(tmp_path, {"jax"}, KERAS_BACKEND="torch").backend == "torch"
    assert resolve(tmp_path, {"jax"}, {"backend": "numpy"}).problem is not None


def test_no_backend_installed(tmp_path):
    choice = resolve(tmp_path, {"numpy", "openvino"})  # inference only: never picked
    assert choice.problem == (
        'no Keras backend is installed: install one (pip install "multinet-keras[jax]", '
        'pip install "multinet-keras[torch]" or pip install "multinet-keras[tensorflow]")')
    assert resolve(tmp_path, {"numpy"}, KERAS_BACKEND="numpy").problem is None  # asked for


# --- install lines ---------------------------------------------------------------


def test_install_command_from_a_checkout_and_from_an_install(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert backend_select.install_command("torch", ROOT / "multinet") == 'pip install -e ".[torch]"'
    monkeypatch.chdir(tmp_path)
    assert (backend_select.install_command("torch", ROOT / "multinet")
            == f'pip install -e "{ROOT}[torch]"')
    site = tmp_path / "site-packages"
    (site / "multinet").mkdir(parents=True)
    assert (backend_select.install_command("jax", site / "multinet")
            == 'pip install "multinet-keras[jax]"')
    # A pyproject.toml of another project above the package is no checkout of this one.
    (site / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert backend_select.install_command("jax", site / "multinet").startswith('pip install "')
    assert backend_select.install_command("openvino", site / "multinet") == "pip install openvino"


def _pip_install_commands(text: str):
    for match in re.finditer(r"pip install((?:[ \t]+(?:\"[^\"]*\"|'[^']*'|[^\s\"'`&|;#)]+))+)",
                             text):
        yield match.group(0), shlex.split(match.group(1))


def test_every_install_line_in_the_docs_names_this_distribution():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    distribution, extras = project["name"], set(project["optional-dependencies"])
    assert backend_select.DISTRIBUTION == distribution

    def canonical(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    forms = set()
    for document in documents:
        for command, args in _pip_install_commands(document.read_text()):
            for arg in args:
                if arg.startswith("-"):
                    continue
                match = re.fullmatch(r"([^\[\]]+)(?:\[([^\]]*)\])?", arg)
                assert match, f"{document.name}: cannot read {command!r}"
                name, wanted = match.group(1), match.group(2)
                if name.startswith((".", "/")):
                    forms.add("checkout")
                elif "multinet" in name.lower():
                    assert canonical(name) == canonical(distribution), (
                        f"{document.name}: {command!r} installs {name!r}, not {distribution!r}")
                    forms.add("pypi")
                else:
                    continue  # another package (nox, ...)
                unknown = set(filter(None, (wanted or "").split(","))) - extras
                assert not unknown, f"{document.name}: {command!r}: no extra {unknown}"
    assert forms == {"checkout", "pypi"}
