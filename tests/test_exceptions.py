import pytest

from mmmatch.exceptions import (
    CatalogueError,
    ConfigMismatchError,
    ImageError,
    MmmatchError,
    NotFittedError,
    UnknownEncoderError,
)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (CatalogueError, ValueError),
        (ConfigMismatchError, ValueError),
        (ImageError, ValueError),
        (UnknownEncoderError, KeyError),
        (NotFittedError, ValueError),
    ],
)
def test_every_error_is_an_mmmatch_error_and_a_builtin(cls, builtin):
    assert issubclass(cls, MmmatchError)
    assert issubclass(cls, builtin)


def test_image_error_carries_reason_ref_and_detail():
    err = ImageError("a.jpg", "missing", "no file at /x/a.jpg")
    assert (err.ref, err.reason, err.detail) == ("a.jpg", "missing", "no file at /x/a.jpg")
    assert str(err) == "missing: a.jpg (no file at /x/a.jpg)"
    assert str(ImageError("b.jpg", "unreadable")) == "unreadable: b.jpg"


def test_unknown_encoder_error_message_is_not_quoted():
    assert str(UnknownEncoderError("unknown encoder 'x'")) == "unknown encoder 'x'"
