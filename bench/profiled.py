"""Run a module (a service process) under a profiler; write the profile when SIGTERM or SIGINT stops it.

pyinstrument (a sampling profiler, in the dev extras) is preferred: cProfile
counts every resumption of a coroutine as a call and charges awaits on C futures as the awaiting
frame's own time, which misleads in an asyncio server. Either way the profile must be written from a
signal handler: uvicorn re-raises the signal after its graceful shutdown, and the default handler
would end the process before any profiler writes.

    python -m bench.profiled OUT services.cli serve intake --role api --port 8101
    python -m bench.profiled --report OUT         (print a profile written by a run)
"""

from __future__ import annotations

import cProfile
import pstats
import runpy
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

pyinstrument: Any
try:
    import pyinstrument
except ImportError:  # optional: not a project dependency
    pyinstrument = None


def run(out: str, module: str, args: list[str]) -> None:
    stop: Callable[[], None]
    if pyinstrument is not None:
        sampler = pyinstrument.Profiler(interval=0.001, async_mode="disabled")
        sampler.start()

        def stop() -> None:
            if sampler.is_running:
                sampler.stop()
                sampler.last_session.save(out)  # type: ignore[union-attr]
    else:
        tracer = cProfile.Profile()
        tracer.enable()

        def stop() -> None:
            tracer.disable()
            tracer.dump_stats(out)

    def finish(_signum: int, _frame: FrameType | None) -> None:
        stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        stop()


def report(path: Path, limit: int = 30) -> str:
    """The hottest functions by their own time, then the call tree of where the time went."""
    if path.read_bytes()[:1] == b"{" and pyinstrument is not None:
        from pyinstrument.renderers import ConsoleRenderer
        from pyinstrument.session import Session

        session = Session.load(str(path))
        flat = ConsoleRenderer(flat=True, time="percent_of_total", short_mode=True).render(session)
        tree = ConsoleRenderer(time="percent_of_total", short_mode=True).render(session)
        return "\n".join(flat.splitlines()[: limit + 8]) + "\n" + tree
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime")
    stats.print_stats(limit)
    return ""


def main() -> None:
    if sys.argv[1:2] == ["--report"]:
        print(report(Path(sys.argv[2])))
        return
    out, module, *args = sys.argv[1:]
    run(out, module, args)


if __name__ == "__main__":
    main()
