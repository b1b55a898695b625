"""Data sources, read again after the day's changes."""

import pytest

from runner.data.sources import parse_bytes


@pytest.mark.parametrize(("size", "num_bytes"), [("16.1KB", 16_100), ("4.02KB", 4_020), ("64.4kB", 64_400)])
def test_a_decimal_size_that_is_a_whole_number_of_bytes_is_taken(size, num_bytes):
    """16.1 × 1000 is 16099.999999999998 in floats: a size of whole bytes was refused as 'a size in bytes
    must be a whole number'."""
    assert parse_bytes(size) == num_bytes


def test_a_size_of_a_fraction_of_a_byte_is_still_refused():
    with pytest.raises(ValueError, match="must be a whole number"):
        parse_bytes("1.0005KB")
