"""Small helpers shared by every script: user-facing errors, one-line argument errors, checks
of paths and numbers, atomic file writes (text, CSV) with the user's umask, and folder locks."""
from __future__ import annotations

import argparse
import csv
import fcntl
import io
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence


class UserError(Exception):
    """A problem with the user's input or environment.

    Scripts print it as one line (no traceback) and exit with status 2. The message names what
    is wrong and how to fix it.
    """


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help that ends each flag's help with its default (or says the flag is required), unless
    the help already says ``default:``; the description keeps its own line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or \
                "default:" in text:
            return text
        if action.required:
            return f"{text} (required)"
        return f"{text} (default: {shown_default(action.default)})"


def shown_default(value: Any) -> str:
    """A default as a user types it (``20 50``, ``off``), escaped for argparse's %-formatting."""
    if value is None:
        text = "none"
    elif isinstance(value, bool):
        text = "on" if value else "off"
    elif isinstance(value, (list, tuple)):
        text = " ".join(map(str, value)) or "none"
    else:
        text = str(value)
    return text.replace("%", "%%")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (unknown flag, bad number, invalid choice) are one UserError line
    instead of a usage block, and whose --help shows every flag's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see {self.prog} --help)")


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's can run to ten lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def check_number(flag: str, value: float, ok: bool, accepted: str) -> None:
    """UserError ``--flag VALUE: must be ...`` unless ``ok`` (and ``value`` is finite)."""
    if not ok or not math.isfinite(value):
        raise UserError(f"{flag} {value}: must be {accepted}")


def check_writable_folder(flag: str, folder: str | os.PathLike,
                          given: str | os.PathLike | None = None) -> None:
    """UserError unless ``folder`` exists as a writable folder or could be created: the nearest
    existing ancestor must be a folder we can create a file in (tried, then removed). The
    message names ``given`` (the flag's value) when the folder is only derived from it."""
    folder = Path(folder)
    given = folder if given is None else given
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {given}: {existing} is a file, not a folder; choose a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"{flag} {given}: cannot write in {existing} ({err.strerror}); choose "
                        "a writable folder") from None


class RunInterrupted(Exception):
    """A run stopped on request (SIGTERM, SIGUSR1) after saving a resumable checkpoint."""


# Exit status of a run that stopped on a signal and can be resumed (BSD's EX_TEMPFAIL:
# "temporary failure, try again"); launchers requeue or rerun it.
EXIT_RESUMABLE = 75


def run_cli(main: Callable[[], Any]) -> None:
    """Run a script's ``main``; a ``UserError`` becomes one line and exit 2, a resumable stop
    one line and exit 75, Ctrl-C exit 130."""
    try:
        main()
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        sys.exit(2)
    except RunInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        sys.exit(EXIT_RESUMABLE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A crash mid-write leaves the old file (or none), never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide results from others
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_csv(path: str | os.PathLike, header: Sequence[str],
                     rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV file (``header``, then ``rows``) atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def current_umask() -> int:
    """The process's umask, read without changing it (Linux reports it in /proc; elsewhere it
    is set and put back at once)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class FolderLock:
    """An exclusive lock on a folder, so that one process at a time writes it.

    A POSIX record lock (``fcntl.lockf``) on ``<folder>/.lock``: the kernel drops it when its
    holder dies (even by ``kill -9``), so a lock file left behind is never stale, and NFS
    servers carry it to every client, so it holds across the nodes of a cluster. The holder
    writes its host, pid and start time into the file, for the message a second writer gets (a
    UserError). Locks are per process: the holder may take it again.
    """

    def __init__(self, folder: str | os.PathLike, what: str):
        self.path = Path(folder) / ".lock"
        self.what = what
        self._file: Optional[Any] = None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self._file is None:
            file = open(self.path, "a+")
            try:
                fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                file.seek(0)
                holder = file.read().strip() or "another process"
                file.close()
                raise UserError(f"{self.path.parent} is in use: {self.what} by {holder}; wait "
                                "for it to end (or stop it) and try again") from None
            try:  # the holder we waited for may have removed the file: lock the new one
                same = os.stat(self.path).st_ino == os.fstat(file.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                file.close()
                continue
            file.seek(0)
            file.truncate()
            file.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            file.flush()
            self._file = file
        return self

    def release(self) -> None:
        """Remove the lock file (a folder is left as it was found), then drop the lock."""
        if self._file is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:  # e.g. the folder was discarded
                pass
            self._file.close()
            self._file = None

    def __enter__(self) -> FolderLock:
        return self if self._file is not None else self.acquire()

    def __exit__(self, *exc_info: Any) -> None:
        self.release()
