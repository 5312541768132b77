"""Files written whole or not at all: each is written beside its place under a temporary name, flushed to disk and
renamed over it, so a kill at any instant leaves the previous version or the new one, never half of either."""

import contextlib
import json
import os


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
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, content) -> None:
  with replacing(path) as f:
    json.dump(content, f, indent=2)


def write_text(path: str, text: str) -> None:
  with replacing(path) as f:
    f.write(text)
