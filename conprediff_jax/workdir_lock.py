"""One training run per workdir: an exclusive lock on `<workdir>/train.lock`, which the kernel drops when the holder
exits or is killed (SIGKILL included), so a crashed run never leaves a stale lock behind.

The file records the holder's host and pid, for the message a second run gets. On a multi-host job only process 0
takes the lock (the hosts of one job share the workdir). Local and NFS workdirs only: flock is what they share.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket

LOCK_FILE = "train.lock"


class WorkdirBusy(RuntimeError):
  """Another live process is training into this workdir."""


@contextlib.contextmanager
def hold(workdir: str):
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirBusy(_busy_message(workdir, _holder(fd))) from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "since": datetime.datetime.now().isoformat(timespec="seconds")}).encode())
    yield
  finally:
    os.close(fd)  # drops the lock; the file stays (removing a flock'd file races with the next run's open)


def _holder(fd: int) -> dict:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (OSError, ValueError):  # caught between the holder's truncate and write
    return {}


def _busy_message(workdir: str, holder: dict) -> str:
  who = (f"pid {holder['pid']} on host {holder['host']} (since {holder['since']})" if "pid" in holder
         else "another process")
  return (f"--workdir={workdir} is being trained by {who}; wait for it to finish, stop it, or pass another "
          "--workdir")
