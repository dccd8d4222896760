#!/usr/bin/env python
"""Turn saved pytest-benchmark JSON into the Markdown tables README shows.

    python benchmarks/report.py benchmarks/results/<device>/bench_cpu.json [more.json ...]

One table per op; one row per benchmark group (a case), one column per implementation with its
median time, and the ratio of each baseline's median to the fused median (> 1: fused is faster),
plus peak memory. The machine is named from the JSON (extra_info["device_name"] or machine_info).
"""
import json
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
            head = ["case"] + [f"{i} (median)" for i in impls]
            head += [f"{i} / fused" for i in impls if i != "fused"]
            head += [f"peak MiB {i}" for i in impls]
            lines.append(f"**{op}**\n")
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            for case, rows in cases.items():
                med = {i: rows[i][0]["median"] for i in rows}
                cells = [case] + [fmt_time(med[i]) if i in med else "n/a" for i in impls]
                for i in impls:
                    if i == "fused":
                        continue
                    ok = i in med and "fused" in med
                    cells.append(f"{med[i] / med['fused']:.2f}x" if ok else "n/a")
                for i in impls:
                    pk = rows.get(i, (None, {}))[1].get("peak_mib")
                    cells.append(f"{pk:.0f}" if isinstance(pk, (int, float)) else "n/a")
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(report(sys.argv[1:]))
