"""Compute tests/data/backend_parity.npz, or check it, on the current backend.

    KERAS_BACKEND=jax python tests/make_expected_parity.py --write
    KERAS_BACKEND=torch python tests/make_expected_parity.py        # check
    KERAS_BACKEND=tensorflow python tests/make_expected_parity.py   # check

Every registered model, both data formats: the logits of seeded weights on a
seeded batch (see tests/backend_parity.py). Writing computes channels_last and
checks channels_first against it; checking compares both formats with the file
and exits non-zero on a difference above the tolerance.
"""

from __future__ import annotations

import argparse
import sys
import time

import backend_parity as parity
import numpy as np
from helpers import rel_error

import multinet
from multinet import backend


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--models", default=",".join(multinet.list_models()))
    args = parser.parse_args(argv)
    names = args.models.split(",")
    everything = sorted(names) == multinet.list_models()
    # Writing a few models updates them in the stored file.
    stored = {} if args.write and everything else parity.expected()
    out, worst = {}, 0.0
    for name in names:
        start = time.perf_counter()
        last = parity.logits(name, "channels_last")
        first = parity.logits(name, "channels_first")
        reference = last if args.write else stored[name]
        errors = [rel_error(last, reference), rel_error(first, reference)]
        worst = max(worst, *errors)
        print(f"{backend.name()} {name}: std {last.std():.3g}, relative difference "
              f"last {errors[0]:.2e} first {errors[1]:.2e} ({time.perf_counter() - start:.1f} s)",
              flush=True)
        out[name] = last
    if args.write:
        np.savez_compressed(parity.EXPECTED, **{**stored, **out})
        print(f"wrote {parity.EXPECTED}")
    print(f"worst relative difference: {worst:.2e} (tolerance {parity.TOLERANCE:g})")
    return 0 if worst <= parity.TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
