"""numtext: numbers as text a column at a time, exactly as str() prints them, for the per-step CSV."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cockpit import numtext
from cockpit.logs import bulk

# numbers as a log prints them: up to 8 characters, digits and at most one point (leading and
# trailing zeros, `.5`, `7.`, `0.00005` included)
DIGITS = st.text("0123456789", min_size=0, max_size=7)
FLOATS = st.builds(lambda a, b: (a + "." + b)[:8] if (a or b) else "0.", DIGITS, DIGITS)
INTS = st.text("0123456789", min_size=1, max_size=8)


def read(tokens: list[str], integer: bool):
    """The bulk reader's column of these numbers (as a block's number text holds them)."""
    bulk._numpy()
    text = (" " * bulk._PAD + " ".join(tokens) + " " * 8).encode().translate(bulk._NUM_TABLE)
    ends, at = [], bulk._PAD
    for tok in tokens:
        at += len(tok)
        ends.append(at)
        at += 1
    u = np.frombuffer(text, np.uint8)
    return bulk._read_numbers(u, bulk._words(u), np.array(ends), np.array([len(x) for x in tokens]), integer)


def texts(cells) -> list[str]:
    return [bytes(row[row != 0]).decode() for row in cells]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.tuples(st.lists(FLOATS, min_size=1, max_size=30), st.just(False)),
                 st.tuples(st.lists(INTS, min_size=1, max_size=30), st.just(True))),
       st.lists(st.booleans(), min_size=30, max_size=30))
def test_a_column_of_printed_numbers_prints_as_str_does(case, shown):
    tokens, integer = case
    col = read(tokens, integer)
    assert col is not None
    present = np.array(shown[: len(tokens)])
    want = [(str(int(t)) if integer else str(float(t))) if p else "" for t, p in zip(tokens, present, strict=True)]
    assert texts(numtext.token_cells(col.text, present, col.values, integer)) == want
    # from the values alone (the printed digits known), the same text
    if integer:
        assert texts(numtext.int_cells(col.values, present)) == want
    else:
        assert texts(numtext.float_cells(col.values, present, col.decimals)) == want


def test_values_of_unknown_precision_print_as_str_does():
    values = np.array([650.0000000000001, float("nan"), float("inf"), -0.0, 1e-05, 0.1 + 0.2, 12.5])
    shown = np.array([True] * 6 + [False])
    cells = numtext.float_cells(values, shown, np.full(len(values), -1, np.int8))
    assert texts(cells) == [str(v) for v in values[:6]] + [""]
    big = np.array([2**70, 5], object)
    assert texts(numtext.int_cells(big, np.array([True, True]))) == [str(2**70), "5"]


def test_csv_rows_join_cells_with_the_prefix():
    a = numtext.int_cells(np.array([1, 22]), np.array([True, True]))
    b = numtext.float_cells(np.array([0.5, 3.0]), np.array([True, False]), np.array([1, 0], np.int8))
    assert numtext.csv_text(b'"a,b",', [a, b]) == b'"a,b",1,0.5\r\n"a,b",22,\r\n'


def test_computed_numbers_carry_no_float_noise():
    assert numtext.computed(0.1 + 0.2) == "0.3"
    assert numtext.computed((0.10 + 0.20) / 2) == "0.15"
    assert numtext.computed(181.24949999999998) == "181.2495"
    assert numtext.computed(1 / 3) == "0.333333333333"  # a true repeating mean: 12 significant digits
    assert numtext.computed(806400.0) == "806400.0" and numtext.computed(7) == "7"
    assert numtext.computed(float("nan")) == "nan" and numtext.computed(float("-inf")) == "-inf"
    assert numtext.computed(1.5e20) == "1.5e+20" and numtext.computed(-2.5e-7) == "-2.5e-07"
