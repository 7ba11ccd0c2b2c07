"""What a weights load did, and the errors it raises."""

from __future__ import annotations

import dataclasses


class WeightsLoadError(ValueError):
    """A weights file or mapping does not fit the model, or cannot be read.

    Raised before anything is assigned: the model is unchanged.
    """


class WeightsUnavailableError(OSError):
    """A published weights file is neither in the cache nor downloadable.

    The message names the file, its origin URL, the cache path to put it at,
    and how to pass a local copy with ``weights=PATH``.
    """


def format_shapes(shapes) -> str:
    return ", ".join(str(tuple(int(d) for d in s)) for s in shapes) or "no tensors"


@dataclasses.dataclass
class LoadReport:
    """The outcome of ``multinet.load_weights``.

    ``loaded`` lists the model layers that received weights; ``skipped`` maps
    a layer (or source tensor) name to why it was not loaded. ``layout`` is the
    detected source layout (``keras_legacy_h5``, ``keras_v3``, ``torchvision``),
    ``preprocessing`` the input mode the layout implies, when it is known.
    """

    source: str
    layout: str
    model_name: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    preprocessing: str | None = None
    num_values: int = 0

    def __str__(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} layers ({self.num_values:,} values) into "
            f"{self.model_name} from {self.source} ({self.layout})"
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines.extend(f"  {name}: {why}" for name, why in self.skipped.items())
        return "\n".join(lines)
