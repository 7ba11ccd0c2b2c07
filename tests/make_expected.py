"""Regenerate tests/data/torchvision_expected.npz with the PyTorch reference.

    KERAS_BACKEND=torch python tests/make_expected.py

Runs tests/torch_reference.py (torchvision's architectures) on the
deterministic checkpoints of tests/weight_fixtures.py and stores the outputs,
so the TensorFlow and JAX sessions can check torchvision-layout loading
without PyTorch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import torch_reference  # noqa: E402
import weight_fixtures as wf  # noqa: E402


def reference_outputs(name: str, size: int, state: dict | None = None) -> np.ndarray:
    state = wf.torchvision_state_dict(name) if state is None else state
    with torch.device("meta"):  # no random initialization: the state replaces it
        module = torch_reference.build(name)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, assign=True)
    with torch.inference_mode():
        return module(torch.from_numpy(wf.inputs_nchw(size))).numpy()


def main():
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    outputs = {f"{name}_{size}": reference_outputs(name, size) for name, size in wf.CASES}
    wf.DATA.mkdir(exist_ok=True)
    np.savez_compressed(wf.EXPECTED, **outputs)
    for key, value in outputs.items():
        print(f"{key}: {value.shape}, |max| {np.abs(value).max():.4g}")


if __name__ == "__main__":
    main()
