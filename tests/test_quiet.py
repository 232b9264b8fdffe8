"""The quiet check (``deqbench quiet``, deqbench/_quiet.py): parsing and verdicts on
fake /proc snapshots, and one real run of a trivial command."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deqbench import _quiet as q

# the summary line as the README and results/ quote it
LINE = re.compile(
    r"^quiet: (CLEAN|NOISY): wall (\d+\.\d) s on (\d+) cpus, own cpu (\d+\.\d) s, other "
    r"processes (\d+\.\d) s \((\d+\.\d)% of the machine\), steal (\d+\.\d)%, load "
    r"(\d+\.\d\d) at start, peak (\d+\.\d\d)$")

STAT = """\
cpu  {user} 20 {system} 900000 300 {irq} {softirq} {steal} 0 0
cpu0 600 10 150 450000 150 5 5 {steal} 0 0
cpu1 400 10 150 450000 150 5 5 0 0 0
intr 123456 0 0
ctxt 999
btime 1700000000
processes 4242
procs_running 2
"""


def _stat(user=1000, system=300, irq=10, softirq=10, steal=0):
    return STAT.format(user=user, system=system, irq=irq, softirq=softirq, steal=steal)


@pytest.fixture
def proc(tmp_path):
    d = tmp_path / "proc"
    d.mkdir()
    (d / "stat").write_text(_stat())
    (d / "loadavg").write_text("0.12 0.30 0.25 1/345 6789\n")
    return d


def test_parse_stat_counts_busy_time_and_cpus():
    s = q.parse_stat(_stat(steal=7), tick=100)
    # user + nice + system + irq + softirq; idle and iowait are not busy
    assert s.busy == pytest.approx((1000 + 20 + 300 + 10 + 10) / 100)
    assert s.steal == pytest.approx(0.07)
    assert s.cpus == 2
    old = "cpu  1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7\n"  # a kernel without a steal column
    assert q.parse_stat(old, tick=1) == q.Snapshot(busy=1 + 2 + 3 + 6 + 7, steal=0, cpus=1)
    with pytest.raises(ValueError, match="no aggregate 'cpu' line"):
        q.parse_stat("intr 1 2 3\n")


def test_snapshot_and_load_read_proc(proc):
    assert q.snapshot(proc).cpus == 2
    assert q.read_load(proc) == 0.12
    (proc / "loadavg").write_text("garbage\n")
    with pytest.raises(ValueError, match="loadavg"):
        q.read_load(proc)


def test_without_proc_says_linux_only(tmp_path):
    with pytest.raises(q.QuietUnavailable, match="Linux only") as info:
        q.snapshot(tmp_path / "nothing")
    assert str(tmp_path / "nothing" / "stat") in str(info.value)
    with pytest.raises(q.QuietUnavailable):
        q.main_quiet(["true"], proc=tmp_path / "nothing", err=io.StringIO())


def test_other_processes_are_busy_time_minus_own():
    before = q.parse_stat(_stat(user=1000), tick=100)
    after = q.parse_stat(_stat(user=1000 + 2100, steal=0), tick=100)  # 21 s busy in all
    s = q.summarize(before, after, wall=10.0, own=20.0, load_start=0.1, load_peak=1.2)
    assert s.other == pytest.approx(1.0) and s.other_share == pytest.approx(0.05)
    assert s.verdict == "CLEAN" and s.clean  # 5% is still clean
    m = LINE.match(s.line())
    assert m and m.groups() == ("CLEAN", "10.0", "2", "20.0", "1.0", "5.0", "0.0", "0.10",
                                "1.20")
    s = q.summarize(before, after, wall=10.0, own=19.0, load_start=0.1, load_peak=0.0)
    assert s.other == pytest.approx(2.0) and s.verdict == "NOISY"  # 10%
    assert s.load_peak == 0.1  # never below the start
    # the run's own time beyond the counters' (tick rounding): nobody else
    assert q.summarize(before, after, wall=10.0, own=25.0, load_start=0, load_peak=0).other == 0
    # a few ticks of other work in a 10 ms run: at most the whole machine
    tiny = q.summarize(before, after, wall=0.01, own=0.0, load_start=0, load_peak=0)
    assert tiny.other_share == pytest.approx(1.0)


def test_steal_alone_makes_a_run_noisy():
    before = q.parse_stat(_stat(steal=0), tick=100)
    after = q.parse_stat(_stat(steal=300), tick=100)  # 3 s stolen over 20 cpu-seconds
    s = q.summarize(before, after, wall=10.0, own=0.0, load_start=0, load_peak=0)
    assert s.other == 0 and s.steal_share == pytest.approx(0.15) and s.verdict == "NOISY"
    assert q.classify(0.0, 0.15) == "NOISY" and q.classify(0.05, 0.05) == "CLEAN"
    assert q.classify(0.03, 0.0, noise=0.01) == "NOISY"


def test_waits_for_the_load_to_drop_and_gives_up_in_time():
    loads = iter([2.0, 1.5, 0.4, 9.9])
    now = [0.0]
    said = []

    def sleep(s):
        now[0] += s

    got = q.wait_for_quiet(0.5, 60, poll=5, load=lambda: next(loads), sleep=sleep,
                           clock=lambda: now[0], say=said.append)
    assert got == 0.4 and now[0] == 10.0
    assert len(said) == 1 and "waiting up to 60 s" in said[0]
    now[0] = 0.0
    got = q.wait_for_quiet(0.5, 12, poll=5, load=lambda: 3.0, sleep=sleep, clock=lambda: now[0])
    assert got is None and now[0] == 15.0  # looked at 0, 5, 10 and 15 s, then gave up
    assert q.wait_for_quiet(0.5, 0, load=lambda: 0.2) == 0.2  # quiet already: no wait


def test_a_busy_machine_runs_nothing(proc, tmp_path):
    (proc / "loadavg").write_text("3.50 3.00 2.00 2/300 1\n")
    marker = tmp_path / "ran"
    err = io.StringIO()
    status = q.main_quiet([sys.executable, "-c", f"open({str(marker)!r}, 'w')"], max_load=0.5,
                          wait=0, proc=proc, err=err)
    assert status == q.NEVER_QUIET and not marker.exists()
    assert "machine busy (load 3.50 > 0.5)" in err.getvalue()


def test_strict_refuses_a_noisy_run(proc, monkeypatch):
    """The command's status comes back, unless --strict and the run was NOISY."""
    snaps = {"quiet": [q.parse_stat(_stat(user=1000)), q.parse_stat(_stat(user=1000))],
             "noisy": [q.parse_stat(_stat(user=1000)), q.parse_stat(_stat(user=10 ** 9))]}
    for kind, strict, expected in (("quiet", True, 5), ("noisy", False, 5),
                                   ("noisy", True, q.NOISY_STRICT)):
        seq = iter([snaps[kind][0]] + snaps[kind])  # the availability check, before, after
        monkeypatch.setattr(q, "snapshot", lambda proc, seq=seq: next(seq))
        err = io.StringIO()
        status = q.main_quiet([sys.executable, "-c", "raise SystemExit(5)"], max_load=1.0,
                              wait=0, strict=strict, proc=proc, err=err)
        lines = err.getvalue().splitlines()
        assert status == expected, (kind, strict, lines)
        verdict = "NOISY" if kind == "noisy" else "CLEAN"
        assert LINE.match(lines[0]).group(1) == verdict
        assert ("refused" in err.getvalue()) == (expected == q.NOISY_STRICT)


