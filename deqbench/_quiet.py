"""The quiet check: is this machine quiet enough for a timing to mean anything?

``deqbench quiet [--max-load L] [--wait S] [--noise F] [--strict] -- CMD [ARGS...]``

1. Waits, at most ``--wait`` seconds, until the one-minute load average is at
   most ``--max-load``; a machine that never gets there runs nothing (exit 3).
2. Runs ``CMD`` and counts, from ``/proc/stat``, the CPU time the whole
   machine spent busy meanwhile. What ``CMD`` and the processes it waited for
   used (``wait4``'s resource usage) is its own; the rest was taken by OTHER
   processes. That time, as a share of ``wall x cpus``, and the hypervisor's
   steal share decide the verdict: CLEAN when both are at most ``--noise``
   (5%), else NOISY.
3. Prints one summary line on stderr, e.g.
   ``quiet: CLEAN: wall 12.9 s on 2 cpus, own cpu 24.4 s, other processes
   0.1 s (0.4% of the machine), steal 0.0%, load 0.08 at start, peak 1.02``,
   and exits with ``CMD``'s status, or 4 with ``--strict`` when NOISY.

Quote that line next to every figure timed through it. The same measurement
runs inside a Python process with :class:`Meter` (the peers harness and the
calibration use it). Linux only: it reads ``/proc``; elsewhere it stops with
:class:`QuietUnavailable` saying so.

What it cannot see: a noisy neighbour on the host that takes no steal time
(memory bandwidth, shared caches), and processes ``CMD`` started but did not
wait for (their time counts as other processes').
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Meter", "QuietUnavailable", "Snapshot", "Summary", "classify", "main_quiet",
           "read_load", "snapshot", "wait_for_quiet"]

#: Largest share of the machine other processes (or steal) may take in a CLEAN run.
NOISE = 0.05
#: One-minute load average at most this before a run starts.
MAX_LOAD = 0.5
#: Seconds to wait for it, and between two looks.
WAIT_S = 600.0
POLL_S = 5.0
#: Exit statuses of ``deqbench quiet`` besides the command's own.
NEVER_QUIET = 3
NOISY_STRICT = 4

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class QuietUnavailable(RuntimeError):
    """The quiet check cannot read what it measures (no ``/proc``: not Linux)."""


@dataclass(frozen=True)
class Snapshot:
    """The machine's CPU counters at one moment, in seconds summed over CPUs."""

    busy: float  # user + nice + system + irq + softirq (guest time is inside user)
    steal: float
    cpus: int  # the CPUs /proc/stat counts over


def _proc_file(proc, name: str) -> Path:
    path = Path(proc) / name
    if not path.is_file():
        raise QuietUnavailable(
            f"the quiet check reads {path}, which this system ({sys.platform}) does not have: "
            "it works on Linux only; elsewhere time on a machine you know is idle")
    return path


def parse_stat(text: str, tick: float = _TICK) -> Snapshot:
    """:class:`Snapshot` from the text of ``/proc/stat``: the aggregate ``cpu``
    line (fields user nice system idle iowait irq softirq steal ...) and the
    number of per-CPU ``cpuN`` lines."""
    total = None
    cpus = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "cpu":
            total = [int(x) for x in fields[1:]]
        elif fields[0].startswith("cpu") and fields[0][3:].isdigit():
            cpus += 1
    if total is None or len(total) < 7:
        raise ValueError(f"/proc/stat has no aggregate 'cpu' line with 7 fields: {text[:80]!r}")
    user, nice, system, _idle, _iowait, irq, softirq = total[:7]
    steal = total[7] if len(total) > 7 else 0
    return Snapshot(busy=(user + nice + system + irq + softirq) / tick, steal=steal / tick,
                    cpus=max(cpus, 1))


def snapshot(proc="/proc") -> Snapshot:
    """The machine's CPU counters now (``/proc/stat``)."""
    return parse_stat(_proc_file(proc, "stat").read_text())


def read_load(proc="/proc") -> float:
    """The one-minute load average (``/proc/loadavg``)."""
    text = _proc_file(proc, "loadavg").read_text()
    try:
        return float(text.split()[0])
    except (IndexError, ValueError):
        raise ValueError(f"/proc/loadavg does not start with a number: {text[:40]!r}") from None


def classify(other_share: float, steal_share: float, noise: float = NOISE) -> str:
    """``"CLEAN"`` when other processes and steal each took at most ``noise`` of
    the machine, else ``"NOISY"``."""
    return "CLEAN" if other_share <= noise and steal_share <= noise else "NOISY"


@dataclass(frozen=True)
class Summary:
    """One run as the quiet check saw it (seconds; shares of ``wall x cpus``)."""

    wall: float
    cpus: int
    own: float
    other: float
    steal: float
    load_start: float
    load_peak: float
    noise: float = NOISE

    @property
    def capacity(self) -> float:
        return max(self.wall * self.cpus, 1e-9)

    @property
    def other_share(self) -> float:
        return self.other / self.capacity

    @property
    def steal_share(self) -> float:
        return self.steal / self.capacity

    @property
    def verdict(self) -> str:
        return classify(self.other_share, self.steal_share, self.noise)

    @property
    def clean(self) -> bool:
        return self.verdict == "CLEAN"

    def line(self) -> str:
        """The summary line to quote beside a figure."""
        return (f"quiet: {self.verdict}: wall {self.wall:.1f} s on {self.cpus} cpus, own cpu "
                f"{self.own:.1f} s, other processes {self.other:.1f} s "
                f"({100 * self.other_share:.1f}% of the machine), steal "
                f"{100 * self.steal_share:.1f}%, load {self.load_start:.2f} at start, peak "
                f"{self.load_peak:.2f}")


