"""`python -m services.bench` (what `make bench` runs); `--help` lists the modes and knobs."""

from __future__ import annotations

import signal
import sys
import time

from services.bench import comparison, report
from services.bench.gateway import VARIANTS, run_gateway
from services.bench.options import Options, parse
from services.bench.plot import plot_modes
from services.bench.session import ModeResult, Session


def stop_on_sigterm() -> None:
    """SIGTERM (timeout, a CI runner) unwinds like Ctrl-C, so the private stack is stopped, not orphaned."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    stop_on_sigterm()
    session = Session(options)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started = time.monotonic()
    try:
        run_modes(session, options)
    except (KeyboardInterrupt, SystemExit) as exc:
        session.notes.append(f"INTERRUPTED ({type(exc).__name__}): only the levels above finished")
        finish(session, options, stamp, time.monotonic() - started)
        return 130
    return finish(session, options, stamp, time.monotonic() - started)


def run_modes(session: Session, options: Options) -> None:
    session.run(direct="direct" in options.modes, stack="stack" in options.modes, stress="stress" in options.modes)
    if options.gateway:
        for variant in VARIANTS:
            described = (
                f"instant engine behind the private stack ({variant} responses, {options.gateway_tokens} tokens)"
            )
            session.modes[f"gateway-{variant}"] = ModeResult(described, [], {"worker_slots": options.gateway_slots})
        run_gateway(options, session.model.id, {v: session.modes[f"gateway-{v}"].levels for v in VARIANTS})
    if options.engines:
        from services.bench.engines import run_engines

        run_engines(session)


def finish(session: Session, options: Options, stamp: str, elapsed: float) -> int:
    """Print the tables and headline figures, then write the JSON and the plots."""
    print(f"\nmodel {session.model.id}, max_tokens {options.max_tokens}, temperature 0; run took {elapsed:.0f} s")
    for name, mode in session.modes.items():
        print(f"\n### {name}: {mode.target}\n")
        print(report.level_table(mode.levels, cpu=name.startswith("gateway")))
        warning = report.noise_warning(mode.levels)
        if warning:
            print(warning)
            session.notes.append(f"{name}: {warning}")
    lines = comparison.stack_vs_direct_text(session.figures())
    gateway = {
        v: comparison.gateway_figures(session.modes[f"gateway-{v}"].levels)
        for v in ("json", "stream")
        if f"gateway-{v}" in session.modes
    }
    for variant, figures in gateway.items():
        lines += comparison.gateway_text(figures, variant)
    lines += session.notes
    if lines:
        print("\n" + "\n".join(lines))
    results = {
        "meta": {
            "started": stamp,
            "elapsed_s": elapsed,
            "machine": report.machine(),
            "model": session.model.id,
            "max_tokens": options.max_tokens,
            "temperature": 0.0,
            "argv": sys.argv[1:],
        },
        "modes": {name: mode.to_json() for name, mode in session.modes.items()},
        "figures": {"stack_vs_direct": session.figures(), "gateway": gateway, **session.extra_figures},
        "litellm": comparison.LITELLM,
        "notes": session.notes,
    }
    path = report.write_json(options.out / f"bench-{stamp}.json", results)
    print(f"\nresults: {path}")
    if options.plot:
        for png in plots(session, options, stamp):
            print(f"plot: {png}")
    return 0 if all(lv.success_rate == 1.0 for mode in session.modes.values() for lv in mode.levels) else 1


def plots(session: Session, options: Options, stamp: str) -> list:
    groups = {
        "": ("direct", "stack"),
        "-gateway": ("gateway-json", "gateway-stream"),
    }
    made = []
    for suffix, names in groups.items():
        series = {n: session.modes[n].levels for n in names if n in session.modes}
        title = f"{session.model.id}, {options.max_tokens} tokens" if not suffix else "gateway only (instant engine)"
        png = plot_modes(series, options.out / f"bench-{stamp}{suffix}.png", title)
        if png:
            made.append(png)
    engines = {n.removeprefix("engine-"): m.levels for n, m in session.modes.items() if n.startswith("engine-")}
    png = plot_modes(engines, options.out / f"bench-{stamp}-engines.png", "engines through the stack and direct")
    if png:
        made.append(png)
    return made


if __name__ == "__main__":
    sys.exit(main())
