"""The compiled PSF-matching fit (coaddx.kernels.psfmatch.stamps / design) against brute-force
references, and afw's kernel sense (a correlation) of the fitted and returned kernels."""

import numpy as np
import pytest
from scipy.ndimage import correlate
from scipy.signal import correlate2d

from coaddx.kernels.psfmatch.basis import (
    alard_lupton_basis,
    delta_function_basis,
    renormalize_basis,
    separable_basis,
)
from coaddx.kernels.psfmatch.convolve import convolve_spatial
from coaddx.kernels.psfmatch.fit import CandidateStamp, FitOptions, fit_psf_matching_kernel
from coaddx.kernels.psfmatch.solve import (
    bbox_from_shape,
    candidate_diffim_stats,
    solve_candidate,
    solve_normal_batch,
)
from coaddx.kernels.psfmatch.stamps import (
    NON_FINITE,
    OK,
    StampStack,
    keep_mask,
    normal_equations,
    stamp_stats,
)


def _brute_normal(t, s, vt, vs, basis, fit_background, constant_variance):
    """M = CᵀWC, b = CᵀWd with every column a scipy correlate2d (afw's sense)."""
    h = basis.shape[-1] // 2
    cols = [correlate2d(t, b, mode="valid").ravel() for b in basis]
    if fit_background:
        cols.append(np.ones(cols[0].size))
    c = np.stack(cols, axis=1)
    v = vt + vs
    w = np.full(c.shape[0], 1.0 / np.median(v)) if constant_variance else 1 / v[h:-h, h:-h].ravel()
    d = s[h:-h, h:-h].ravel()
    return c.T @ (c * w[:, None]), c.T @ (w * d)


def _random_stack(rng, n, shape):
    planes = [rng.normal(size=(n, *shape)) for _ in range(2)]
    var = [rng.uniform(0.5, 2.0, (n, *shape)) for _ in range(2)]
    return StampStack(planes[0], planes[1], var[0], var[1])


BASES = {
    "al3": lambda: alard_lupton_basis(21, (0.88, 1.75, 3.5), (4, 2, 2)),
    "al2": lambda: alard_lupton_basis(15, (1.0, 2.5), (3, 1)),
    "al1": lambda: alard_lupton_basis(9, (1.3,), (5,)),
    "df5": lambda: delta_function_basis(5),  # compiled direct correlations
    "df9": lambda: delta_function_basis(9),  # one matrix product per stamp
    "pca": lambda: renormalize_basis(np.random.default_rng(9).normal(size=(4, 11, 11))),
}


@pytest.mark.parametrize("name", sorted(BASES))
@pytest.mark.parametrize("constant_variance", [True, False])
@pytest.mark.parametrize("fit_background", [True, False])
def test_normal_equations_match_brute_force(name, constant_variance, fit_background):
    basis = BASES[name]()
    assert (separable_basis(basis) is not None) == name.startswith("al")
    rng = np.random.default_rng(len(name))
    size = basis.shape[-1]
    stack = _random_stack(rng, 4, (size + 20, size + 23))  # not square
    rows = np.array([3, 0, 2])
    eq = normal_equations(
        stack,
        rows,
        basis,
        fit_background=fit_background,
        constant_variance=constant_variance,
    )
    assert (eq.status == OK).all() and eq.n_pixels == 21 * 24
    for i, r in enumerate(rows):
        m, b = _brute_normal(
            stack.template[r],
            stack.science[r],
            stack.variance_template[r],
            stack.variance_science[r],
            basis,
            fit_background,
            constant_variance,
        )
        np.testing.assert_allclose(eq.m[i], m, rtol=0, atol=1e-10 * np.abs(m).max())
        np.testing.assert_allclose(eq.b[i], b, rtol=0, atol=1e-10 * np.abs(b).max())


def test_separable_form_reproduces_the_basis():
    basis = alard_lupton_basis(19, (0.7, 1.5, 3.0), (4, 2, 2))
    form = separable_basis(basis)
    np.testing.assert_allclose(form.images(), basis, rtol=0, atol=1e-15)
    assert separable_basis(basis.copy()) is form  # looked up by content
    assert separable_basis(basis[:, ::-1]) is None and separable_basis(basis[0]) is None


def test_normal_equations_status_and_threads():
    basis = alard_lupton_basis(11, (1.0, 2.0), (2, 1))
    rng = np.random.default_rng(2)
    stack = _random_stack(rng, 150, (31, 31))
    stack.template[5, 0, 0] = np.nan  # a template pixel: every column is spoiled
    stack.science[7, 0, 0] = np.inf  # outside the valid region: ignored
    stack.science[8, 15, 15] = np.nan
    rows = np.arange(150)
    one = normal_equations(stack, rows, basis, fit_background=True, constant_variance=True)
    many = normal_equations(
        stack, rows, basis, fit_background=True, constant_variance=True, threads=3
    )
    assert one.status[5] == NON_FINITE and one.status[8] == NON_FINITE
    assert one.status[7] == OK and (one.status == OK).sum() == 148
    np.testing.assert_array_equal(one.m, many.m)
    np.testing.assert_array_equal(one.b, many.b)


