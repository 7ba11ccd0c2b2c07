"""``multinet info``: what one model is and which weights it has."""

from __future__ import annotations

from typing import TYPE_CHECKING

from multinet.cli.common import DATA_FORMATS, family_options, human_size, model_spec, print_json

if TYPE_CHECKING:
    from multinet.registry import ModelSpec


def add_parser(commands, parents):
    p = commands.add_parser(
        "info", parents=parents, help="what one model is and which weights it has",
        description="Architecture facts of one model (family, parameters, input sizes, "
                    "classifier layers, options) and its weights entries: origin URL, hash, "
                    "preprocessing, evaluation transform (resize, crop, interpolation), input "
                    "size, architecture options, and whether each is in the local cache.")
    p.add_argument("name", metavar="NAME", help="model name (see 'multinet list')")
    p.add_argument("--json", action="store_true", help="write JSON to stdout")
    p.set_defaults(handler=run)


def _entry_info(spec: ModelSpec, entry) -> dict:
    from multinet.weights import cache_dir, cached_path

    def file_info(url, file_hash, include_top):
        if url is None:
            return None
        path = cached_path(entry, include_top=include_top)
        return {
            "url": url,
            "hash": file_hash,
            "hash_algorithm": entry.hash_algorithm if file_hash else None,
            "cached": path is not None,
            "path": str(path or cache_dir() / url.rsplit("/", 1)[-1]),
            "size": path.stat().st_size if path else None,
        }

    return {
        "name": entry.name,
        "default": entry.name == spec.default_weights,
        "description": entry.description,
        "layout": entry.layout,
        "preprocessing": entry.preprocessing,
        "input_size": entry.input_size,
        "resize_size": entry.resize_size,
        "interpolation": entry.interpolation,
        "classes": entry.classes,
        "arch_options": dict(entry.arch_options),
        "file": file_info(entry.url, entry.file_hash, True),
        "notop_file": file_info(entry.notop_url, entry.notop_file_hash, False),
    }


def run(args) -> int:
    spec = model_spec(args.name)
    options = family_options(spec)
    data = {
        "name": spec.name,
        "description": spec.description,
        "family": spec.family.name,
        "parameters": spec.num_params,
        "default_size": spec.default_size,
        "min_size": spec.min_size,
        "fixed_top_size": spec.fixed_top_size,
        "head_layers": list(spec.family.head_layers),
        "preprocessing_by_layout": {layout: spec.family.preprocessing_for(layout)
                                    for layout in spec.family.preprocessing},
        "options": options,
        "weights": [_entry_info(spec, e) for e in spec.weights],
    }
    if args.json:
        print_json(data)
        return 0
    from multinet.preprocessing import describe_image_options, image_options

    print(f"{spec.name}: {spec.description}")
    facts = [
        ("family", spec.family.name),
        ("parameters", f"{spec.num_params:,} (with the 1000-class top)"),
        ("default input", f"{spec.default_size}x{spec.default_size} RGB"),
        ("minimum input", f"{spec.min_size}x{spec.min_size}"),
        ("top input", f"{spec.fixed_top_size}x{spec.fixed_top_size} only (other sizes: "
                      f"include_top=False)" if spec.fixed_top_size else "any size"),
        ("classifier", ", ".join(spec.family.head_layers) or "-"),
        ("preprocessing", ", ".join(f"{spec.family.preprocessing_for(layout)} for {layout} "
                                    f"files" for layout in spec.family.preprocessing) or "-"),
        ("data formats", ", ".join(DATA_FORMATS)),
        ("options", ", ".join(f"{k}={v!r}" for k, v in options.items()) or "-"),
    ]
    for key, value in facts:
        print(f"  {key:<15}{value}")
    print("weights:" if spec.weights else "weights: none published")
    for item in data["weights"]:
        alias = " (default: -w imagenet)" if item["default"] else ""
        print(f"  {item['name']}{alias}: {item['description']}")
        rows = [
            ("layout", item["layout"]),
            ("preprocessing", item["preprocessing"]),
            ("input size", f"{item['input_size']}x{item['input_size']}"),
            ("transform", describe_image_options(image_options(
                item["input_size"], item["resize_size"], item["interpolation"]))),
            ("classes", item["classes"]),
            ("arch options", ", ".join(f"{k}={v!r}" for k, v in item["arch_options"].items())
             or "-"),
        ]
        for label, key in (("file", "file"), ("notop file", "notop_file")):
            f = item[key]
            if f is None:
                continue
            rows.append((label, f["url"]))
            check = (f"{f['hash_algorithm']} {f['hash']}"
                     + (" (prefix)" if f["hash_algorithm"] == "sha256" and len(f["hash"]) < 64
                        else "")) if f["hash"] else "none published"
            rows.append(("  hash", check))
            rows.append(("  cached", f"yes, {f['path']} ({human_size(f['size'])})"
                         if f["cached"] else f"no (would be {f['path']})"))
        for label, value in rows:
            print(f"    {label:<15}{value}")
    return 0
