import numpy as np
import pytest

from mmmatch._validation import check_embeddings, check_is_fitted, l2_normalize
from mmmatch.exceptions import MmmatchError, NotFittedError


def test_check_embeddings_converts_to_float32_c_contiguous():
    x = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    out = check_embeddings(x, dim=4)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, x.astype(np.float32))


def test_check_embeddings_accepts_lists_and_one_row():
    assert check_embeddings([[1, 2], [3, 4]]).shape == (2, 2)
    assert check_embeddings(np.ones(3), dim=3).shape == (1, 3)


def test_check_embeddings_rejects_bad_shapes():
    with pytest.raises(ValueError, match="2-D"):
        check_embeddings(np.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        check_embeddings(np.ones((2, 2, 2)))


def test_check_embeddings_wrong_width_names_both_widths():
    with pytest.raises(ValueError) as info:
        check_embeddings(np.ones((2, 5)), dim=8, name="vectors")
    message = str(info.value)
    assert "vectors" in message and "8" in message and "5" in message


def test_check_embeddings_rejects_non_finite_and_names_row():
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        check_embeddings(x)
    x[2, 1] = np.inf
    with pytest.raises(ValueError, match="row 2"):
        check_embeddings(x)


def test_check_embeddings_rejects_non_numeric():
    with pytest.raises(ValueError, match="numeric"):
        check_embeddings(np.array([["a", "b"]], dtype=object))


def test_l2_normalize_unit_rows_and_zero_rows_stay_zero():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-20, 0.0]])
    out = l2_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])
    np.testing.assert_array_equal(out[2], [0.0, 0.0])


def test_check_is_fitted():
    class Thing:
        coef_ = None

    thing = Thing()
    with pytest.raises(NotFittedError, match="Thing") as info:
        check_is_fitted(thing, "coef_")
    assert isinstance(info.value, MmmatchError)
    assert isinstance(info.value, AttributeError)
    thing.coef_ = 1
    check_is_fitted(thing, ["coef_"])  # no error once set
    with pytest.raises(NotFittedError):
        check_is_fitted(thing, ["coef_", "intercept_"])


def test_tune_malloc_is_idempotent_and_respects_opt_out(monkeypatch):
    import mmmatch._blas as blas

    monkeypatch.setattr(blas, "_malloc_tuned", False)
    monkeypatch.setenv("MMMATCH_NO_MALLOC_TUNING", "1")
    assert blas.tune_malloc() is False
    monkeypatch.delenv("MMMATCH_NO_MALLOC_TUNING")
    import ctypes
    import os
    import platform

    for key in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    first = blas.tune_malloc()
    assert blas.tune_malloc() is first  # once per process
    try:
        glibc = hasattr(ctypes.CDLL("libc.so.6"), "mallopt") and platform.system() == "Linux"
    except OSError:
        glibc = False
    assert first is glibc  # glibc accepts all three settings; elsewhere nothing is done
    monkeypatch.setattr(blas, "_malloc_tuned", False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # the user's own malloc settings win
    assert blas.tune_malloc() is False
