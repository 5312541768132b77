"""SHA-256 of weight files: recorded with results and checked against a user-pinned digest."""

import hashlib
import os


def sha256_file(path: str | os.PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str | None) -> str:
  """Returns the file's SHA-256; raises if `expected` (the full digest or a prefix of >= 8 hex digits) differs."""
  digest = sha256_file(path)
  if expected is not None:
    want = expected.strip().lower()
    if len(want) < 8 or not digest.startswith(want):
      raise ValueError(f"{path}: SHA-256 {digest} does not match the expected {expected!r}")
  return digest
