"""Regenerate tests/data/vit_b_16_torchvision.npz with torchvision's model code.

    KERAS_BACKEND=torch python tests/make_expected_vit.py          # torch env

The file holds the layout of torchvision's state dict (keys and shapes), the
logits of torchvision's ``vit_b_16`` on ``structured_images`` at 224 and at
112 (a model built for 112 with its position embedding resized by
torchvision's ``interpolate_embeddings``), each through torchvision's own
preprocessing (``ToTensor`` + ``Normalize``), and torch's bicubic
``align_corners=True`` interpolation of a small seeded grid to a few sizes.

Every weight is drawn again from its name (``seeded_tensor``), so the tests
rebuild the same weights file without torch (``torchvision_state``). A ViT
has no BatchNorm statistics to calibrate; what keeps the outputs dependent on
the input is that no tensor is degenerate: LayerNorm weights spread around 1,
biases, the class token and the position embedding with real values (the
class token and the head are zeros in torchvision's initialization).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from references import (  # noqa: E402
    DATA,
    assert_inputs_matter,
    seeded_tensor,
    structured_images,
    torchvision_models,
)

MODEL = "vit_b_16"
SIZES = (224, 112)
TEST_IMAGES = 2
PATCH = 16
# A small grid (height, width, channels) resized as torch resizes position embeddings.
GRID_SHAPE = (14, 14, 3)
GRID_SIZES = ((10, 10), (20, 20), (1, 1), (7, 16))
EMBEDDINGS = ("class_token", "encoder.pos_embedding")


def data_path() -> Path:
    return DATA / f"{MODEL}_torchvision.npz"


def load_expected() -> dict:
    """``{"layout": [[key, shape], ...], "outputs": {size: logits},
    "grids": {(h, w): array}}``."""
    with np.load(data_path()) as data:
        layout = json.loads(str(data["layout"]))
        outputs = {int(key[4:]): data[key] for key in data.files if key.startswith("out_")}
        grids = {tuple(int(v) for v in key[5:].split("x")): data[key]
                 for key in data.files if key.startswith("grid_")}
    return {"layout": layout, "outputs": outputs, "grids": grids}


def seeded_grid() -> np.ndarray:
    return seeded_tensor("interpolation grid", GRID_SHAPE, scale=20.0)


def torchvision_state(layout) -> dict[str, np.ndarray]:
    """A state dict in torchvision's layout ``[[key, shape], ...]``: He-normal
    kernels (fan-in), LayerNorm weights near 1, small biases, class token and
    position embedding with values of about 0.5."""
    state = {}
    for key, shape in layout:
        shape = tuple(shape)
        if key in EMBEDDINGS:
            state[key] = seeded_tensor(key, shape, scale=10.0)
        elif key.endswith("weight") and len(shape) > 1:  # conv OIHW, Linear (out, in)
            state[key] = seeded_tensor(key, shape, fan_in=int(np.prod(shape[1:])))
        elif key.endswith("weight"):  # LayerNorm
            state[key] = 1.0 + seeded_tensor(key, shape, scale=2.0)
        else:  # biases, in_proj_bias
            state[key] = seeded_tensor(key, shape)
    return state


def _torchvision_pipeline(images):
    """torchvision's evaluation transform after the crop: ToTensor, Normalize."""
    import torch
    from torchvision import transforms

    to_tensor = transforms.ToTensor()
    normalize = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return torch.stack([normalize(to_tensor(image)) for image in images.astype(np.uint8)])


def torchvision_module(size: int, layout, state=None):
    """torchvision's vit_b_16 for ``size`` with the seeded weights (``state``:
    ``torchvision_state(layout)`` drawn already), the position embedding
    resized by ``interpolate_embeddings`` for other sizes."""
    import torch

    models = torchvision_models()
    from torchvision.models.vision_transformer import interpolate_embeddings

    module = models.vit_b_16(image_size=size)
    state = torchvision_state(layout) if state is None else state
    state = {k: torch.from_numpy(v) for k, v in state.items()}
    module.load_state_dict(interpolate_embeddings(size, PATCH, state))
    return module.eval()


def torch_grid(size) -> np.ndarray:
    import torch

    grid = torch.from_numpy(seeded_grid()).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(grid, size=size, mode="bicubic", align_corners=True)
    return out[0].permute(1, 2, 0).numpy().copy()


def main(argv) -> int:
    import torch

    if argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    models = torchvision_models()
    layout = [[key, list(value.shape)] for key, value in models.vit_b_16().state_dict().items()]
    arrays = {"layout": np.array(json.dumps(layout))}
    for size in SIZES:
        module = torchvision_module(size, layout)
        with torch.inference_mode():
            logits = module(_torchvision_pipeline(structured_images(size, TEST_IMAGES))).numpy()
        assert_inputs_matter(logits)
        arrays[f"out_{size}"] = logits
    for size in GRID_SIZES:
        arrays[f"grid_{size[0]}x{size[1]}"] = torch_grid(size)
    DATA.mkdir(exist_ok=True)
    np.savez_compressed(data_path(), **arrays)
    print(f"{data_path().name}: {data_path().stat().st_size / 1024:.0f} KiB, {', '.join(arrays)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
