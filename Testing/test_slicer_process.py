"""Cancel ends the engine's whole process tree, even behind a launcher that forwards no signal (no Qt).

Inside Slicer the engine is started through PythonSlicer, a launcher that runs
python-real as its child and does not forward signals. The stand-in launcher
here is worse: it ignores SIGTERM, and so does its engine, so only the process
group kill with its SIGKILL escalation can end them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "QSMProcessing"))

from QSMProcessingLib import ProcessRunner  # noqa: E402
from QSMProcessingLib.ProcessRunner import SubprocessRunner  # noqa: E402

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False
    return True


def _write_launcher(folder: Path, engine_ignores_sigterm: bool) -> Path:
    engine = folder / "engine.py"
    engine.write_text(textwrap.dedent(f"""
        import signal, sys, time
        if {engine_ignores_sigterm!r}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print('{{"event": "progress", "fraction": 0.1, "message": "engine: started"}}', flush=True)
        while True:
            open(sys.argv[1], "a").write("beat\\n")
            time.sleep(0.05)
    """))
    launcher = folder / "launcher.py"
    launcher.write_text(textwrap.dedent(f"""
        import signal, subprocess, sys
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # like a launcher that neither dies nor forwards
        child = subprocess.Popen([sys.executable, {str(engine)!r}, {str(folder / "heartbeat")!r}])
        open({str(folder / "engine.pid")!r}, "w").write(str(child.pid))
        child.wait()
    """))
    return launcher


def _start(tmp_path: Path, engine_ignores_sigterm: bool):
    launcher = _write_launcher(tmp_path, engine_ignores_sigterm)
    process = SubprocessRunner().start([sys.executable, str(launcher)], dict(os.environ))
    deadline = time.monotonic() + 20
    lines: list[str] = []
    while not lines and time.monotonic() < deadline:
        lines += process.readLines()
        time.sleep(0.02)
    assert lines and "engine: started" in lines[0]
    engine_pid = int((tmp_path / "engine.pid").read_text())
    return process, engine_pid


@posix_only
@pytest.mark.parametrize("engine_ignores_sigterm", [False, True], ids=["engine-stops-on-sigterm", "stubborn-engine"])
def test_cancel_ends_the_launcher_and_the_engine_it_started(tmp_path, engine_ignores_sigterm):
    process, engine_pid = _start(tmp_path, engine_ignores_sigterm)
    assert _alive(process.pid) and _alive(engine_pid) and process.running()

    started = time.monotonic()
    process.kill()
    elapsed = time.monotonic() - started

    assert not _alive(process.pid), "the launcher survived"
    assert not _alive(engine_pid), "the engine behind the launcher survived"
    assert not process.running()
    assert elapsed < ProcessRunner.TERMINATE_GRACE_SECONDS + 3
    if engine_ignores_sigterm:
        assert elapsed >= ProcessRunner.TERMINATE_GRACE_SECONDS - 0.5  # only SIGKILL after the grace period ends it
    else:
        assert elapsed < ProcessRunner.TERMINATE_GRACE_SECONDS  # the engine stops on SIGTERM, the launcher follows
    beats = (tmp_path / "heartbeat").read_text().count("beat")
    time.sleep(0.3)
    assert (tmp_path / "heartbeat").read_text().count("beat") == beats, "something still writes the heartbeat"
    assert process.returnCode() is not None


@posix_only
def test_a_process_that_finished_reports_its_code_and_kill_is_harmless(tmp_path):
    process = SubprocessRunner().start([sys.executable, "-c", "print('done'); raise SystemExit(3)"])
    deadline = time.monotonic() + 20
    while process.returnCode() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.returnCode() == 3 and process.readLines() == ["done"]
    assert not process.running()
    process.kill()
    assert process.returnCode() == 3


def test_the_engine_gets_its_own_process_group_and_no_console_window():
    assert ProcessRunner.popenOptions("linux") == {"start_new_session": True}
    assert ProcessRunner.popenOptions("darwin") == {"start_new_session": True}
    windows = ProcessRunner.popenOptions("win32")
    assert windows == {"creationflags": 0x00000200 | 0x08000000}  # CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
    assert ProcessRunner.windowsTreeKillCommand(4242) == ["taskkill", "/T", "/F", "/PID", "4242"]
    if sys.platform == "win32":
        assert windows["creationflags"] == subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
