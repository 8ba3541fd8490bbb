"""Background processes that print progress lines, behind a small interface.

The logic only needs to start a command, read the lines it printed so far,
learn when it ended and stop it. :class:`ProcessRunner` and
:class:`RunningProcess` describe exactly that, so tests (or another
launcher) can stand in for :class:`SubprocessRunner`.

Stopping must end the whole process tree. Inside Slicer the command is
``PythonSlicer``, a CTK launcher that starts ``python-real`` as its child and
forwards no signal to it: ending the launcher alone would leave the engine
running. So the command gets a process group of its own (POSIX: a new
session; Windows: a new process group) and stopping targets the group
(``killpg``) or the tree (``taskkill /T``).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any, Callable, Mapping, Optional, Protocol, Sequence

#: Seconds the engine gets to stop cleanly (it cancels on SIGTERM) before it is killed.
#: How long kill() waits for the group to disappear after SIGKILL.
KILL_WAIT_SECONDS = 5.0
TERMINATE_GRACE_SECONDS = 3.0
#: Windows process creation flags (numeric so that the module imports on every platform).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


class RunningProcess(Protocol):
    """A started command."""

    def readLines(self) -> list[str]:
        """Complete stdout lines printed since the last call (never blocks)."""
        ...

    def returnCode(self) -> Optional[int]:
        """Exit status once the process ended and all its output was read, else None."""
        ...

    def errorOutput(self) -> str:
        """Everything written to stderr so far."""
        ...

    def kill(self) -> None:
        """Stop the process and every process it started, and wait for them to go."""
        ...

    def running(self) -> bool:
        """True while the process or any process it started is alive."""
        ...


class ProcessRunner(Protocol):
    """Starts commands."""

    def start(self, arguments: Sequence[str], environment: Optional[Mapping[str, str]] = None) -> RunningProcess:
        """Launch ``arguments`` (executable first) with the given environment."""
        ...


def popenOptions(platform: str = sys.platform) -> dict[str, Any]:
    """Keyword arguments for :class:`subprocess.Popen` that make the command its own process group.

    POSIX: a new session, so that the group id is the command's pid and
    ``killpg`` reaches every descendant that did not leave the group.
    Windows: a new process group and no console window (each run would
    otherwise open one).
    """
    if platform == "win32":
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def windowsTreeKillCommand(pid: int) -> list[str]:
    """The command that ends a process and all its descendants on Windows."""
    return ["taskkill", "/T", "/F", "/PID", str(pid)]


def _groupAlive(groupId: int) -> bool:
    """True while a process of the group is alive (zombies, already dead, do not count)."""
    try:
        os.killpg(groupId, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds for zombies that no parent has reaped yet; where /proc
    # exists, look at the members themselves.
    if not os.path.isdir("/proc"):
        return True
    return any(_isLiveMember(entry, groupId) for entry in os.listdir("/proc") if entry.isdigit())


def _isLiveMember(pid: str, groupId: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    # After the command name: state, ppid, pgrp, ...
    return int(fields[2]) == groupId and fields[0] not in ("Z", "X")


class SubprocessProcess:
    """A :mod:`subprocess` child, in its own process group, whose pipes are drained by two reader threads."""

    def __init__(self, arguments: Sequence[str], environment: Optional[Mapping[str, str]]):
        self._process = subprocess.Popen(
            list(arguments),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=dict(environment) if environment is not None else None,
            text=True,
            encoding="utf-8",
            errors="replace",
            **popenOptions(),
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._drain, args=(self._process.stdout, self._lines.put), daemon=True),
            threading.Thread(target=self._drain, args=(self._process.stderr, self._stderr.append), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        """Process id of the command (on POSIX also its process group id)."""
        return self._process.pid

    @staticmethod
    def _drain(stream: IO[str], sink: Callable[[str], None]) -> None:
        for line in stream:
            sink(line.rstrip("\r\n"))
        stream.close()

    def readLines(self) -> list[str]:
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def returnCode(self) -> Optional[int]:
        code = self._process.poll()
        if code is None or any(reader.is_alive() for reader in self._readers):
            return None
        return code

    def errorOutput(self) -> str:
        return "\n".join(self._stderr)

    def running(self) -> bool:
        if sys.platform == "win32":
            return self._process.poll() is None
        self._process.poll()  # reap the command itself, so that it does not count as a zombie member
        return _groupAlive(self._process.pid)

    def kill(self) -> None:
        if sys.platform == "win32":
            self._killWindowsTree()
        else:
            self._killProcessGroup()
        for reader in self._readers:
            reader.join(timeout=5)

    def _killProcessGroup(self) -> None:
        group = self._process.pid
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            self._process.wait()
            return
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.running():
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._process.wait()
        # SIGKILL is delivered asynchronously: on a busy machine a grandchild (the engine behind
        # the launcher) can outlive the launcher's reaping by a moment. Wait for the whole group.
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _killWindowsTree(self) -> None:
        if self._process.poll() is None:
            subprocess.run(
                windowsTreeKillCommand(self._process.pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                creationflags=CREATE_NO_WINDOW, check=False)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class SubprocessRunner:
    """Runs commands as child processes of this Python (PythonSlicer inside Slicer)."""

    def start(self, arguments: Sequence[str], environment: Optional[Mapping[str, str]] = None) -> SubprocessProcess:
        return SubprocessProcess(arguments, environment)
