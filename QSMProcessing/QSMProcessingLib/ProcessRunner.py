"""Background processes that print progress lines, behind a small interface.

The logic only needs to start a command, read the lines it printed so far,
learn when it ended and stop it. :class:`ProcessRunner` and
:class:`RunningProcess` describe exactly that, so tests (or another
launcher) can stand in for :class:`SubprocessRunner`.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from typing import IO, Mapping, Optional, Protocol, Sequence


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
        """Stop the process (and wait for it to go)."""
        ...


class ProcessRunner(Protocol):
    """Starts commands."""

    def start(self, arguments: Sequence[str], environment: Optional[Mapping[str, str]] = None) -> RunningProcess:
        """Launch ``arguments`` (executable first) with the given environment."""
        ...


class SubprocessProcess:
    """A :mod:`subprocess` child whose pipes are drained by two reader threads."""

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
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._drain, args=(self._process.stdout, self._lines.put), daemon=True),
            threading.Thread(target=self._drain, args=(self._process.stderr, self._stderr.append), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _drain(stream: IO[str], sink) -> None:
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

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for reader in self._readers:
            reader.join(timeout=5)


class SubprocessRunner:
    """Runs commands as child processes of this Python (PythonSlicer inside Slicer)."""

    def start(self, arguments: Sequence[str], environment: Optional[Mapping[str, str]] = None) -> SubprocessProcess:
        return SubprocessProcess(arguments, environment)
