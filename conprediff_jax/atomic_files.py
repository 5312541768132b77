"""Files written whole or not at all: each is written beside its place under a temporary name, flushed to disk and
renamed over it, so a kill at any instant leaves the previous version or the new one, never half of either. A write
that fails (a full disk, an I/O error) is a `WriteError`: one line naming the file and the free space, which main.py
prints as an error before exiting; the files before it are as they were."""

import contextlib
import ctypes
import json
import os
import shutil


class WriteError(OSError):
  """A workdir file that could not be written, in one line."""


def os_error_in(error: BaseException) -> OSError | None:
  """`error` itself if it is an OSError, else the first OSError in its chain of causes (None if there is none)."""
  while error is not None and not isinstance(error, OSError):
    error = error.__cause__ or error.__context__
  return error


def write_failed(path: str, error: BaseException) -> WriteError:
  """The WriteError for `error` (an OSError, or an exception caused by one) met writing `path`."""
  cause = os_error_in(error)
  reason = (cause.strerror or str(cause)) if cause is not None else str(error).splitlines()[0]
  folder = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(folder):
    folder = os.path.dirname(folder)
  free = shutil.disk_usage(folder).free
  return WriteError(f"cannot write {path} ({reason}); {free / 2**20:.0f} MiB free on its file system: free space "
                    "(or fix the error) and run the same command again, which resumes from the last checkpoint")


@contextlib.contextmanager
def replacing(path: str, mode: str = "w"):
  """`with replacing(path) as f:` writes `f`, which becomes `path` when the block ends without an exception."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    raise write_failed(path, e) from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, content) -> None:
  with replacing(path) as f:
    json.dump(content, f, indent=2)


def write_text(path: str, text: str) -> None:
  with replacing(path) as f:
    f.write(text)


@contextlib.contextmanager
def replacing_folder(path: str):
  """`with replacing_folder(path) as tmp:` fills the folder `tmp`, which becomes `path` (replacing a previous one)
  when the block ends without an exception; a failed block leaves `path` as it was."""
  tmp = f"{path.rstrip(os.sep)}.tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    for folder, _, files in os.walk(tmp):
      for name in files:
        with open(os.path.join(folder, name), "rb") as f:
          os.fsync(f.fileno())
    if not os.path.exists(path):
      os.rename(tmp, path)
    elif _exchange(tmp, path):  # one atomic swap: a kill leaves the old folder or the new one at `path`
      shutil.rmtree(tmp)
    else:  # a file system without renameat2's exchange: a kill between the two renames leaves `path` missing
      old = f"{path.rstrip(os.sep)}.old{os.getpid()}"
      os.rename(path, old)
      os.rename(tmp, path)
      shutil.rmtree(old)
  except OSError as e:
    raise write_failed(path, e) from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
  """Swaps the paths `a` and `b` in one step (Linux renameat2 with RENAME_EXCHANGE); False where that is missing."""
  renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
  at_fdcwd, rename_exchange = -100, 2
  return renameat2 is not None and renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
