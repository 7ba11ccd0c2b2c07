"""Which Keras backend multinet runs on, settled before Keras is imported.

Keras reads its backend once, when it is first imported: ``KERAS_BACKEND``,
else the ``backend`` key of ``keras.json`` in ``KERAS_HOME`` (default
``~/.keras``), else its own default, ``tensorflow``, which it also writes into
a new ``keras.json``. An install with only JAX or PyTorch therefore fails
inside Keras' import unless the user sets ``KERAS_BACKEND``. ``import
multinet`` runs :func:`configure` first: where the backend is Keras' default
and that backend is not installed, it sets ``KERAS_BACKEND`` to an installed
one and says so in one line on stderr. A choice the user made (the variable,
or a ``keras.json`` naming a backend that is not the file Keras writes) is
never overridden; when it cannot work, :attr:`Choice.problem` says in one
line what to do. This module imports neither Keras nor a backend: it finds
backends with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# The distribution on PyPI (``multinet`` there is another project); the import
# name and the console script are ``multinet``.
DISTRIBUTION = "multinet-keras"
# keras/src/backend/__init__.py imports one of these, else raises ValueError.
KERAS_BACKENDS = ("tensorflow", "jax", "torch", "openvino", "numpy")
KERAS_DEFAULT_BACKEND = "tensorflow"
# What keras/src/backend/config.py writes into a keras.json it creates.
KERAS_DEFAULT_CONFIG = {"floatx": "float32", "epsilon": 1e-07, "backend": "tensorflow",
                        "image_data_format": "channels_last"}
# The backends multinet is tested on, in the order it picks them: the two that
# install as one package each first (the README's install line uses JAX), then
# TensorFlow (Keras' default: picked only if a future Keras changes its default).
# openvino and numpy run inference only, so multinet never picks them.
PREFERENCE = ("jax", "torch", "tensorflow")
# What multinet's models run on: every one trains and predicts on these...
TRAINING_BACKENDS = ("tensorflow", "jax", "torch")
# ...and predicts on these too (Keras' OpenVINO backend runs inference only).
PREDICT_BACKENDS = (*TRAINING_BACKENDS, "openvino")
# The extras in pyproject.toml, and the distributions that provide each module.
_EXTRAS = ("tensorflow", "jax", "torch")
_PROVIDERS = {"tensorflow": ("tensorflow", "tensorflow-cpu", "tf-nightly"),
              "jax": ("jax",), "torch": ("torch",), "openvino": ("openvino",),
              "numpy": ("numpy",)}

KERAS_BACKEND = "KERAS_BACKEND"  # Choice.source values
KERAS_JSON = "keras.json"
DEFAULT = "default"


@dataclass(frozen=True)
class Choice:
    """The backend Keras will load, where that came from, and what multinet did.

    ``source`` is ``"KERAS_BACKEND"``, ``"keras.json"`` (a file naming a backend
    that is not the one Keras writes) or ``"default"`` (Keras' default, with
    ``path`` the keras.json Keras read or will write). ``picked`` is True when
    multinet replaced Keras' default with ``backend``; ``problem`` is a one-line
    message when Keras cannot load the backend; ``notice`` is the line printed
    on stderr.
    """

    backend: str
    source: str
    path: Path
    picked: bool = False
    problem: str | None = None
    notice: str | None = None

    def describe_source(self) -> str:
        """Where the backend came from, for ``multinet doctor``."""
        if self.picked:
            return f"multinet's pick; Keras' default {KERAS_DEFAULT_BACKEND!r} is not installed"
        if self.source == KERAS_BACKEND:
            return KERAS_BACKEND
        if self.source == KERAS_JSON:
            return str(self.path)
        return "Keras' default"


CHOICE: Choice | None = None  # set by configure() when multinet is imported


def is_installed(name: str) -> bool:
    """Whether the module ``name`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def installed_backends(names=("tensorflow", "jax", "torch")) -> dict[str, str | None]:
    """{backend: version, or None when not installed}, found without importing them."""
    found = {}
    for name in names:
        version = None
        if is_installed(name):
            version = "installed"
            for dist in _PROVIDERS.get(name, (name,)):
                try:
                    version = importlib.metadata.version(dist)
                    break
                except importlib.metadata.PackageNotFoundError:
                    continue
        found[name] = version
    return found


def keras_json_path(environ: Mapping[str, str] | None = None) -> Path:
    """The keras.json Keras reads, found as keras/src/backend/config.py finds it."""
    environ = os.environ if environ is None else environ
    if "KERAS_HOME" in environ:
        folder = environ["KERAS_HOME"]
    else:
        base = os.path.expanduser("~")
        if not os.access(base, os.W_OK):
            base = "/tmp"
        folder = os.path.join(base, ".keras")
    return Path(os.path.expanduser(os.path.join(folder, "keras.json")))


def read_keras_json(path: Path):
    """The parsed file; None when there is none; {} when Keras cannot parse it either."""
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        config = json.loads(text)
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def checkout_root(package_dir: Path | None = None) -> Path | None:
    """The source checkout multinet runs from: the folder above the package
    holding a pyproject.toml that names this project; None for an install."""
    package_dir = Path(__file__).resolve().parent if package_dir is None else package_dir
    root = package_dir.parent
    try:
        text = (root / "pyproject.toml").read_text()
    except OSError:
        return None
    match = re.search(r'(?ms)^\[project\]\s*$.*?^name\s*=\s*["\']([^"\']+)["\']', text)
    return root if match and match.group(1) == DISTRIBUTION else None


def install_command(backend: str, package_dir: Path | None = None) -> str:
    """The pip line that installs ``backend`` for multinet: the checkout form
    (``pip install -e ".[torch]"``) when running from a checkout, else PyPI's."""
    if backend not in _EXTRAS:
        return f"pip install {backend}"
    root = checkout_root(package_dir)
    if root is None:
        return f'pip install "{DISTRIBUTION}[{backend}]"'
    try:
        here = Path.cwd().resolve() == root.resolve()
    except OSError:
        here = False
    return f'pip install -e "{"." if here else root}[{backend}]"'


def _installed_choices(exclude: str | None = None, is_installed=is_installed) -> list[str]:
    return [name for name in PREFERENCE if name != exclude and is_installed(name)]


def _either(options: list[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def _remedy(backend: str, edit: Path | None, is_installed, package_dir) -> str:
    """'install it (pip ...), set KERAS_BACKEND=jax or edit PATH'."""
    steps = [f"install it ({install_command(backend, package_dir)})"]
    steps += [f"set KERAS_BACKEND={name}" for name in _installed_choices(backend, is_installed)]
    if edit is not None:
        steps.append(f"edit {edit}")
    return _either(steps)


def _no_backend(package_dir) -> str:
    commands = [install_command(name, package_dir) for name in PREFERENCE]
    return f"no Keras backend is installed: install one ({_either(commands)})"


def _unknown(subject: str, name: str, is_installed, package_dir) -> str:
    """'<subject> is not a Keras backend (valid names: ...); <what to do>'."""
    message = f"{subject} is not a Keras backend (valid names: {', '.join(KERAS_BACKENDS)})"
    close = difflib.get_close_matches(name.lower(), KERAS_BACKENDS, n=1, cutoff=0.6)
    installed = _installed_choices(is_installed=is_installed)
    if close and is_installed(close[0]):
        return f"{message}; did you mean KERAS_BACKEND={close[0]}?"
    if close:
        return (f"{message}; did you mean {close[0]!r}? It is not installed here: "
                f"{_remedy(close[0], None, is_installed, package_dir)}")
    if installed:
        return f"{message}; installed here: {_either([f'KERAS_BACKEND={n}' for n in installed])}"
    return f"{message}; {_no_backend(package_dir)}"


def resolve(environ: Mapping[str, str] | None = None, is_installed: Callable = is_installed,
            package_dir: Path | None = None) -> Choice:
    """Decide, without side effects, which backend Keras should load."""
    environ = os.environ if environ is None else environ
    path = keras_json_path(environ)
    requested = environ.get("KERAS_BACKEND")
    if requested:  # Keras ignores an empty value
        if requested not in KERAS_BACKENDS:
            return Choice(requested, KERAS_BACKEND, path, problem=_unknown(
                f"KERAS_BACKEND={requested!r}", requested, is_installed, package_dir))
        problem = None
        if not is_installed(requested):
            problem = (f"the Keras backend {requested!r} (from KERAS_BACKEND) is not installed; "
                       f"{_remedy(requested, None, is_installed, package_dir)}")
        return Choice(requested, KERAS_BACKEND, path, problem=problem)

    config = read_keras_json(path)
    if config and "backend" in config and config != KERAS_DEFAULT_CONFIG:
        named = str(config["backend"])
        problem = None
        if named not in KERAS_BACKENDS:
            problem = _unknown(f"{named!r} in {path}", named, is_installed, package_dir)
        elif not is_installed(named):
            problem = (f"the Keras backend {named!r} named in {path} is not installed; "
                       f"{_remedy(named, path, is_installed, package_dir)}")
        return Choice(named, KERAS_JSON, path, problem=problem)

    # Keras' default: no keras.json yet, the one Keras wrote, or a file naming no backend.
    default = KERAS_DEFAULT_BACKEND
    if is_installed(default):
        return Choice(default, DEFAULT, path)
    installed = _installed_choices(is_installed=is_installed)
    if not installed:
        return Choice(default, DEFAULT, path, problem=_no_backend(package_dir))
    notice = (f"Keras' default backend {default!r} is not installed; using {installed[0]!r} "
              f"(set KERAS_BACKEND to choose)")
    return Choice(installed[0], DEFAULT, path, picked=True, notice=notice)


def _keras_backend_in_use() -> str | None:
    """The backend of a Keras already imported in this process, else None."""
    config = sys.modules.get("keras.src.backend.config")
    if config is not None and hasattr(config, "backend"):
        return config.backend()
    return KERAS_DEFAULT_BACKEND if "keras" in sys.modules else None


def configure(environ=None, stream=None) -> Choice:
    """Settle the backend before Keras is imported; called by ``import multinet``.

    Sets ``KERAS_BACKEND`` when multinet picks a backend, prints the notice
    (one line, prefixed ``multinet:``) on ``stream`` (stderr), records the
    result in :data:`CHOICE` and returns it.
    """
    global CHOICE
    environ = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream
    choice = resolve(environ)
    if choice.picked:
        in_use = _keras_backend_in_use()
        if in_use is None:
            environ["KERAS_BACKEND"] = choice.backend
        elif not is_installed(in_use):
            line = (f"Keras was imported before multinet, with its default backend {in_use!r}, "
                    f"which is not installed; too late to switch to {choice.backend!r}: set "
                    f"KERAS_BACKEND={choice.backend} before Python starts, or import multinet "
                    f"before keras")
            choice = Choice(in_use, DEFAULT, choice.path, problem=line, notice=line)
        else:  # Keras runs on a backend it could import: leave it be
            choice = Choice(in_use, DEFAULT, choice.path)
    if choice.notice:
        print(f"multinet: {choice.notice}", file=stream)
    CHOICE = choice
    return choice


def import_failure(error: BaseException, choice: Choice | None = None) -> str:
    """One line for an ImportError raised by Keras or its backend after the
    checks passed (a broken or partial install)."""
    choice = choice or CHOICE or resolve()
    detail = " ".join(str(error).split()) or type(error).__name__
    others = [f"KERAS_BACKEND={n}" for n in _installed_choices(choice.backend)]
    tail = f", or pick another installed one with {_either(others)}" if others else ""
    return (f"the Keras backend {choice.backend!r} cannot be imported ({detail}); reinstall it "
            f"({install_command(choice.backend)}){tail}")
