"""`python -m bench` (what `make bench` runs); `--help` lists the modes and knobs."""

from __future__ import annotations

import signal
import sys
import time

from bench import comparison, goals, report
from bench.options import Options, parse
from bench.plot import plot_modes
from bench.session import Session


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
    if options.engines:  # first: the figures with a real model need the quietest machine
        from bench.engines import run_engines

        run_engines(session)
    if options.gateway:
        from bench.gateway import run_gateway

        run_gateway(session)
    if options.on_demand:
        from bench.on_demand import run_on_demand

        run_on_demand(session)


def finish(session: Session, options: Options, stamp: str, elapsed: float) -> int:
    """Print the tables and headline figures, then write the JSON and the plots."""
    print(f"\nmodel {session.model.id}, max_tokens {options.max_tokens}, temperature 0; run took {elapsed:.0f} s")
    for name, mode in session.modes.items():
        print(f"\n### {name}: {mode.target}\n")
        print(report.level_table(mode.levels, cpu=name.startswith(("gateway", "litellm", "engine"))))
        warning = report.noise_warning(mode.levels)
        if warning:
            print(warning)
            session.notes.append(f"{name}: {warning}")
    lines = comparison.stack_vs_direct_text(session.figures())
    gateway = {  # ours under "json"/"stream", LiteLLM's under "litellm-json"/"litellm-stream"
        name.removeprefix("gateway-"): comparison.gateway_figures(session.modes[name].levels)
        for name in ("gateway-json", "gateway-stream", "litellm-json", "litellm-stream")
        if name in session.modes
    }
    for variant in ("json", "stream"):
        if variant in gateway:
            lines += comparison.gateway_text(gateway[variant], variant, gateway.get(f"litellm-{variant}"))
    found = goal_figures(session, options) if options.goals else []
    if found:
        theirs = session.modes["litellm-json"].levels if "litellm-json" in session.modes else []
        lines += goals.text(found, next((lv for lv in theirs if lv.concurrency == goals.CLIENTS), None))
    if "on_demand" in session.extra_figures:
        from bench import on_demand_figures

        lines += on_demand_figures.text(session.extra_figures["on_demand"])
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
        "figures": {
            "stack_vs_direct": session.figures(),
            "gateway": gateway,
            **session.extra_figures,
            **({"goals": goals.to_json(found)} if found else {}),
        },
        "litellm": comparison.LITELLM,
        "notes": session.notes,
    }
    path = report.write_json(options.out / f"bench-{stamp}.json", results)
    print(f"\nresults: {path}")
    if options.plot:
        for png in plots(session, options, stamp):
            print(f"plot: {png}")
    return 0 if all(lv.success_rate == 1.0 for mode in session.modes.values() for lv in mode.levels) else 1


def goal_figures(session: Session, options: Options) -> list[goals.Figure]:
    levels = {name: mode.levels for name, mode in session.modes.items()}
    return goals.figures(levels, tokens=options.max_tokens, high=max(options.engine_levels), clients=goals.CLIENTS)


def plots(session: Session, options: Options, stamp: str) -> list:
    groups = {
        "": ("direct", "stack"),
        "-gateway": ("gateway-json", "gateway-stream", "litellm-json", "litellm-stream"),
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
