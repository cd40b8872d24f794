"""Child side of :func:`bench.harness.run_isolated`: ``python -m bench.worker <module:function> <json kwargs>``.

Imports the module, calls the function with the keyword arguments, adds this process's peak RSS and prints one
``BENCH_RESULT <json>`` line for the parent to read (anything else on stdout is progress and is ignored).
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys

from bench.harness import peak_rss_mib, set_threads


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bench.worker <module:function> '<json kwargs>'", file=sys.stderr)
        return 2
    target, raw = argv
    module_name, _, function_name = target.partition(":")
    kwargs = json.loads(raw)
    if not isinstance(kwargs, dict):
        raise ValueError(f"bench.worker: kwargs must be a JSON object, got {type(kwargs).__name__}.")
    set_threads(kwargs.get("threads"))
    fn = getattr(importlib.import_module(module_name), function_name)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "threads" in kwargs and "threads" not in params and not takes_any:
        kwargs.pop("threads")  # consumed here: the thread count is a property of the process, not of the figure
    result = fn(**kwargs)
    if not isinstance(result, dict):
        raise TypeError(f"bench.worker: {target} returned {type(result).__name__}; expected a dict.")
    result["peak_rss_mib"] = peak_rss_mib()
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