def test_solve_normal_batch_matches_lapack_and_handles_singular():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(5, 28, 28))
    m = a @ a.transpose(0, 2, 1) + np.eye(28)
    b = rng.normal(size=(5, 28))
    x, failed = solve_normal_batch(m, b)
    np.testing.assert_allclose(x, np.linalg.solve(m, b[..., None])[..., 0], rtol=1e-9)
    assert not failed.any()
    sing = np.zeros((1, 3, 3))
    sing[0, :2, :2] = np.eye(2) * 2.0
    x, _ = solve_normal_batch(sing, np.array([[2.0, 4.0, 7.0]]))
    np.testing.assert_allclose(x[0], [1.0, 2.0, 0.0])  # pseudo-inverse drops the null space


def test_stamp_stats_match_candidate_diffim_stats():
    rng = np.random.default_rng(5)
    n, shape, size = 6, (27, 29), 7
    stack = _random_stack(rng, n, shape)
    mask_t = np.zeros((n, *shape), np.int32)
    mask_s = np.zeros((n, *shape), np.int32)
    mask_t[1, 10, 12], mask_s[2, 5, 6], mask_s[3, 9, 9] = 4, 4, 1  # bit 1 is not bad
    stack = StampStack(
        stack.template,
        stack.science,
        stack.variance_template,
        stack.variance_science,
        mask_t,
        mask_s,
    )
    stack.science[4, 4, 20] = np.nan  # NaN propagates (outside the core box)
    kernels = rng.normal(size=(n, size, size))
    bg = rng.normal(size=n)
    for core in (None, 3):
        keep = keep_mask(stack, size // 2, bad_bits=4, core_radius=core)
        mean, rms = stamp_stats(stack, np.arange(n), kernels, bg, keep)
        for i in range(n):
            want = candidate_diffim_stats(
                stack.template[i],
                stack.science[i],
                stack.variance_template[i],
                stack.variance_science[i],
                mask_t[i],
                mask_s[i],
                kernels[i],
                bg[i],
                bad_bits=4,
                core_radius=core,
            )
            np.testing.assert_allclose([mean[i], rms[i]], want, rtol=1e-10)
        assert np.isnan(mean[4]) == (core is None)  # the NaN pixel is outside the core


# --------------------------------------------------------------------------- afw's sense


def _asymmetric_truth(basis):
    """An asymmetric kernel in the AL span: a Gaussian with x and y gradients and a skew."""
    a = np.zeros(basis.shape[0])
    a[0], a[1], a[2], a[6] = 1.0, 0.05, -0.03, 0.02
    return a, np.tensordot(a, basis, axes=1)


def _correlated_scene(kernel, rng, shape=(400, 400)):
    """template stars; science = correlate(template, kernel) (afw's convolve) + noise."""
    truth = np.full(shape, 20.0)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    pos = [(x, y) for y in range(40, shape[0] - 39, 40) for x in range(40, shape[1] - 39, 40)]
    for x, y in pos:
        dx, dy = rng.uniform(-0.5, 0.5, 2)
        truth += rng.uniform(2e4, 8e4) * np.exp(-((xx - x - dx) ** 2 + (yy - y - dy) ** 2) / 2.0)
    science = correlate(truth, kernel, mode="constant") + rng.normal(0, 0.5, shape)
    template = truth + rng.normal(0, 0.1, shape)
    return template, science, pos


def test_fitted_kernel_images_are_afw_correlation_kernels():
    basis = alard_lupton_basis(15, (0.8, 1.6, 3.2), (4, 2, 2))
    a_true, k_true = _asymmetric_truth(basis)
    assert np.abs(k_true - k_true[::-1, ::-1]).max() > 0.2 * k_true.max()  # a real test
    rng = np.random.default_rng(11)
    template, science, pos = _correlated_scene(k_true, rng)
    var_t, var_s = np.full(template.shape, 0.01), np.full(template.shape, 0.25)
    half = 22
    stamps = [
        CandidateStamp(
            x,
            y,
            *(p[y - half : y + half + 1, x - half : x + half + 1] for p in (template, science)),
            *(p[y - half : y + half + 1, x - half : x + half + 1] for p in (var_t, var_s)),
        )
        for x, y in pos
    ]
    one = solve_candidate(
        stamps[12].template,
        stamps[12].science,
        stamps[12].variance_template,
        stamps[12].variance_science,
        basis,
    )
    assert np.abs(one.kernel - k_true).max() < 0.02 * k_true.max()
    np.testing.assert_allclose(one.coeffs[[0, 1, 2, 6]], a_true[[0, 1, 2, 6]], atol=4e-3)
    spatial, info = fit_psf_matching_kernel(
        stamps,
        basis=basis,
        bbox=bbox_from_shape(template.shape),
        options=FitOptions(spatial_order=1),
    )
    assert info.n_used >= 40
    for x, y in [(50, 50), (200, 200), (350, 80)]:
        k = spatial.kernel_image(x, y)
        assert np.abs(k - k_true).max() < 0.01 * k_true.max()
        np.testing.assert_allclose(spatial.coefficients(x, y)[[1, 2]], [0.05, -0.03], atol=2e-3)
    np.testing.assert_allclose(
        spatial.kernel_images([50.0, 350.0], [50.0, 80.0]),
        [spatial.kernel_image(50, 50), spatial.kernel_image(350, 80)],
        rtol=1e-12,
        atol=1e-15,
    )
    # the convolution applies the kernel in the same sense: the difference is noise
    matched, _, _ = convolve_spatial(template, var_t, None, spatial)
    inner = (slice(20, -20), slice(20, -20))
    diff = (science - matched)[inner]
    assert np.std(diff) < 1.1 * np.sqrt(0.25 + 0.01 * (k_true**2).sum())
    assert np.abs(diff).max() < 0.05 * science[inner].max()
