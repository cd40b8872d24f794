"""``make bench``: run every benchmark module, then write ``<out>/<UTC timestamp>.{json,md}`` and ``<out>/latest.*``.

    python -m bench.run --out bench/results [--only bench.inference] [--quick | --full] [--repeats 3] [--threads 2]

Each module's ``run(ctx)`` returns figures (see :mod:`bench.harness`); this script adds a summary (median, min,
max, IQR, n) to each, and for a figure naming a ``reference`` the ratio of the two medians measured in this same
run. A module that raises is listed as failed with its error, the others are still written, and the exit status
is non-zero. No time is ever compared with a fixed number: only ratios within one run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import Context, machine_info, set_threads, summarise

MODULES = ("bench.inference", "bench.training", "bench.fct_comparison", "bench.monailabel")
#: What ``make bench`` runs within its 20 minutes; ``--full`` (``make bench-full``) runs every module, including
#: ``bench.monailabel`` (one RefNet request through the MONAI Label server on a 512 x 512 x 100 CT).
DEFAULT_MODULES = ("bench.inference", "bench.training")


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def summarise_figures(figures: list[dict]) -> list[dict]:
    """Add ``summary`` to every figure and ``ratio`` (median / reference median) where the reference exists."""
    by_name = {}
    for fig in figures:
        fig["summary"] = summarise(fig["values"])
        by_name[fig["name"]] = fig
    for fig in figures:
        ref = by_name.get(fig.get("reference", ""))
        if ref is not None and ref["summary"]["median"]:
            fig["ratio"] = fig["summary"]["median"] / ref["summary"]["median"]
    return figures


def goal_rows(report: dict) -> list[dict]:
    """One row per figure that carries a goal (:data:`bench.inference.GOALS`): the bundle, what was measured, the
    goal, ``met`` (True, False, or None in the smoke mode, which measures nothing) and, for a miss, the reasons read
    off the same run: how far off, the label-map agreement, the share of the matmul peak the path reached."""
    from bench.inference import GOAL_AGREEMENT

    figures = report["figures"]
    by_name = {f["name"]: f for f in figures}
    rows = []
    for fig in (f for f in figures if "goal" in f):
        goal, median = fig["goal"], fig["summary"]["median"]
        same_bundle = [f for f in figures if f["bundle"] == fig["bundle"]]
        agreement = [f["summary"]["min"] for f in same_bundle if f["unit"] == "Dice" and "lever" not in f]
        levers = [f for f in same_bundle if "lever" in f and f["unit"] in ("s", "Dice")]
        peak = next((f for n, f in by_name.items() if n.startswith(fig["name"] + " [fraction of")), None)
        reasons = []
        if "max_s" in goal:
            wanted, measured = f"<= {_fmt(goal['max_s'])} s", f"{_fmt(median)} s"
            if median > goal["max_s"]:
                reasons.append(f"{median / goal['max_s']:.1f}x the time")
        else:
            speedup = 1 / fig["ratio"] if fig.get("ratio") else None
            wanted = f">= {_fmt(goal['min_speedup'])}x fp32 eager"
            measured = f"{_fmt(speedup)}x ({_fmt(median)} s)" if speedup else f"{_fmt(median)} s, no eager figure"
            if speedup is None or speedup < goal["min_speedup"]:
                reasons.append("speed-up " + (f"{speedup:.1f}x" if speedup else "not measured"))
        if not agreement:
            reasons.append("agreement not measured")
        elif min(agreement) < GOAL_AGREEMENT:
            reasons.append(f"label maps agree at Dice {min(agreement):.4f} < {GOAL_AGREEMENT}")
        if reasons and peak is not None:
            fraction = peak["summary"]["median"]
            reasons.append(f"the path already runs at {fraction:.2f} of the matmul peak (at the whole peak: "
                           f"{_fmt(median * fraction)} s)")  # fmt: skip
        if reasons:
            for lever in sorted({f["lever"] for f in levers}):
                seconds = [f["summary"]["median"] for f in levers if f["lever"] == lever and f["unit"] == "s"]
                dice = [f["summary"]["min"] for f in levers if f["lever"] == lever and f["unit"] == "Dice"]
                if seconds and dice:
                    reasons.append(f"with {lever}: {_fmt(seconds[0])} s, label maps agree at Dice {dice[0]:.4f}")
        rows.append(
            {
                "bundle": fig["bundle"],
                "figure": fig["name"],
                "goal": wanted,
                "measured": measured,
                "agreement": min(agreement) if agreement else None,
                "met": None if report["quick"] else not reasons,
                "reasons": reasons,
            }
        )
    return rows


def _goals_markdown(report: dict) -> list[str]:
    rows = goal_rows(report)
    if not rows:
        return []
    from bench.inference import GOAL_AGREEMENT

    lines = [
        "",
        "## Goals: a whole case on 2 cores, default path",
        "",
        f"CPU kind of this run: {report['machine']['cpu']['kind']}; {report['threads']} torch threads. Each goal "
        f"holds with label maps agreeing at Dice >= {GOAL_AGREEMENT} with fp32 eager (the agreement figure of the same "
        "bundle in this run; on one window for the three heaviest networks).",
        "",
        "| bundle | goal | measured | agreement (min Dice) | met | reason of a miss |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = {None: "not measured (quick)", True: "**met**", False: "**missed**"}[row["met"]]
        agreement = "" if row["agreement"] is None else f"{row['agreement']:.4f}"
        reasons = "; ".join(row["reasons"])
        lines.append(f"| {row['bundle']} | {row['goal']} | {row['measured']} | {agreement} | {met} | {reasons} |")
    return lines


def markdown(report: dict) -> str:
    """One table per group: figure, median, spread (min-max), n, ratio vs its reference."""
    m = report["machine"]
    lines = [
        f"# Benchmark {report['timestamp']}",
        "",
        f"Machine: {m['cpu_model']}, {m['logical_cores']} logical cores, {report['threads']} torch threads; "
        f"python {m['python']}, torch {m['torch']}, monai {m['monai']}, numpy {m['numpy']}; "
        f"CPU kind: {m['cpu']['kind']}; `fast_cpu` runs in {m['cpu']['fast_cpu_precision']}; flags: "
        + ", ".join(f"{flag} {'yes' if has else 'no'}" for flag, has in m["cpu"]["flags"].items())
        + ".",
        f"Command: `{report['command']}`"
        + (" (quick smoke mode: tiny shapes, not a measurement)" if report["quick"] else "")
        + f". Wall time of the whole run: {report['wall_s']:.0f} s"
        + ("." if report["complete"] else " so far (INCOMPLETE: modules still to run are missing)."),
        "Ratios are median / reference median measured in this same run; spread is min-max over the repeats.",
        "",
    ]
    for mod in report["modules"]:
        status = "ok" if mod["ok"] else f"FAILED: {mod['error'].strip().splitlines()[-1]}"
        lines.append(f"- `{mod['module']}`: {status} ({mod['wall_s']:.0f} s)")
    lines += _goals_markdown(report)
    groups: dict[str, list[dict]] = {}
    for fig in report["figures"]:
        groups.setdefault(fig["group"], []).append(fig)
    for group, figs in groups.items():
        lines += [
            "",
            f"## {group}",
            "",
            "| figure | median | spread (min-max) | n | ratio vs reference |",
            "|---|---|---|---|---|",
        ]
        for fig in figs:
            s = fig["summary"]
            ratio = f"{_fmt(fig['ratio'])} vs {fig['reference']}" if "ratio" in fig else ""
            lines.append(
                f"| {fig['name']} | {_fmt(s['median'])} {fig['unit']} | {_fmt(s['min'])}-{_fmt(s['max'])} | {s['n']} "
                f"| {ratio} |"
            )
        notes = [f"- {fig['name']}: {fig['notes']}" for fig in figs if fig.get("notes")]
        if notes:
            lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="output folder")
    parser.add_argument("--only", action="append", choices=MODULES, help="run only this module (repeatable)")
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny shapes, one repeat")
    parser.add_argument(
        "--full",
        action="store_true",
        help="also what the 20-minute budget leaves out: the fp32 eager pass of COHRA-UNet, the student and the "
        "RefNet cascade over the whole case, the foreground crop of the 3D networks as lever rows, the "
        "FCT-vs-BasicUNet Dice comparison (about 15 more minutes before the crop rows were added), and "
        "refnet_synapse's inference command on a 512x512x400 CT, peak RSS and wall time (about 25 more minutes)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats per figure (default 3; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every measurement (default 2)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    threads = set_threads(args.threads)
    ctx = Context(
        repeats=1 if args.quick else args.repeats,
        quick=args.quick,
        full=args.full,
        threads=threads,
        work_dir=args.out / ("work_quick" if args.quick else "work"),
    )
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    figures, modules = [], []
    selected = args.only or (MODULES if args.full else DEFAULT_MODULES)
    for name in selected:
        t0 = time.perf_counter()
        print(f"[bench {time.perf_counter() - start:6.0f} s] {name} ...", flush=True)
        try:
            module_figures = importlib.import_module(name).run(ctx)
            figures += module_figures
            modules.append({"module": name, "ok": True, "figures": len(module_figures)})
        except Exception:
            error = traceback.format_exc()
            print(f"[bench] {name} FAILED:\n{error}", file=sys.stderr, flush=True)
            modules.append({"module": name, "ok": False, "error": error})
        modules[-1]["wall_s"] = time.perf_counter() - t0
        print(f"[bench {time.perf_counter() - start:6.0f} s] {name} done in {modules[-1]['wall_s']:.0f} s", flush=True)
        # Written after every module, so a run stopped part-way still leaves what it measured ("complete": false).
        complete = len(modules) == len(selected)
        report = {
            "timestamp": stamp,
            "command": command,
            "complete": complete,
            "quick": args.quick,
            "full": args.full,
            "repeats": ctx.repeats,
            "threads": threads,
            "machine": machine_info(),
            "modules": modules,
            "figures": summarise_figures(figures),
            "wall_s": time.perf_counter() - start,
        }
        write_report(report, args.out)
    print(f"[bench {report['wall_s']:6.0f} s] wrote {args.out / (stamp + '.json')} and .md", flush=True)
    return 0 if all(m["ok"] for m in modules) else 1


def write_report(report: dict, out: Path) -> None:
    """``<out>/<timestamp>.{json,md}`` and ``<out>/latest.{json,md}``, each replaced whole (temp file, rename)."""
    text, md = json.dumps(report, indent=2), markdown(report)
    for base in (report["timestamp"], "latest"):
        for suffix, content in ((".json", text), (".md", md)):
            tmp = out / f".{base}{suffix}.tmp"
            tmp.write_text(content)
            tmp.replace(out / f"{base}{suffix}")


if __name__ == "__main__":
    sys.exit(main())
