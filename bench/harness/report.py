"""The harness's outputs: the final table (with each figure's ratio StreamHouse / peer and the
spread over alternating runs), the monthly bill at a sustained rate, and PNG charts."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from streamhouse.cost import GIB, HOURS_PER_MONTH, Prices

PUT_CLASS = ("PUT", "POST", "LIST", "COPY")  # billed at the PUT price
GET_CLASS = ("GET", "HEAD")  # billed at the GET price; DELETE is free


def figures(run: dict[str, Any]) -> dict[str, float]:
    """The comparable figures of one run (missing ones left out)."""
    out: dict[str, float] = {}
    for ph in run["phases"]:
        if "produce" in ph:
            out["produce rec/s"] = ph["produce"]["records_per_s"]
            out["produce MB/s"] = ph["produce"]["mb_per_s"]
            for key, tag in (("load_latency_ms", "produce"), ("produce_latency_ms", "probe")):
                lat = ph.get(key) or {}
                if lat.get("p99") is not None:
                    out[f"{tag} p50 ms"] = lat["p50"]
                    out[f"{tag} p99 ms"] = lat["p99"]
            if ph.get("produced_gb") and ph.get("store_counted"):
                req = ph["requests_per_gb_produced"]
                out["PUT/GB produced"] = sum(req.get(k, 0) for k in PUT_CLASS)
        if "consume" in ph:
            out["consume rec/s"] = ph["consume"]["records_per_s"]
            out["consume MB/s"] = ph["consume"]["mb_per_s"]
            if ph.get("consumed_gb") and ph.get("store_counted"):
                req = ph["requests_per_gb_consumed"]
                out["GET/GB consumed"] = sum(req.get(k, 0) for k in GET_CLASS)
        lat = ph.get("e2e_latency_ms") or {}
        if lat.get("p99") is not None:
            out["e2e p50 ms"] = lat["p50"]
            out["e2e p99 ms"] = lat["p99"]
        gb = ph.get("produced_gb") or ph.get("consumed_gb")
        if gb:
            tag = "produce" if "produce" in ph else "consume"
            total = sum(ph["server_cpu_s"].values())
            out[f"server CPU-s/GB {tag}"] = total / gb
    return out


def monthly_bill(runs: list[dict[str, Any]], mb_per_s: float, retention_days: float) -> dict:
    """Object-store bill of a month at `mb_per_s` produced (and read once), from the requests
    per GB counted on the wire, at S3 list prices (streamhouse/cost.py). Storage is the data
    of `retention_days` at that rate."""
    prices = Prices()
    gb_month = mb_per_s * 1e6 * 3600 * HOURS_PER_MONTH / 1e9
    puts = gets = 0.0
    n = 0
    for run in runs:
        if not all(ph.get("store_counted") for ph in run["phases"]):
            continue
        put_gb = get_gb = 0.0
        for ph in run["phases"]:
            if ph.get("produced_gb"):
                put_gb += sum(ph["requests_per_gb_produced"].get(k, 0) for k in PUT_CLASS)
                if "consume" not in ph:
                    continue
            if ph.get("consumed_gb"):
                get_gb += sum(ph["requests_per_gb_consumed"].get(k, 0) for k in GET_CLASS)
        puts += put_gb
        gets += get_gb
        n += 1
    if not n:
        return {}  # requests were not counted (local folder, in-memory peer)
    put_gb, get_gb = puts / n, gets / n
    stored_gib = mb_per_s * 1e6 * 86400 * retention_days / GIB
    lines = {
        "PUT-class requests": put_gb * gb_month / 1000 * prices.s3_put_per_1000_usd,
        "GET-class requests": get_gb * gb_month / 1000 * prices.s3_get_per_1000_usd,
        "storage": stored_gib * prices.s3_gb_month_usd,
    }
    return {
        "mb_per_s": mb_per_s,
        "retention_days": retention_days,
        "put_class_per_gb": put_gb,
        "get_class_per_gb": get_gb,
        "usd": lines,
        "total_usd": sum(lines.values()),
    }


def table(runs: list[dict[str, Any]]) -> str:
    per_run = [(r["label"], figures(r)) for r in runs]
    names: list[str] = []
    for _, f in per_run:
        names.extend(k for k in f if k not in names)
    width = max([len(n) for n in names] + [10])
    head = f"{'figure':<{width}}" + "".join(f"{label:>16}" for label, _ in per_run)
    brokers = sorted({r["broker"] for r in runs})
    peer = [b for b in brokers if b != "streamhouse"]
    if peer and "streamhouse" in brokers:
        head += f"{'ratio SH/' + peer[0]:>16}   spread (SH | {peer[0]})"
    lines = [head]
    for name in names:
        row = f"{name:<{width}}"
        for _, f in per_run:
            row += f"{_fmt(f.get(name)):>16}"
        if peer and "streamhouse" in brokers:
            sh = [
                f[name]
                for (_, f), r in zip(per_run, runs, strict=True)
                if r["broker"] == "streamhouse" and name in f
            ]
            pe = [
                f[name]
                for (_, f), r in zip(per_run, runs, strict=True)
                if r["broker"] == peer[0] and name in f
            ]
            if sh and pe and statistics.median(pe):
                ratio = statistics.median(sh) / statistics.median(pe)
                row += f"{ratio:>15.2f}x   {_fmt(min(sh))}-{_fmt(max(sh))} | "
                row += f"{_fmt(min(pe))}-{_fmt(max(pe))}"
        lines.append(row)
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def charts(runs: list[dict[str, Any]], path: Path) -> None:
    """One PNG: throughput over time, latency over time (the load's produce acknowledgements,
    the probe's, end to end), latency percentiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 12))
    tput, lat, pct = axes
    bars: list[tuple[str, dict[str, Any]]] = []
    for run in runs:
        for ph in run["phases"]:
            tl = ph.get("timeline") or []
            for col, what in ((1, "produced"), (2, "consumed")):
                pts = [
                    ((a[0] + b[0]) / 2, (b[col] - a[col]) / (b[0] - a[0]))
                    for a, b in zip(tl, tl[1:], strict=False)
                    if b[0] > a[0]
                ]
                if any(v for _, v in pts):
                    label = f"{run['label']} {ph['name']} {what}"
                    tput.plot([x for x, _ in pts], [y for _, y in pts], label=label)
            for key, kind in (
                ("load_latency_series", "produce"),
                ("produce_latency_series", "probe"),
                ("e2e_latency_series", "e2e"),
            ):
                series = ph.get(key) or []
                if series:
                    xs, ys = [x for x, _ in series], [y for _, y in series]
                    lat.plot(xs, ys, ".", markersize=2, label=f"{run['label']} {kind}")
            for key, kind in (
                ("load_latency_ms", "produce"),
                ("produce_latency_ms", "probe"),
                ("e2e_latency_ms", "e2e"),
            ):
                if (ph.get(key) or {}).get("p99") is not None:
                    bars.append((f"{run['label']}\n{kind}", ph[key]))
    tput.set_title("throughput over time (records/s)")
    tput.set_xlabel("seconds into the phase")
    lat.set_title("latency over time (ms)")
    lat.set_xlabel("seconds into the phase")
    lat.set_yscale("log")
    quantiles = ("p50", "p90", "p99", "max")
    for i, q in enumerate(quantiles):
        pct.bar(
            [j + i * 0.2 for j in range(len(bars))],
            [b[1][q] for b in bars],
            width=0.2,
            label=q,
        )
    pct.set_xticks([j + 0.3 for j in range(len(bars))], [b[0] for b in bars], fontsize=7)
    pct.set_title("latency percentiles (ms)")
    pct.set_yscale("log")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