def summarize(before: Snapshot, after: Snapshot, wall: float, own: float, load_start: float,
              load_peak: float, noise: float = NOISE) -> Summary:
    """:class:`Summary` of a run from the counters before and after it and the CPU
    time the run itself used: other processes took the busy time that was not its
    (at most the whole machine: the counters tick every 10 ms or so, which a run
    of a few ticks feels)."""
    other = min(max(0.0, after.busy - before.busy - own), wall * after.cpus)
    return Summary(wall=wall, cpus=after.cpus, own=own, other=other,
                   steal=max(0.0, after.steal - before.steal), load_start=load_start,
                   load_peak=max(load_start, load_peak), noise=noise)


def wait_for_quiet(max_load: float = MAX_LOAD, wait: float = WAIT_S, *, poll: float = POLL_S,
                   load=read_load, sleep=time.sleep, clock=time.monotonic, say=None):
    """Wait until ``load()`` is at most ``max_load``, looking every ``poll``
    seconds for at most ``wait`` seconds. Returns the load then, or None when
    the machine stayed busy. ``say(text)`` hears once that waiting started."""
    t0 = clock()
    now = load()
    told = False
    while now > max_load:
        if clock() - t0 >= wait:
            return None
        if say is not None and not told:
            say(f"quiet: load {now:.2f} > {max_load:g}, waiting up to {wait:.0f} s")
            told = True
        sleep(poll)
        now = load()
    return now


class _PeakLoad:
    """Samples the load average every second on a daemon thread."""

    def __init__(self, proc, start: float):
        self.peak = start
        self._proc = proc
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        while not self._stop.wait(1.0):
            try:
                self.peak = max(self.peak, read_load(self._proc))
            except (OSError, ValueError):
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(timeout=2.0)
        return self.peak


class Meter:
    """The quiet check around code in this process::

        with Meter() as q:
            ...               # the timed work
        print(q.summary.line())

    Own CPU time is this process's and the children it waited for
    (``getrusage``); the machine's busy time is read from ``/proc/stat``
    before and after. Raises :class:`QuietUnavailable` off Linux.
    """

    def __init__(self, noise: float = NOISE, proc="/proc"):
        self.noise = noise
        self.proc = proc
        self.summary: Summary | None = None

    @staticmethod
    def _own() -> float:
        import resource  # noqa: PLC0415  (POSIX only; the /proc check comes first)

        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def __enter__(self) -> Meter:
        self._before = snapshot(self.proc)
        self._load0 = read_load(self.proc)
        self._own0 = self._own()
        self._peak = _PeakLoad(self.proc, self._load0)
        self._t0 = time.monotonic()
        return self

    def summary_now(self) -> Summary:
        """The measurement from the start up to now (the run goes on)."""
        return summarize(self._before, snapshot(self.proc), time.monotonic() - self._t0,
                         self._own() - self._own0, self._load0, self._peak.peak, self.noise)

    def __exit__(self, *exc) -> None:
        self._peak.stop()
        self.summary = self.summary_now()


def run_command(cmd: list[str], *, noise: float = NOISE, proc="/proc") -> tuple[int, Summary]:
    """Run ``cmd`` (no waiting): its exit status and the :class:`Summary`."""
    before = snapshot(proc)
    load0 = read_load(proc)
    peak = _PeakLoad(proc, load0)
    t0 = time.monotonic()
    child = subprocess.Popen(cmd)
    while True:
        try:
            _, status, usage = os.wait4(child.pid, 0)
            break
        except InterruptedError:  # pragma: no cover - retried by Python itself since 3.5
            continue
        except KeyboardInterrupt:  # the child got the Ctrl-C too: wait for it to go
            continue
    wall = time.monotonic() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    summary = summarize(before, snapshot(proc), wall, usage.ru_utime + usage.ru_stime, load0,
                        peak.stop(), noise)
    return child.returncode, summary


def main_quiet(cmd: list[str], *, max_load: float = MAX_LOAD, wait: float = WAIT_S,
               noise: float = NOISE, strict: bool = False, proc="/proc", err=None) -> int:
    """``deqbench quiet``: wait for a quiet machine, run ``cmd``, print the summary
    line on ``err`` (stderr). Returns ``cmd``'s status, :data:`NEVER_QUIET` when the
    machine stayed busy, :data:`NOISY_STRICT` for a NOISY run under ``strict``."""
    err = sys.stderr if err is None else err
    if not cmd:
        raise ValueError("cmd must name a command to run (deqbench quiet [options] -- CMD ...)")
    if not (noise >= 0.0):
        raise ValueError(f"noise must be >= 0, got {noise}")
    if not (wait >= 0.0):
        raise ValueError(f"wait must be >= 0, got {wait}")
    snapshot(proc)  # off Linux: QuietUnavailable before any waiting

    def say(text):
        print(text, file=err, flush=True)

    if wait_for_quiet(max_load, wait, load=lambda: read_load(proc), say=say) is None:
        say(f"quiet: machine busy (load {read_load(proc):.2f} > {max_load:g}) for "
            f"{wait:.0f} s; nothing run. Stop other jobs (test runs, asv, builds) and try again")
        return NEVER_QUIET
    try:
        status, summary = run_command(cmd, noise=noise, proc=proc)
    except FileNotFoundError:
        say(f"quiet: {cmd[0]}: command not found")
        return 127
    say(summary.line())
    if strict and not summary.clean:
        say(f"quiet: NOISY run refused (--strict): other processes or steal took more than "
            f"{100 * noise:g}% of the machine; the command exited {status}")
        return NOISY_STRICT
    return status