def test_bad_options_name_the_rule(proc):
    with pytest.raises(ValueError, match="cmd must name a command"):
        q.main_quiet([], proc=proc)
    with pytest.raises(ValueError, match="noise must be >= 0, got -0.1"):
        q.main_quiet(["true"], noise=-0.1, proc=proc)
    with pytest.raises(ValueError, match="wait must be >= 0, got -1"):
        q.main_quiet(["true"], wait=-1, proc=proc)


linux = pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads /proc (Linux only)")


@linux
def test_real_run_of_a_trivial_command():
    """``deqbench quiet -- CMD`` on this machine: CMD's status comes back, and its
    own CPU time is CMD's (the child spins until it has used 0.3 s of CPU)."""
    spin = ("import time, sys\nwhile time.process_time() < 0.3:\n    pass\n"
            "print('done'); sys.exit(5)")
    res = subprocess.run([sys.executable, "-m", "deqbench.cli", "quiet", "--max-load", "1e9",
                          "--wait", "0", "--", sys.executable, "-c", spin],
                         capture_output=True, text=True)
    assert res.returncode == 5, res.stderr
    assert res.stdout == "done\n"
    lines = res.stderr.splitlines()
    assert len(lines) == 1, lines
    m = LINE.match(lines[0])
    assert m, lines[0]
    assert float(m.group(4)) >= 0.3  # own cpu: the child's
    assert int(m.group(3)) == q.snapshot().cpus


@linux
def test_meter_measures_this_process():
    with q.Meter() as meter:
        import time

        t = time.process_time()
        while time.process_time() - t < 0.2:
            pass
    s = meter.summary
    assert s.own >= 0.2 and s.cpus >= 1 and LINE.match(s.line())


def test_cli_refuses_an_empty_command(capsys):
    from deqbench.cli import main

    assert main(["quiet", "--max-load", "1e9", "--"]) == 2
    assert "cmd must name a command" in capsys.readouterr().err


@linux
def test_tools_run_under_the_quiet_check(monkeypatch):
    """``tools/quietly.py`` (calibrate, the peers harness): the tool gets its own
    arguments, the summary line follows it, ``--strict`` refuses a NOISY run."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from tools import quietly

    seen = []

    def tool(argv):
        seen.append((argv, quietly.line_so_far(), quietly.refusing()))
        return 7

    err = io.StringIO()
    assert quietly.main(tool, ["--n", "5", "--max-load", "1e9", "--wait", "0"], err=err) == 7
    argv, line, refusing = seen[-1]
    assert argv == ["--n", "5"] and LINE.match(line) and not refusing
    assert LINE.match(err.getvalue().splitlines()[-1])
    assert quietly.main(tool, ["--no-quiet", "--x"], err=err) == 7
    assert seen[-1][0] == ["--x"] and "not measured" in seen[-1][1]
    ticks = iter(range(10**6))  # every look at /proc/stat: the machine busier by 1000 s
    real = q.snapshot
    monkeypatch.setattr(q, "snapshot", lambda proc="/proc": q.Snapshot(
        busy=real(proc).busy + 1000.0 * next(ticks), steal=0.0, cpus=2))
    err = io.StringIO()
    assert quietly.main(tool, ["--strict", "--max-load", "1e9"], err=err) == q.NOISY_STRICT
    assert seen[-1][2] is True and "refused" in err.getvalue()
    assert quietly.main(tool, ["--max-load", "1e9"], err=io.StringIO()) == 7  # not strict
