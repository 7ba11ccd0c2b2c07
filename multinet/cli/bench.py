"""``multinet bench``: time one model on this backend."""

from __future__ import annotations

from multinet.cli.common import (
    DATA_FORMATS,
    CommandError,
    err,
    model_spec,
    positive_int,
    print_json,
)


def add_parser(commands, parents):
    p = commands.add_parser(
        "bench", parents=parents, help="time one model on this backend",
        description="Inference (or training) throughput of one model with random weights on "
                    "the current backend, timed by multinet.benchmark.run_benchmark.")
    p.add_argument("-m", "--model", required=True, metavar="NAME", help="model name")
    p.add_argument("--batch-size", type=positive_int, nargs="+", default=[1, 8],
                   metavar="N", help="one or more batch sizes (default: 1 8)")
    p.add_argument("--image-size", type=positive_int, default=None, metavar="PX",
                   help="input height and width (default: the model's default size)")
    p.add_argument("--data-format", choices=DATA_FORMATS, default=None,
                   help="default: keras.config.image_data_format()")
    p.add_argument("--task", choices=("inference", "train"), default="inference")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "mixed_bfloat16"),
                   default="float32")
    p.add_argument("--repeats", type=positive_int, default=10, metavar="N",
                   help="timed calls per batch size (default: 10)")
    p.add_argument("--warmup", type=positive_int, default=2, metavar="N",
                   help="untimed calls first (default: 2)")
    p.add_argument("--json", action="store_true", help="write the results as JSON to stdout")
    p.set_defaults(handler=run)


def run(args) -> int:
    from multinet.benchmark import run_benchmark

    spec = model_spec(args.model)
    size = args.image_size or spec.default_size
    if size < spec.min_size:
        raise CommandError(f"{spec.name} needs images of at least {spec.min_size}x"
                           f"{spec.min_size}, got --image-size {size}")
    results = []
    for batch_size in args.batch_size:
        kwargs = {}
        if spec.fixed_top_size and size != spec.fixed_top_size:
            kwargs["include_top"] = False
        result = run_benchmark(
            spec.name, batch_size=batch_size, image_size=size, data_format=args.data_format,
            task=args.task, dtype=args.dtype, warmup=args.warmup, repeats=args.repeats,
            **kwargs)
        results.append(result)
        if not args.json:
            if result["status"] != "ok":
                err(f"multinet bench: batch {batch_size}: {result['status']}: "
                    f"{result.get('error', '')}")
                continue
            if len(results) == 1:
                print(f"{spec.name} {args.task}, {size}x{size}, {result['data_format']}, "
                      f"{args.dtype}, {result['backend']} {result['framework_version']} on "
                      f"{result['device']} ({result['cpu_count']} CPUs)")
                print(f"{'batch':>6}  {'img/s':>9}  {'q1..q3':>17}  {'ms/call':>9}  "
                      f"{'first call':>10}")
            print(f"{batch_size:>6}  {result['images_per_s']:>9.1f}  "
                  f"{result['images_per_s_q1']:>8.1f}..{result['images_per_s_q3']:<8.1f}  "
                  f"{1000 * result['seconds_per_call_median']:>9.1f}  "
                  f"{result['first_call_s']:>9.2f}s")
    if args.json:
        print_json(results)
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        if args.json:
            err(f"multinet bench: {len(failed)} of {len(results)} configurations failed")
        return 1
    return 0
