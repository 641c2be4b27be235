"""The one-writer lock of a run directory: WORKDIR/.lock, held by the one training process."""

import errno
import fcntl
import json
import os
import socket
import stat
import time

from jem_tf import cli
from jem_tf.workdir.run_files import LOCK_FILE


class WorkdirLockedError(cli.RunStopped):
    """Another process is training in this workdir."""

    exit_code = cli.EXIT_BAD_INPUT


class UnsafeWorkdirError(cli.RunStopped):
    """A run file the trainer writes in place is a link or otherwise not its own plain file."""

    exit_code = cli.EXIT_BAD_INPUT


class WorkdirLock:
    """Exclusive `fcntl.flock` on WORKDIR/.lock for the lifetime of a training run.

    The kernel releases it when the process dies (even by SIGKILL), so a stale lock never blocks a
    restart. flock (not lockf) locks are per open file: a second run in the same process is refused
    too. The lock file is left in place; it records the holder's PID and host for the message.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd = None

    def acquire(self) -> "WorkdirLock":
        os.makedirs(self.workdir, exist_ok=True)
        # O_NOFOLLOW, and a regular file with one name only: the PID record below is written in
        # place, so a planted symbolic or hard link would make it overwrite another file.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise UnsafeWorkdirError(
                f"{self.path!r} is a symbolic link (to {os.readlink(self.path)!r}); training writes its lock file in "
                "place and does not write through links. Remove the link and re-run the same command."
            ) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise UnsafeWorkdirError(
                f"{self.path!r} is not a plain file of its own (mode {stat.filemode(info.st_mode)}, {info.st_nlink} "
                "links); training writes its lock file in place and would overwrite what it shares. Remove it and "
                "re-run the same command.")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirLockedError(
                f"Workdir {self.workdir!r} is in use by another training run (PID {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')}, started {holder.get('started', '?')}). One run writes a workdir at a "
                "time: wait for it to finish, stop it (SIGTERM saves a checkpoint), or choose another --workdir."
            ) from None
        holder = dict(pid=os.getpid(), host=socket.gethostname(),
                      started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}

