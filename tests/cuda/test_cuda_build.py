"""CPU-only: the build says truthfully whether CUDA was compiled in, and a
CUDA table where none can be made fails with a clear reason."""

import pytest

import embedlookup as el
import embedlookup.cuda as elc
from embedlookup import _core

pytestmark = pytest.mark.cpu_only


def test_build_reports_cuda_truthfully():
    # Independent evidence: a CUDA build links the CUDA runtime statically,
    # whose fat-binary registration symbol then sits in the module's bytes.
    with open(_core.__file__, "rb") as f:
        has_cuda_code = b"__cudaRegisterFatBinary" in f.read()
    assert elc.is_built() == has_cuda_code
    assert hasattr(_core, "CudaTable") == has_cuda_code


def test_unavailable_means_clear_error():
    why = elc.unavailable_reason()
    assert elc.is_available() == (why is None)
    if why is None:
        pytest.skip("CUDA is usable here; the GPU tests cover it")
    if not elc.is_built():
        assert "built without its CUDA backend" in why
    with pytest.raises(elc.CudaUnavailableError) as e:
        elc.CudaTable(8, initializer=el.init.zeros())
    assert str(e.value) == why


def test_unavailable_from_table_is_clear():
    if elc.is_available():
        pytest.skip("CUDA is usable here")
    with pytest.raises(elc.CudaUnavailableError):
        elc.CudaTable.from_table(el.EmbeddingTable(4))
