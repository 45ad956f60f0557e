"""`--plot FILE.png`: the latency percentile curve and throughput over time of some runs.

Left: latency by percentile, drawn the way HdrHistogram's plotter draws it, with the
x axis at log10(1 / (1 - percentile)) so that 90%, 99%, 99.9%, ... are evenly spaced and
the tail gets as much room as the median. Right: replies per second through the measured
window. Every run is one line on both, so rounds and compared results overlay.

matplotlib is an optional extra (``pip install 'tickwire[plot]'``): a load generator
host should not need a plotting stack to run a bench. `require_matplotlib` says so
before a run starts, rather than after it has been paid for.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.results import EchoRun
from bench.workers import BenchError

MISSING = (
    "--plot needs matplotlib, which is an optional extra: pip install 'tickwire[plot]' "
    "(or pip install matplotlib)"
)


class PlotUnavailable(BenchError):
    """matplotlib is not installed."""


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(MISSING) from None


def run_label(run: EchoRun, prefix: str = "") -> str:
    if run.mode == "login":
        what = f"login {run.store} n={run.scrypt_n}"
    elif run.scenario is not None:
        what = run.scenario
    elif run.mode == "open":
        what = f"echo open {run.rate:,.0f}/s"
    else:
        what = f"echo {run.conns}x{run.depth}"
    label = f"{run.target} {what}"
    if run.round > 1:
        label += f" r{run.round}"
    return f"{prefix}{label}"


def _x(percentile: float) -> float:
    """log10(1 / (1 - p)), with 100% (the max) a little past the last finite point."""
    remaining = 1.0 - percentile / 100.0
    return math.log10(1.0 / remaining) if remaining > 0 else math.inf


def plot_runs(runs: list[tuple[str, EchoRun]], path: str | Path, title: str = "") -> None:
    """Draw `runs` (label, run) into a PNG at `path`."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
    top = 1.0
    for label, run in runs:
        finite = [(_x(p), v) for p, v in run.latency_curve if p < 100.0]
        if not finite:
            continue
        top = max(top, finite[-1][0])
        xs = [x for x, _ in finite]
        values = [max(1, v) for _, v in finite]
        # The max sits half a decade past the last percentile the sample resolves.
        xs.append(finite[-1][0] + 0.5)
        values.append(max(1, run.max_us))
        lat.plot(xs, values, label=f"{label} (p99 {run.p99_us:,} µs)")
    decades = list(range(math.ceil(top + 0.5) + 1))
    lat.xaxis.set_major_locator(FixedLocator(decades))
    lat.xaxis.set_major_formatter(
        FuncFormatter(lambda x, _pos: f"{100 * (1 - 10.0 ** -float(x)):.{max(0, int(x) - 2)}f}%")
    )
    lat.set_xlim(0, top + 0.5)
    lat.set_yscale("log")
    lat.set_xlabel("percentile")
    lat.set_ylabel("latency (µs)")
    lat.set_title("latency by percentile")
    lat.grid(True, which="both", alpha=0.3)
    lat.legend(fontsize="small")

    highest = 0.0
    for label, run in runs:
        if not run.throughput:
            continue
        step = run.throughput_interval_s
        elapsed = run.elapsed_s or run.duration_s
        ends: list[float] = []
        rates: list[float] = []
        for i, count in enumerate(run.throughput):
            width = min(step, max(elapsed - i * step, 1e-9))
            ends.append(min((i + 1) * step, elapsed))
            rates.append(count / width)
        thr.plot([0.0, *ends], [rates[0], *rates], label=label, drawstyle="steps-pre")
        highest = max(highest, *rates)
        if run.mode == "open" and run.rate:
            thr.axhline(run.rate, linestyle="--", linewidth=0.8, color="grey")
            highest = max(highest, run.rate)
    thr.set_xlabel("seconds into the measured window")
    thr.set_ylabel("replies/s")
    # Headroom above the highest line, so a steady rate is not drawn on the frame.
    thr.set_ylim(0, highest * 1.15 or 1.0)
    thr.set_title("throughput over time")
    thr.grid(True, alpha=0.3)
    thr.legend(fontsize="small")

    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
