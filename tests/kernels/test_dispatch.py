"""The kernel registry: numpy by default, another array type's implementation when it matches."""

import numpy as np
import pytest

from coaddx.kernels import lookup, register
from coaddx.kernels.stack import stack_block


class DummyArray:
    """An array type that is not numpy (a stand-in for a CuPy array)."""

    def __init__(self, data):
        self.data = np.asarray(data)


def test_lookup_returns_the_numpy_implementation_by_default():
    assert lookup("stack_block", np.zeros((1, 1, 1))) is stack_block
    assert lookup("stack_block") is stack_block
    assert lookup("stack_block", DummyArray([1.0])) is stack_block  # nothing registered for it


def test_lookup_returns_a_registered_array_type_implementation():
    def numpy_double(a):
        return 2 * a

    def dummy_double(a):
        return DummyArray(2 * a.data)

    assert register("test_double", np.ndarray, numpy_double) is numpy_double
    register("test_double", DummyArray, dummy_double)
    assert lookup("test_double", np.ones(2)) is numpy_double
    assert lookup("test_double", np.ones(2), DummyArray([1.0])) is dummy_double
    got = lookup("test_double", DummyArray([1.0, 2.0]))(DummyArray([1.0, 2.0]))
    assert isinstance(got, DummyArray)
    np.testing.assert_array_equal(got.data, [2.0, 4.0])


def test_lookup_of_an_unknown_kernel_raises():
    with pytest.raises(KeyError, match="no kernel"):
        lookup("no_such_kernel", np.zeros(1))
    register("test_dummy_only", DummyArray, lambda a: a)
    with pytest.raises(KeyError, match="numpy"):
        lookup("test_dummy_only", np.zeros(1))
    with pytest.raises(TypeError, match="type"):
        register("test_double", "not a type", lambda a: a)
