"""numtext: numbers computed from a log's, as text without float noise (the summary CSV)."""

from cockpit import numtext


def test_computed_numbers_carry_no_float_noise():
    assert numtext.computed(0.1 + 0.2) == "0.3"
    assert numtext.computed((0.10 + 0.20) / 2) == "0.15"
    assert numtext.computed(181.24949999999998) == "181.2495"
    assert numtext.computed(1 / 3) == "0.333333333333"  # a true repeating mean: 12 significant digits
    assert numtext.computed(806400.0) == "806400.0" and numtext.computed(7) == "7"
    assert numtext.computed(float("nan")) == "nan" and numtext.computed(float("-inf")) == "-inf"
    assert numtext.computed(1.5e20) == "1.5e+20" and numtext.computed(-2.5e-7) == "-2.5e-07"
