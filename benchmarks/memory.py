"""Peak resident memory of one benchmark configuration, in a fresh process.

    KERAS_BACKEND=jax python benchmarks/memory.py resnet50 --batch-size 8 --call predict
    KERAS_BACKEND=jax python benchmarks/memory.py resnet50 --implementation torch_eager

Prints one JSON line. ``peak_memory_bytes`` is the process's peak resident set
size (``getrusage``) after building the configuration and running it (one
warm-up and three calls), minus its resident size once the frameworks were
imported: the model's weights, inputs, activations, workspace and compiled
code, without the libraries themselves. ``benchmarks/run.py --memory`` runs it
for every configuration and for the native PyTorch baseline, so that the two
are measured alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def resident_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(model: str, *, implementation: str = "multinet", task: str = "inference",
            batch_size: int = 1, image_size: int = 224, dtype: str = "float32",
            data_format: str = "channels_last", call: str = "compiled",
            timeout: float = 900) -> dict:
    """Run this script in a fresh process; its figures, or ``peak_memory_error``."""
    command = [sys.executable, str(Path(__file__).resolve()), model,
               "--implementation", implementation, "--task", task,
               "--batch-size", str(batch_size), "--image-size", str(image_size),
               "--dtype", dtype, "--data-format", data_format, "--call", call]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"peak_memory_error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"peak_memory_error": f"exit {done.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--implementation", choices=("multinet", "torch_eager"),
                        default="multinet")
    parser.add_argument("--task", choices=("inference", "train"), default="inference")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--data-format", default="channels_last")
    parser.add_argument("--call", choices=("compiled", "predict"), default="compiled")
    args = parser.parse_args(argv)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    if args.implementation == "torch_eager":
        import native
        import torch  # noqa: F401  (imported before the baseline RSS, as multinet's backend)

        base = resident_bytes()
        prepared = native.prepare_native(args.model, task=args.task, dtype=args.dtype,
                                         batch_size=args.batch_size,
                                         image_size=args.image_size)
    else:
        import keras

        from multinet.benchmark import prepare_benchmark

        keras.ops.convert_to_tensor(0.0)  # the backend is imported and initialised
        base = resident_bytes()
        prepared = prepare_benchmark(args.model, task=args.task, dtype=args.dtype,
                                     batch_size=args.batch_size, image_size=args.image_size,
                                     data_format=args.data_format, call=args.call)
    if prepared.step is None:
        raise SystemExit(f"{args.model}: {prepared.result.get('error')}")
    sync = prepared.sync or (lambda value: value)
    for _ in range(4):
        sync(prepared.step())
    from multinet.benchmark import peak_rss_bytes

    peak = peak_rss_bytes()
    figures = {"peak_memory_bytes": peak - base, "peak_rss_bytes": peak,
               "base_rss_bytes": base}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
