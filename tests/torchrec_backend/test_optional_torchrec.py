"""TorchRec stays optional: embedlookup and embedlookup.torch import without it;
embedlookup.torchrec raises an ImportError that says how to install it."""

import os
import subprocess
import sys

import pytest

import embedlookup

pytest.importorskip("torch")  # the check imports embedlookup.torch too


def test_import_without_torchrec():
    code = (
        "import sys; sys.modules['torchrec'] = None\n"  # makes `import torchrec` raise ImportError
        "import embedlookup, embedlookup.torch\n"
        "try:\n"
        "    import embedlookup.torchrec\n"
        "except ImportError as e:\n"
        "    assert 'pip install --no-deps \"torchrec==1.8.0\"' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('embedlookup.torchrec imported without torchrec')\n"
        "assert 'torchrec' not in sys.modules or sys.modules['torchrec'] is None\n"
    )
    pkg_root = os.path.dirname(os.path.dirname(embedlookup.__file__))
    env = dict(os.environ, PYTHONPATH=pkg_root)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
