import numpy as np
import pandas as pd
import pytest

from evoprune.core.mask_codec import decode_masks, encode_masks


def test_masks_round_trip_through_strings_and_a_csv(tmp_path):
    masks = np.random.default_rng(0).random((5, 37)) < 0.5
    masks[0] = False  # leading zeros everywhere
    strings = encode_masks(masks)
    assert strings[0] == "0" * 37 and all(len(s) == 37 and set(s) <= {"0", "1"} for s in strings)
    np.testing.assert_array_equal(decode_masks(strings), masks)
    pd.DataFrame({"mask": strings}).to_csv(tmp_path / "t.csv", index=False)
    loaded = pd.read_csv(tmp_path / "t.csv", dtype={"mask": str})
    np.testing.assert_array_equal(decode_masks(loaded["mask"], num_bits=37), masks)


def test_bit_i_of_the_string_is_bit_i_of_the_mask():
    assert encode_masks(np.array([[True, False, False, True]])) == ["1001"]
    np.testing.assert_array_equal(decode_masks(["0110"]), [[False, True, True, False]])


def test_empty_sets_keep_their_width():
    assert decode_masks([], num_bits=7).shape == (0, 7)
    assert encode_masks(np.zeros((0, 7), bool)) == []


@pytest.mark.parametrize(
    ("strings", "error", "message"),
    [
        ([101], TypeError, r"dtype=\{'mask': str\}"),  # a CSV column read as numbers lost its leading zeros
        (["0101", "011"], ValueError, r"differ in length: \[3, 4\]"),
        (["01x1"], ValueError, r"only hold '0' and '1', got \['x'\]"),
    ],
)
def test_bad_strings_are_refused_naming_the_problem(strings, error, message):
    with pytest.raises(error, match=message):
        decode_masks(strings)


def test_the_width_is_checked_when_given():
    with pytest.raises(ValueError, match=r"must have 5 bits, got lengths \[4\]"):
        decode_masks(["0101"], num_bits=5)
    with pytest.raises(ValueError, match=r"\(K, num_bits\)"):
        encode_masks(np.ones(4, bool))
