"""Where a durakv process's loop turns go (issue 11's stalls): a trio Instrument
put into every `trio.run` of the processes of a tree started with

    DURAKV_LOOPWATCH_MS=30 PYTHONPATH=scripts/loopwatch python -m durakv.server.cli serve ...
    DURAKV_LOOPWATCH_MS=30 PYTHONPATH=scripts/loopwatch python scripts/large_values.py ...

Each process appends to DURAKV_LOOPWATCH_OUT.<pid> (default /tmp/loopwatch.<pid>):
`CPUTURN`/`CPUSTEP` lines for loop turns and task steps that used more than a third
of the threshold in CPU time of the loop's thread (thread_time: what the process
itself spent, which a loaded machine does not inflate), `TURN` lines for turns
longer than the threshold in wall time with their three longest steps, and `LAG`
lines when a callback posted from a watchdog thread waited longer than the
threshold, with the loop thread's stack sampled meanwhile, and `GC` lines for cyclic
garbage collections that took more than a third of the threshold in CPU time (a
collection runs wherever an allocation triggers it, maybe between task steps) (sampling needs the
GIL: a stack taken late shows where the loop was once it let go). Diagnosis only:
it costs a few microseconds per task step. Session 9 found the big SET's stalls with it.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import traceback

if os.environ.get("DURAKV_LOOPWATCH_MS"):
    import trio

    THRESHOLD_S = float(os.environ["DURAKV_LOOPWATCH_MS"]) / 1000
    OUT = os.environ.get("DURAKV_LOOPWATCH_OUT", "/tmp/loopwatch")
    POST_EVERY_S = 0.002
    SKIP = ("sitecustomize", "trio/_core/_run.py", "<frozen")

    def _stack(frame) -> str:
        return "".join(line for line in traceback.format_stack(frame, limit=12) if not any(s in line for s in SKIP))

    class LoopWatch(trio.abc.Instrument):
        def __init__(self) -> None:
            self.main = threading.get_ident()
            self.out = open(f"{OUT}.{os.getpid()}", "a", buffering=1)
            self.token: trio.lowlevel.TrioToken | None = None
            self.step_wall = self.step_cpu = 0.0
            self.turn_wall = time.perf_counter()
            self.turn_cpu = time.thread_time()
            self.steps: list[tuple[float, float, str]] = []

        def _watchdog(self) -> None:
            assert self.token is not None
            while True:
                time.sleep(POST_EVERY_S)
                posted = time.perf_counter()
                ran = threading.Event()
                try:
                    self.token.run_sync_soon(ran.set)
                except trio.RunFinishedError:
                    return
                samples = []
                while not ran.wait(THRESHOLD_S / 2):
                    frame = sys._current_frames().get(self.main)
                    samples.append((time.perf_counter() - posted, _stack(frame) if frame else "?"))
                lag = time.perf_counter() - posted
                if lag > THRESHOLD_S:
                    self.out.write(f"{time.time():.3f} LAG {lag * 1000:.1f} ms\n")
                    for at, stack in samples:
                        self.out.write(f"  at {at * 1000:.1f} ms:\n{stack}\n")

        def _gc(self, phase: str, info: dict) -> None:
            if phase == "start":
                self.gc_cpu = time.thread_time()
            elif (cpu := time.thread_time() - self.gc_cpu) > THRESHOLD_S / 3:
                self.out.write(f"{time.time():.3f} GC gen {info['generation']} cpu {cpu * 1000:.1f} ms "
                               f"collected {info['collected']}\n")

        def before_run(self) -> None:
            self.gc_cpu = 0.0
            gc.callbacks.append(self._gc)
            self.token = trio.lowlevel.current_trio_token()
            threading.Thread(target=self._watchdog, name="loopwatch", daemon=True).start()

        def before_task_step(self, task) -> None:
            self.step_wall = time.perf_counter()
            self.step_cpu = time.thread_time()

        def after_task_step(self, task) -> None:
            wall = time.perf_counter() - self.step_wall
            cpu = time.thread_time() - self.step_cpu
            self.steps.append((cpu, wall, task.name))
            if cpu > THRESHOLD_S / 3:
                self.out.write(f"{time.time():.3f} CPUSTEP cpu {cpu * 1000:.1f} ms "
                               f"wall {wall * 1000:.1f} ms {task.name}\n")

        def before_io_wait(self, timeout: float) -> None:
            wall = time.perf_counter() - self.turn_wall
            cpu = time.thread_time() - self.turn_cpu
            if cpu > THRESHOLD_S / 3:
                self.out.write(f"{time.time():.3f} CPUTURN cpu {cpu * 1000:.1f} ms wall {wall * 1000:.1f} ms\n")
            if wall > THRESHOLD_S:
                top = [(round(c * 1000, 1), round(w * 1000, 1), n) for c, w, n in sorted(self.steps, reverse=True)[:3]]
                self.out.write(f"{time.time():.3f} TURN {wall * 1000:.1f} ms, {len(self.steps)} steps, "
                               f"top (cpu ms, wall ms, task) {top}\n")
            self.steps = []

        def after_io_wait(self, timeout: float) -> None:
            self.turn_wall = time.perf_counter()
            self.turn_cpu = time.thread_time()

    _trio_run = trio.run

    def _run_watched(*args, **kwargs):
        kwargs["instruments"] = [*kwargs.get("instruments", ()), LoopWatch()]
        return _trio_run(*args, **kwargs)

    trio.run = _run_watched
