"""Test and benchmark sessions, one virtual environment per Keras backend.

Each session installs only its own backend, which also proves that multinet
imports no other one. torch is pinned to the CPU build on purpose: any other
torch spec pulls a multi-GB CUDA build.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "tests", "export", "openvino"]
nox.options.reuse_existing_virtualenvs = True

BACKENDS = {
    "tensorflow": ["tensorflow-cpu>=2.16"],
    "jax": ["jax>=0.4.30"],
    "torch": ["torch==2.13.0"],
}
# The independent references the tests compare the model families with, each
# in the session whose framework runs it: torchvision's model code (pure
# Python beside the CPU torch build; see tests/references.py) and the original
# Keras 2 applications. tf-keras asks for the full `tensorflow` package, which
# tensorflow-cpu already provides, hence --no-deps.
REFERENCES = {
    "tensorflow": ["--no-deps", "tf-keras==2.21.0"],
    "jax": [],
    "torch": ["torchvision==0.28.0"],
}

# What `multinet.export` needs beside the backend: the runtimes that verify every
# artifact (the `export` extra) and the exporters of the backend's own formats
# (the `export-<backend>` extra; see docs/export.md).
EXPORT_EXTRAS = {backend: ("test", "export", f"export-{backend}") for backend in BACKENDS}


def install_backend(session: nox.Session, backend: str, *extras: str) -> None:
    session.install(*BACKENDS[backend])
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec)


def backend_env(session: nox.Session, backend: str) -> dict[str, str]:
    keras_home = os.path.join(session.create_tmp(), "keras_home")
    return {
        "KERAS_BACKEND": backend,
        "KERAS_HOME": keras_home,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONHASHSEED": "0",
    }


@nox.session
@nox.parametrize("backend", list(BACKENDS))
def tests(session: nox.Session, backend: str) -> None:
    """The full test suite on one backend: nox -s "tests(backend='jax')".

    pytest's temporary folders go into the session's own tmp folder, not /tmp:
    pytest empties it at the start of each run, and .ci/run deletes it with the
    environment.
    """
    install_backend(session, backend, "test", "bench", "train")
    if REFERENCES[backend]:
        session.install(*REFERENCES[backend])
    basetemp = os.path.join(session.create_tmp(), "pytest")
    session.run("pytest", f"--basetemp={basetemp}", *parallel_args(), *session.posargs,
                env=backend_env(session, backend))


def parallel_args() -> list[str]:
    """pytest-xdist workers, one per core up to four, each taking whole test files
    (so module-scoped models are built once); `-- -n 0` runs in one process."""
    workers = min(len(os.sched_getaffinity(0)), 4)
    return ["-n", str(workers), "--dist", "loadfile"] if workers > 1 else []


@nox.session
@nox.parametrize("backend", list(BACKENDS))
def export(session: nox.Session, backend: str) -> None:
    """The export matrix on one backend: nox -s "export(backend='jax')".

    Every format and data format of the matrix models, each cell verified by
    running the artifact in its runtime or a tested one-line error; writes
    build/export_matrix/<backend>.json and checks it against docs/export_matrix/.
    Also the benchmark harness' onnxruntime and openvino call paths, whose
    runtimes only this session installs. Nothing skips here: a missing exporter
    or runtime is a failure.
    """
    install_backend(session, backend, *EXPORT_EXTRAS[backend])
    basetemp = os.path.join(session.create_tmp(), "pytest")
    env = {**backend_env(session, backend), "MULTINET_EXPORT_REQUIRED": "1"}
    session.run("pytest", f"--basetemp={basetemp}", "tests/test_export.py", *DEPLOYED_BENCH_TESTS,
                *session.posargs, env=env)


# The harness' deployed call paths (benchmarks/deployed.py), run where the runtimes are.
DEPLOYED_BENCH_TESTS = (
    "tests/test_benchmarks.py::test_deployed_calls_time_exported_artifacts",
    "tests/test_benchmarks.py::test_missing_runtime_or_exporter_is_unsupported",
)


@nox.session
def openvino(session: nox.Session) -> None:
    """Keras' OpenVINO backend, inference only: nox -s openvino.

    keras and openvino and no other framework: every registered model builds and
    predicts in both data formats and gives the numbers the training backends
    give (tests/data/backend_parity.npz); training is a one-line error.
    """
    session.install("-e", ".[openvino,test]")
    basetemp = os.path.join(session.create_tmp(), "pytest")
    workers = min(len(os.sched_getaffinity(0)), 4)
    parallel = ["-n", str(workers), "--dist", "load"] if workers > 1 else []
    session.run("pytest", f"--basetemp={basetemp}", *parallel, "tests/test_openvino.py",
                *session.posargs, env=backend_env(session, "openvino"))


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")


@nox.session
@nox.parametrize("backend", list(BACKENDS))
def bench(session: nox.Session, backend: str) -> None:
    """Benchmarks against native PyTorch: nox -s "bench(backend='jax')" [-- --quick].

    Installs torch==2.13.0 next to the backend for the native baseline and the
    export extras of the backend (onnxruntime and OpenVINO for `--calls
    onnxruntime,openvino`), writes <out>/<backend>.json (default
    benchmarks/results) and renders <out>/report.{md,png} from every result file
    there. Arguments after -- go to benchmarks/run.py.
    """
    install_backend(session, backend, "bench", "export", f"export-{backend}")
    # The native baseline: torch (the CPU build) and torchvision's model code.
    session.install(*BACKENDS["torch"], *REFERENCES["torch"])
    env = backend_env(session, backend)
    session.run("python", "benchmarks/run.py", *session.posargs, env=env)
    out = option_value(session.posargs, "--out")
    session.run("python", "benchmarks/report.py", *(["--results", out] if out else []),
                env=env)


def option_value(args: list[str], name: str) -> str | None:
    """The value of ``name VALUE`` or ``name=VALUE`` in ``args`` (the last one), or None."""
    value = None
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value
