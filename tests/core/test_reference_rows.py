"""The compressed-row reference itself, against hand-computed rows."""

import numpy as np
import pytest
import reference as ref


def test_int8_hand_computed():
    x = np.array([[0.0, 1.0, 2.55, -0.0]], np.float32)
    raw = ref.quantize_rows(x, "int8")
    assert raw.shape == (1, 12)
    assert raw[0, :4].tolist() == [0, 100, 255, 0]
    scale, bias = np.frombuffer(raw[0, 4:].tobytes(), np.float32)
    assert scale == np.float32(np.float32(2.55) / np.float32(255)) and bias == 0.0
    np.testing.assert_allclose(ref.dequantize_rows(raw, "int8", 4), x, atol=scale / 2 + 1e-7)


def test_int4_nibble_order_and_constant_row():
    x = np.array([[0.0, 15.0, 15.0, 0.0], [3.0, 3.0, 3.0, 3.0]], np.float32)
    raw = ref.quantize_rows(x, "int4")
    assert raw.shape == (2, 12)
    assert raw[0, :2].tolist() == [0xF0, 0x0F]  # element 0 low nibble, element 1 high nibble
    assert raw[1, :2].tolist() == [0, 0]
    np.testing.assert_array_equal(ref.dequantize_rows(raw, "int4", 4), x)


@pytest.mark.parametrize("kind", ["fp16", "bf16"])
def test_half_types_round_to_nearest_even(kind):
    # 1 + 2**-9 lies halfway between two bf16 values; 1 + 2**-12 between two fp16 values.
    half = 2.0**-9 if kind == "bf16" else 2.0**-12
    x = np.array([[1.0 + half, 1.0 + 3 * half]], np.float32)
    y = ref.dequantize_rows(ref.quantize_rows(x, kind), kind, 2)
    assert y.tolist() == [[1.0, 1.0 + 4 * half]]  # ties go to the even mantissa
