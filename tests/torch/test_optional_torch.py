"""torch stays optional: the package imports (and works) when torch cannot be imported."""

import os
import subprocess
import sys

import embedlookup


def test_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # makes `import torch` raise ImportError
        "import numpy as np, embedlookup as el\n"
        "t = el.EmbeddingTable(4, initializer=el.init.constant(1.0))\n"
        "assert t.pooled_lookup(np.array([1, 2]), np.array([0]), mode='sum').tolist() == [[2.0] * 4]\n"
        "try:\n"
        "    import embedlookup.torch\n"
        "except ImportError as e:\n"
        "    assert 'needs PyTorch' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('embedlookup.torch imported without torch')\n"
    )
    pkg_root = os.path.dirname(os.path.dirname(embedlookup.__file__))
    env = dict(os.environ, PYTHONPATH=pkg_root)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
