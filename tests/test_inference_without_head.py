"""The context head is training-only: nothing at inference imports it (tests/test_families.py checks that the
sampler receives and traces nothing of it, for every family)."""

import subprocess
import sys

from tests.conftest import REPO


def test_inference_modules_never_import_the_context_package():
  code = ("import sys; import conprediff_jax.sampling, conprediff_jax.evaluate, conprediff_jax.export; "
          "bad = sorted(m for m in sys.modules if m.startswith('conprediff_jax.context')); "
          "assert not bad, bad")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
