"""`kerasurgery.errors`: the error types and the one-line detail of other libraries' errors."""

from __future__ import annotations

import pytest

from kerasurgery.errors import KerasurgeryError, ModelFileError, UsageError, one_line


@pytest.mark.parametrize(
    "error, expected",
    [
        (ValueError("a\n  b\tc  "), "a b c"),
        (KeyError(), "KeyError"),
        (OSError(""), "OSError"),
        ("plain text", "plain text"),
        ("", ""),
        # Keras appends the whole config after these markers.
        (ValueError("Could not build layer 'd'. Full object config: {'a': 1}"),
         "Could not build layer 'd'."),
        (ValueError("bad value, Full config: {...}"), "bad value."),
        (TypeError("Unknown argument. config={'units': 3}"), "Unknown argument."),
        (ValueError("Full object config: {} only"), "Full object config: {} only"),
    ],
)
def test_one_line(error, expected):
    assert one_line(error) == expected


def test_one_line_truncates_to_the_limit():
    text = one_line(ValueError("x" * 1000))
    assert len(text) == 300 and text.endswith("...")
    assert one_line("abcdefgh", limit=6) == "abc..."
    assert one_line("abcdef", limit=6) == "abcdef"


def test_every_error_is_a_kerasurgery_error():
    assert issubclass(UsageError, KerasurgeryError) and issubclass(UsageError, ValueError)
    assert issubclass(ModelFileError, KerasurgeryError) and issubclass(ModelFileError, OSError)
