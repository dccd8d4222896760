#!/usr/bin/env python
"""Turn saved pytest-benchmark JSON into the Markdown tables README shows.

    python benchmarks/report.py benchmarks/results/<device>/bench_cpu.json [more.json ...]
    python benchmarks/report.py --compare BASELINE.json NEW.json [--max-slowdown 15]

One table per op; one row per benchmark group (a case), one column per implementation with its
median time, and the ratio of each baseline's median to the fused median (> 1: fused is faster;
an op without a fused impl, such as the JPEG decoders, is compared to its first impl by name),
plus peak memory. The machine is named from the JSON (extra_info["device_name"] or machine_info).

--compare lists the benchmarks of NEW whose median is more than --max-slowdown percent above the
same benchmark's in BASELINE (the rule of pytest-benchmark's --benchmark-compare-fail=median:N%),
and exits 1 when there is one; benchmarks/run_benchmarks.py --compare prints it after a run.
"""
import argparse
import json
import math
import sys
from collections import OrderedDict, defaultdict


def fmt_time(s):
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def machine_name(doc):
    for b in doc.get("benchmarks", []):
        name = b.get("extra_info", {}).get("device_name")
        if name:
            return name
    mi = doc.get("machine_info", {})
    cpu = mi.get("cpu", {}).get("brand_raw") or mi.get("processor", "?")
    return f"{cpu}, {mi.get('cpu', {}).get('count', '?')} cores"


def report(paths):
    lines = []
    for path in paths:
        doc = json.load(open(path))
        by_op = defaultdict(lambda: OrderedDict())
        for b in doc.get("benchmarks", []):
            info = b.get("extra_info", {})
            op = info.get("op", "?")
            case = info.get("case", b.get("group") or b["name"])
            by_op[op].setdefault(case, {})[info.get("impl", b["name"])] = (b["stats"], info)
        lines.append(f"Machine: **{machine_name(doc)}** (`{path}`)\n")
        for op, cases in by_op.items():
            impls = []
            for rows in cases.values():
                impls += [i for i in rows if i not in impls]
            impls.sort(key=lambda i: (i != "fused", i))
            base = impls[0]  # "fused" when the op has it
            head = ["case"] + [f"{i} (median)" for i in impls]
            head += [f"{i} / {base}" for i in impls if i != base]
            head += [f"peak MiB {i}" for i in impls]
            lines.append(f"**{op}**\n")
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            for case, rows in cases.items():
                med = {i: rows[i][0]["median"] for i in rows}
                cells = [case] + [fmt_time(med[i]) if i in med else "n/a" for i in impls]
                for i in impls:
                    if i == base:
                        continue
                    ok = i in med and base in med
                    cells.append(f"{med[i] / med[base]:.2f}x" if ok else "n/a")
                for i in impls:
                    pk = rows.get(i, (None, {}))[1].get("peak_mib")
                    cells.append(f"{pk:.0f}" if isinstance(pk, (int, float)) else "n/a")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def compare(baseline, current, field="median"):
    """One row per benchmark present in both runs (matched by pytest-benchmark's fullname), with
    its op, case and implementation, both `field` values in seconds and the change in percent
    (new / old * 100 - 100, as pytest-benchmark's percentage check), slowest change first."""
    old_by_name = {b["fullname"]: b for b in baseline.get("benchmarks", [])}
    rows = []
    for b in current.get("benchmarks", []):
        old = old_by_name.get(b["fullname"])
        if old is None:
            continue
        info = b.get("extra_info", {})
        t_old, t_new = old["stats"][field], b["stats"][field]
        rows.append({
            "fullname": b["fullname"],
            "op": info.get("op", "?"),
            "case": info.get("case", b.get("group") or b["name"]),
            "impl": info.get("impl", b["name"]),
            "old": t_old,
            "new": t_new,
            "change_pct": t_new / t_old * 100 - 100 if t_old > 0 else math.inf,
        })
    rows.sort(key=lambda r: -r["change_pct"])
    return rows


def slower(rows, max_slowdown_pct):
    """The rows whose change exceeds max_slowdown_pct (a regression)."""
    return [r for r in rows if r["change_pct"] > max_slowdown_pct]


def format_comparison(rows, max_slowdown_pct, baseline_name="baseline", field="median"):
    bad = slower(rows, max_slowdown_pct)
    lines = [f"{len(rows)} benchmarks compared with {baseline_name} ({field}): {len(bad)} slower "
             f"by more than {max_slowdown_pct:g}%"]
    if bad:
        ops = sorted({r["op"] for r in bad})
        lines.append(f"ops that got slower: {', '.join(ops)}")
        lines.append("")
        lines.append(f"| op | case | impl | {field} before | {field} now | change |")
        lines.append("|---|---|---|---|---|---|")
        for r in bad:
            lines.append(f"| {r['op']} | {r['case']} | {r['impl']} | {fmt_time(r['old'])} | "
                         f"{fmt_time(r['new'])} | {r['change_pct']:+.1f}% |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("json", nargs="*", help="pytest-benchmark JSON files to tabulate")
    ap.add_argument("--compare", nargs=2, metavar=("BASELINE", "NEW"),
                    help="list NEW's benchmarks that are slower than in BASELINE; exit 1 if any")
    ap.add_argument("--max-slowdown", type=float, default=15.0, metavar="PCT",
                    help="percent of median slowdown that counts as a regression (default 15)")
    args = ap.parse_args(argv)
    if args.compare:
        base_path, new_path = args.compare
        rows = compare(json.load(open(base_path)), json.load(open(new_path)))
        print(format_comparison(rows, args.max_slowdown, baseline_name=base_path))
        return 1 if slower(rows, args.max_slowdown) else 0
    if not args.json:
        ap.error("give JSON files to tabulate, or --compare BASELINE NEW")
    print(report(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
