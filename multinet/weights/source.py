"""Weights read from a file or mapping, keyed by the model's layer names."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class SourceWeights:
    """Tensors grouped per target layer, in the layer's variable order.

    ``tensors`` maps a layer name of the model (or, for tensors that map to
    no layer, a name from the file) to its arrays, already in Keras layouts.
    ``labels`` gives the name a tensor group had in the file, for messages.
    ``problems`` maps a layer name to why its tensors could not be converted.
    ``head`` names the groups that form a classifier head, which a model built
    with ``include_top=False`` ignores.
    """

    layout: str
    tensors: dict[str, list[np.ndarray]]
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    head: set[str] = dataclasses.field(default_factory=set)
    preprocessing: str | None = None
    problems: dict[str, str] = dataclasses.field(default_factory=dict)

    def label(self, name: str) -> str:
        origin = self.labels.get(name)
        return f"{name} (file: {origin})" if origin and origin != name else name

    def rename(self, names: dict[str, str]) -> None:
        """Rename tensor groups ``{name in the file: layer name}``, keeping labels."""
        for old, new in names.items():
            if old in self.tensors and old != new:
                self.tensors[new] = self.tensors.pop(old)
                self.labels.setdefault(new, self.labels.pop(old, old))
                if old in self.head:
                    self.head.discard(old)
                    self.head.add(new)
