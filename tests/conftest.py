"""Shared fixtures: the smoke config (configs/smoke.py), which compiles and trains in seconds on a 2-core CPU."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def tiny_config():
  from configs import smoke  # pylint: disable=g-import-not-at-top
  return smoke.get_config()


@pytest.fixture
def config():
  return tiny_config()
