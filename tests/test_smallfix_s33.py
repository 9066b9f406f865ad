"""Small defects found by sweep 33, each with the test that fails without its fix."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# ---- the live view's stdout relay with a descriptor >= 1024 ---------------------------------

HIGH_FD_RELAY = textwrap.dedent('''
    import fcntl, io, os, resource, sys, threading
    from rich.console import Console
    from shoal.cli import live

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if wanted < 1100:
        print("SKIP: the hard limit on open files is", hard)
        sys.exit(0)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1030)]  # a process with many files
    read_end, write_end = os.pipe()
    assert read_end >= 1024, read_end
    console = Console(file=io.StringIO(), force_terminal=False, width=80)
    ended = threading.Event()
    failed = []
    def relay():
        try:
            live._relay(read_end, console, ended)
        except BaseException as exc:
            failed.append(repr(exc))
    thread = threading.Thread(target=relay)
    thread.start()
    os.write(write_end, b"line one\\nline two\\n")
    os.close(write_end)
    ended.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    print("FAILED:", failed)
    print("RELAYED:", console.file.getvalue().split())
''')


def test_the_relay_reads_a_pipe_whose_descriptor_is_past_1024() -> None:
    # select.select raises ValueError for a descriptor >= 1024: in a process with many files
    # open the relay thread died at its first look, and all a tool printed was lost
    done = subprocess.run([sys.executable, "-c", HIGH_FD_RELAY], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    if done.stdout.startswith("SKIP:"):
        pytest.skip(done.stdout.strip())
    assert "FAILED: []" in done.stdout, done.stdout
    assert "RELAYED: ['line', 'one', 'line', 'two']" in done.stdout, done.stdout
