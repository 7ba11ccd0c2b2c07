"""Regenerate tests/data/torchvision_expected.npz and tests/data/cli_expected.json
with the PyTorch reference.

    KERAS_BACKEND=torch python tests/make_expected.py        # both files
    KERAS_BACKEND=torch python tests/make_expected.py cli    # cli_expected.json only

Runs tests/torch_reference.py (torchvision's architectures) on the
deterministic checkpoints of tests/weight_fixtures.py and stores the outputs,
so the TensorFlow and JAX sessions can check torchvision-layout loading
without PyTorch. ``cli_expected.json`` holds what ``multinet predict`` must
answer for the cat photo with the seeded squeezenet1_1 checkpoint, the image
prepared by Pillow and numpy (tests/references.py), not by multinet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import references  # noqa: E402
import torch_reference  # noqa: E402
import weight_fixtures as wf  # noqa: E402

CLI_EXPECTED = wf.DATA / "cli_expected.json"
CLI_TOP = 10


def reference_outputs(name: str, size: int, state: dict | None = None) -> np.ndarray:
    state = wf.torchvision_state_dict(name) if state is None else state
    with torch.device("meta"):  # no random initialization: the state replaces it
        module = torch_reference.build(name)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, assign=True)
    with torch.inference_mode():
        return module(torch.from_numpy(wf.inputs_nchw(size))).numpy()


def predict_reference(name: str, image, *, input_size=224, resize_size=256,
                      interpolation="bilinear", seed: int = 0) -> np.ndarray:
    """Class probabilities of the reference ``name`` with the seeded checkpoint
    for one image, prepared as torchvision evaluates (resize, crop, ``torch``)."""
    state = wf.torchvision_state_dict(name, seed=seed)
    with torch.device("meta"):
        module = torch_reference.build(name)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, assign=True)
    x = references.scale(references.eval_image(image, input_size, resize_size, interpolation),
                         "torch")
    with torch.inference_mode():
        logits = module(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None])))
    return references.softmax(logits.numpy()[0])


def write_cli_expected():
    import json

    probabilities = predict_reference("squeezenet1_1", references.CAT)
    top = np.argsort(-probabilities, kind="stable")[:CLI_TOP]
    data = {"squeezenet1_1 seeded cat.jpg": {
        "classes": [int(i) for i in top],
        "probabilities": [float(probabilities[i]) for i in top]}}
    CLI_EXPECTED.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{CLI_EXPECTED}: {data}")


def main():
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    if sys.argv[1:] == ["cli"]:
        write_cli_expected()
        return
    write_cli_expected()
    outputs = {f"{name}_{size}": reference_outputs(name, size) for name, size in wf.CASES}
    wf.DATA.mkdir(exist_ok=True)
    np.savez_compressed(wf.EXPECTED, **outputs)
    for key, value in outputs.items():
        print(f"{key}: {value.shape}, |max| {np.abs(value).max():.4g}")


if __name__ == "__main__":
    main()
