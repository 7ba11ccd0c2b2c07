"""The native PyTorch baseline: torchvision-layout modules from
``tests/torch_reference.py`` or torchvision's own model code, timed with the same loop as multinet
(``multinet.benchmark.time_callable``) on the same inputs.

Inference runs eagerly under ``torch.inference_mode()`` (optionally through
``torch.compile``); training is forward, cross-entropy, backward and an SGD
step. PyTorch is optional: :func:`available` says whether it can be imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import types
from pathlib import Path

from multinet.benchmark import Prepared, make_inputs, time_callable

ROOT = Path(__file__).resolve().parent.parent


def available() -> bool:
    """Whether PyTorch is installed (the baseline is skipped without it)."""
    return importlib.util.find_spec("torch") is not None


def _reference():
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import torch_reference

    return torch_reference


def build_module(name: str):
    """The native PyTorch module of ``name``: the reference modules of
    ``tests/torch_reference.py`` (SqueezeNet, VGG), else torchvision's own
    model code (``torchvision.models.<name>``), in eval mode."""
    reference = _reference()
    try:
        return reference.build(name)
    except ValueError:
        pass
    # torchvision's compiled ops are built for another torch build and its
    # _meta_registrations module fails to import; the model classes are pure
    # Python and need none of it.
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("stub"))
    import torchvision.models

    builder = getattr(torchvision.models, name, None)
    if builder is None:
        raise ValueError(f"no native PyTorch module for {name!r}")
    return builder().eval()


def default_threads() -> int:
    """CPU threads for the baseline: every core this process may use, as
    XLA and TensorFlow use (PyTorch itself defaults to the physical cores)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_native(name: str, *, warmup: int = 2, repeats: int = 10, **kwargs) -> dict:
    """Time the PyTorch reference of ``name`` alone (see :func:`prepare_native`)."""
    prepared = prepare_native(name, **kwargs)
    if prepared.step is not None:
        try:
            timing = time_callable(prepared.step, items=prepared.result["batch_size"],
                                   warmup=warmup, repeats=repeats, sync=prepared.sync)
        except Exception as exc:  # noqa: BLE001
            prepared.fail(exc)
        else:
            prepared.record(timing)
    return prepared.result


class _NativePrepared(Prepared):
    def peak_device_memory(self):
        import torch

        if self.result["device_kind"] != "gpu":
            return None
        return int(torch.cuda.max_memory_allocated())


def prepare_native(name: str, *, batch_size: int, image_size: int = 224,
                   task: str = "inference", dtype: str = "float32", compile: bool = False,
                   threads: int | None = None, seed: int = 0,
                   device: str | None = None) -> Prepared:
    """The PyTorch reference of ``name`` ready to time; same result keys as
    ``multinet.benchmark.run_benchmark`` (``implementation`` is
    ``"torch_eager"`` or ``"torch_compile"``)."""
    import torch

    implementation = "torch_compile" if compile else "torch_eager"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads is None:
        threads = default_threads()
    result = {
        "schema": "multinet.benchmark/1",
        "implementation": implementation,
        "model": name,
        "task": task,
        "batch_size": int(batch_size),
        "image_size": int(image_size),
        "data_format": "channels_first",
        "dtype": dtype,
        "call": ("inference_mode" if task == "inference" else "sgd_step"),
        "backend": "torch-native",
        "framework_version": torch.__version__,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "device_kind": "gpu" if device == "cuda" else "cpu",
        "threads": threads,
    }
    prepared = _NativePrepared(result)
    try:
        prepared.step, prepared.sync = _prepare(torch, result, name, batch_size, image_size,
                                                task, dtype, compile, seed, device, threads)
    except Exception as exc:  # noqa: BLE001  (a failed config is a result)
        prepared.fail(exc)
    return prepared


def _prepare(torch, result, name, batch_size, image_size, task, dtype, compile, seed, device,
             threads):
    torch.manual_seed(seed)
    start = time.perf_counter()
    module = build_module(name).to(device)
    images, labels = make_inputs(batch_size, image_size, "channels_first", seed=seed)
    x = torch.from_numpy(images).to(device)
    y = torch.from_numpy(labels).long().to(device)
    autocast = dtype == "mixed_bfloat16"
    if dtype == "bfloat16":
        module = module.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
    result["build_s"] = time.perf_counter() - start
    forward = torch.compile(module) if compile else module

    def sync(value):
        if device == "cuda":
            torch.cuda.synchronize()
        return value

    def autocast_ctx():
        return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if task == "inference":
        module.eval()

        def step():
            with torch.inference_mode(), autocast_ctx():
                return forward(x)

        return _with_threads(torch, threads, step), sync
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with autocast_ctx():
            loss = loss_fn(forward(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return _with_threads(torch, threads, train_step), sync


def _with_threads(torch, threads, step):
    """``step`` run with ``threads`` PyTorch threads, restoring the caller's
    count after (baselines with different counts are timed interleaved)."""

    def run():
        previous = torch.get_num_threads()
        if previous != threads:
            torch.set_num_threads(threads)
        try:
            return step()
        finally:
            if previous != threads:
                torch.set_num_threads(previous)

    return run


def count_flops(name: str, *, image_size: int = 224, task: str = "inference") -> int | None:
    """Analytic FLOPs of one image through ``name`` at ``image_size``: what
    ``torch.utils.flop_counter.FlopCounterMode`` counts on one forward pass of
    the native module (2 FLOPs per multiply-add of every convolution and matrix
    product, from the operands' shapes; elementwise work, normalisation and
    pooling are not counted). ``task="train"`` is 3x that, the usual convention
    (the backward pass runs two products of each forward one's size); the
    counter's own backward figures are not used, since it counts grouped
    convolutions' gradients as dense ones. The count is the direct algorithm's:
    a Winograd or FFT kernel does fewer multiplications, so achieved GFLOP/s
    above the machine's peak would mean such a kernel ran. None where PyTorch
    is absent."""
    if not available():
        return None
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module = build_module(name).eval()
    images, _ = make_inputs(1, image_size, "channels_first")
    # PyTorch's CPU attention kernel is missing from the counter's registry: the
    # same formula as its GPU kernels (softmax(QK^T)V, 2 products).
    from torch.utils.flop_counter import sdpa_flop_count

    def attention_flops(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = FlopCounterMode(display=False, custom_mapping={cpu_attention: attention_flops})
    # Gradients stay enabled: under no_grad, nn.MultiheadAttention takes a fused
    # fast path whose products the counter does not see.
    with counter:
        module(torch.from_numpy(images))
    forward = int(counter.get_total_flops())
    return forward * 3 if task == "train" else forward


def matmul_peak_gflops(threads: int | None = None, *, size: int = 2048,
                       seconds: float = 1.5) -> dict | None:
    """This machine's measured float32 matrix-multiply peak: the best GFLOP/s of
    ``size`` x ``size`` products (``torch.mm``, ``threads`` threads) over about
    ``seconds`` of repeats, after one warm-up product. None where PyTorch is absent."""
    if not available():
        return None
    import torch

    threads = threads or default_threads()
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    run = _with_threads(torch, threads, lambda: torch.mm(a, b))
    run()
    best, deadline, calls = float("inf"), time.perf_counter() + seconds, 0
    while calls < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
        calls += 1
    return {"gflops": 2 * size**3 / best / 1e9, "size": size, "threads": threads,
            "calls": calls, "kernel": "torch.mm float32"}
