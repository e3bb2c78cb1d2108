"""The fuzz harness's pytest set-up: the oracle and the helpers importable
from every file here (tests/reference.py is on sys.path via tests/conftest.py;
this folder for fuzzlib)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
