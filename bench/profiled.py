"""Run a program under pyinstrument and save its profile even if it leaves through os._exit.

    python -m bench.profiled OUT.pyisession -m lkbridge run -c config.toml
    python -m bench.profiled OUT.pyisession bench/baseline.py --port …
Render it with `pyinstrument --load=OUT.pyisession` (add `-r html -o x.html` for a page).
The daemon ends with os._exit (the LiveKit library can keep threads alive), which skips the
profiler's own exit hook; here os._exit saves the profile first.
"""

from __future__ import annotations

import os
import runpy
import sys

from pyinstrument import Profiler


def main() -> None:
    out, program = sys.argv[1], sys.argv[2:]
    # Main-thread samples of the event loop as a whole (callbacks and the selector's waits);
    # the LiveKit library's own threads are native and not sampled.
    profiler = Profiler(interval=0.001, async_mode="disabled")
    real_exit = os._exit

    def save() -> None:
        if profiler.is_running:
            profiler.stop().save(out)

    def exit_after_saving(code: int) -> None:
        save()
        real_exit(code)

    os._exit = exit_after_saving  # type: ignore[assignment]
    profiler.start()
    try:
        if program[0] == "-m":
            sys.argv = program[1:]
            runpy.run_module(program[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = program
            runpy.run_path(program[0], run_name="__main__")
    finally:
        save()


if __name__ == "__main__":
    main()
