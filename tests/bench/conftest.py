import pytest
from embedlookup.bench import OPS, SUBJECTS


@pytest.fixture
def registry():
    """Lets a test register extra subjects/implementations; removes them afterwards."""
    subjects, impls = dict(SUBJECTS), {k: dict(v.impls) for k, v in OPS.items()}
    yield
    SUBJECTS.clear()
    SUBJECTS.update(subjects)
    for k, v in OPS.items():
        v.impls.clear()
        v.impls.update(impls.get(k, {}))
