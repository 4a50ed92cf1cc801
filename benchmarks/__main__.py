"""`python -m benchmarks [NAME ...]`: run benchmarks and update docs/benchmarks.md."""

from __future__ import annotations

import argparse
import importlib
import sys

from benchmarks.report import write_section

# name -> module; each module has TITLE and run() -> markdown.
BENCHMARKS = {
    "localkube": "benchmarks.localkube_bench",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"default: all of {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        print(f"[bench] {name}: {module.TITLE}", file=sys.stderr, flush=True)
        body = module.run()
        write_section(name, module.TITLE, f"python -m benchmarks {name}", body)
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
