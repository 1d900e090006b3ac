import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One --data_root for the whole session, so the toy judge is trained once per image size."""
    return str(tmp_path_factory.mktemp("dataset"))
