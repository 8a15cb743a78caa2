"""ip_diffim PSF matching (algorithms.md 6.2-6.5): bases, candidate and spatial solutions, the
rejection loop and the spatially varying convolution."""

import numpy as np
import pytest
from scipy.signal import correlate2d, fftconvolve

from coaddx.kernels.psfmatch.basis import (
    alard_lupton_basis,
    alard_lupton_sigmas,
    delta_function_basis,
    kernel_norm_matrix,
    regularization_matrix,
    renormalize_basis,
)
from coaddx.kernels.psfmatch.convolve import convolve_spatial
from coaddx.kernels.psfmatch.fit import CandidateStamp, FitOptions, fit_psf_matching_kernel
from coaddx.kernels.psfmatch.solve import (
    SpatialKernel,
    bbox_from_shape,
    candidate_diffim_stats,
    solve_candidate,
    solve_spatial,
)

HALF = 20  # stamp half-size (LSST fpGrowPix = kernelSize for scaleByFwhm)
TEMPLATE_PSF = 1.0


def _gaussian(size, sigma):
    h = size // 2
    v, u = np.mgrid[-h : h + 1, -h : h + 1]
    g = np.exp(-(u * u + v * v) / (2 * sigma**2))
    return g / g.sum()


def _star_field(shape, n_side, psf_sigma, rng, sky=50.0):
    """Stars on a jittered grid (x, y) rendered as sampled Gaussians, plus a flat sky."""
    ny, nx = shape
    gx = np.linspace(45, nx - 46, n_side)
    gy = np.linspace(45, ny - 46, n_side)
    pos = np.array([(x, y) for y in gy for x in gx]) + rng.uniform(-3, 3, (n_side**2, 2))
    pos = np.round(pos)
    image = np.full(shape, sky)
    yy, xx = np.mgrid[-12:13, -12:13]
    for (x, y), flux in zip(pos, rng.uniform(2e4, 1e5, len(pos)), strict=True):
        dx, dy = rng.uniform(-0.5, 0.5, 2)
        g = np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * psf_sigma**2))
        image[int(y) - 12 : int(y) + 13, int(x) - 12 : int(x) + 13] += flux * g / g.sum()
    return image, pos


def _stamps(template, science, var_t, var_s, pos, mask=None):
    out = []
    for x, y in pos:
        sl = (slice(int(y) - HALF, int(y) + HALF + 1), slice(int(x) - HALF, int(x) + HALF + 1))
        m = None if mask is None else mask[sl]
        out.append(CandidateStamp(x, y, template[sl], science[sl], var_t[sl], var_s[sl], m, m))
    return out


@pytest.fixture(scope="module")
def gaussian_scene():
    """template ⊗ (1.3 · Gaussian σ=1.5) + 5 + noise; 64 stars (PSF σ 1.0) on 512².

    A sharp template keeps the kernel pixels themselves well determined: with a template PSF of
    σ 1.6 the matched PSF K ⊗ PSF is still recovered to < 0.1 %, but single kernel pixels of
    the narrow σ=0.7 bases are barely constrained (tens of % of the peak per pixel).
    """
    rng = np.random.default_rng(42)
    truth, pos = _star_field((512, 512), 8, TEMPLATE_PSF, rng)
    kernel = 1.3 * _gaussian(21, 1.5)
    science = fftconvolve(truth, kernel, mode="same") + 5.0
    var_t, var_s = np.full(truth.shape, 0.3**2), np.full(truth.shape, 2.0**2)
    template = truth + rng.normal(0, 0.3, truth.shape)
    science = science + rng.normal(0, 2.0, truth.shape)
    return template, science, var_t, var_s, pos, kernel


@pytest.fixture(scope="module")
def al_basis():
    return alard_lupton_basis(21, (0.7, 1.5, 3.0), (4, 2, 2))


# ----------------------------------------------------------------------------------- bases


def test_alard_lupton_basis_counts_sums_and_norms(al_basis):
    assert al_basis.shape == (27, 21, 21)
    sums = al_basis.sum(axis=(1, 2))
    assert sums[0] == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_allclose(sums[1:], 0.0, atol=1e-13)
    np.testing.assert_allclose((al_basis[1:] ** 2).sum(axis=(1, 2)), 1.0, rtol=1e-12)
    # B_0 is the sampled unit-sum Gaussian of σ 0.7; B_15 ∝ G(1.5) - G(0.7)
    np.testing.assert_allclose(al_basis[0], _gaussian(21, 0.7), atol=1e-15)
    diff = _gaussian(21, 1.5) - _gaussian(21, 0.7)
    np.testing.assert_allclose(al_basis[15], diff / np.sqrt((diff**2).sum()), atol=1e-13)
    assert alard_lupton_basis(7, (1.0, 2.5), (4, 2)).shape == (21, 7, 7)
    with pytest.raises(ValueError, match="odd"):
        alard_lupton_basis(20, (1.0,), (2,))


def test_alard_lupton_basis_polynomial_runs_minus_one_to_one():
    # degree-1 Gaussian with huge σ: B_1 ∝ x/half (odd: zero sum, only L2-normalised)
    b = alard_lupton_basis(5, (1e6,), (1,))
    x = np.tile(np.arange(-2, 3) / 2.0, (5, 1))
    np.testing.assert_allclose(b[1], x / np.sqrt((x**2).sum()), atol=1e-9)
    np.testing.assert_allclose(b[2], x.T / np.sqrt((x**2).sum()), atol=1e-9)


def test_alard_lupton_sigmas_worked_example_and_modes():
    sig, size = alard_lupton_sigmas(3.0, 4.0)  # algorithms.md 6.2
    np.testing.assert_allclose(sig, (0.7, 1.4, 2.8))
    assert size == 21
    assert alard_lupton_sigmas(None, 4.0) == ((0.7, 1.5, 3.0), 21)
    assert alard_lupton_sigmas(3.0, 3.0, kernel_size=23) == ((0.7, 1.5, 3.0), 23)
    assert alard_lupton_sigmas(3.0, 5.0, scale_by_fwhm=False) == ((0.7, 1.5, 3.0), 21)
    # wide convolution: k = sqrt(σ_s² - σ_t²) = 4 -> (2, 4, 8), size int(48) -> clamped to 35
    sig, size = alard_lupton_sigmas(3.0 * 2.3548200450309493, 5.0 * 2.3548200450309493)
    np.testing.assert_allclose(sig, (2.0, 4.0, 8.0))
    assert size == 35
    # moderate: k = 2.4 -> (1.2, 2.4, 4.8), int(28.8) = 28 -> 29
    s = 2.3548200450309493
    sig, size = alard_lupton_sigmas(1.0 * s, np.hypot(1.0, 2.4) * s)
    np.testing.assert_allclose(sig, (1.2, 2.4, 4.8))
    assert size == 29
    # deconvolution: floor alardMinSigDeconv 0.4
    sig, _ = alard_lupton_sigmas(4.0, 3.9)
    np.testing.assert_allclose(sig, (0.4, 0.8, 1.6))
    with pytest.raises(ValueError, match="n_gauss"):
        alard_lupton_sigmas(3.0, 4.0, sigmas=(1.0, 2.0))


def test_delta_function_basis_positions():
    b = delta_function_basis(5)
    assert b.shape == (25, 5, 5)
    np.testing.assert_array_equal(b.sum(axis=(1, 2)), 1.0)
    for index in (0, 7, 24):
        assert b[index, index // 5, index % 5] == 1.0


def test_renormalize_basis_rule():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.1, 1.0, (4, 5, 5))
    raw[2] -= raw[2].mean()  # a zero-sum input is only L2-normalised
    b = renormalize_basis(raw)
    assert b[0].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(b[0], raw[0] / raw[0].sum())
    np.testing.assert_allclose(b[1:].sum(axis=(1, 2)), 0.0, atol=1e-14)
    np.testing.assert_allclose((b[1:] ** 2).sum(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(b[2], raw[2] / np.sqrt((raw[2] ** 2).sum()))
    expect = raw[1] / raw[1].sum() - b[0]
    np.testing.assert_allclose(b[1], expect / np.sqrt((expect**2).sum()))


@pytest.mark.parametrize("kind", ["centralDifference", "forwardDifference"])
@pytest.mark.parametrize("fit_background", [False, True])
def test_regularization_matrix_symmetric_psd(kind, fit_background):
    h = regularization_matrix(7, kind=kind, fit_background=fit_background)
    n = 49 + int(fit_background)
    assert h.shape == (n, n)
    np.testing.assert_allclose(h, h.T)
    assert np.linalg.eigvalsh(h).min() > -1e-10
    if fit_background:
        assert not h[-1].any()


def test_regularization_matrix_border_penalty():
    # 5-point stencil: the corner is only touched by its own border row -> H = penalty²
    for penalty in (0.0, 3.0):
        h = regularization_matrix(7, stencil=5, border_penalty=penalty)
        assert h[0, 0] == pytest.approx(penalty**2)
    # 9-point: plus the (1/6)² diagonal weight of the interior pixel (1, 1)
    h9 = regularization_matrix(7, stencil=9, border_penalty=3.0)
    assert h9[0, 0] == pytest.approx(9.0 + 1.0 / 36.0)
    # interior rows annihilate a constant kernel; only border rows act on it
    flat = np.ones(49)
    assert flat @ h9 @ flat == pytest.approx(9.0 * 24)  # 24 border pixels of a 7x7 kernel
    # forward difference, order 1: last pixel (far corner) is the border diagonal twice (x, y)
    hf = regularization_matrix(3, kind="forwardDifference", orders=(1,), border_penalty=3.0)
    bf = np.zeros((9, 9))
    for i in range(9):
        r, c = divmod(i, 3)
        for d, dist in ((1, 2 - c), (3, 2 - r)):
            if dist == 0:
                bf[i, i] += 3.0
            else:
                bf[i, i] -= 1.0
                bf[i, i + d] += 1.0
    np.testing.assert_allclose(hf, bf.T @ bf)
    with pytest.raises(ValueError):
        regularization_matrix(7, border_penalty=-1.0)


def test_kernel_norm_matrix_gives_the_kernel_square_sum(al_basis):
    """aᵀGa = ΣK² for K = Σ a_j B_j; G is symmetric positive definite for the AL basis."""
    g = kernel_norm_matrix(al_basis)
    a = np.random.default_rng(0).normal(size=al_basis.shape[0])
    kernel = np.tensordot(a, al_basis, axes=1)
    assert a @ g @ a == pytest.approx((kernel**2).sum(), rel=1e-12)
    np.testing.assert_allclose(g, g.T)
    assert np.linalg.eigvalsh(g).min() > 0


def test_solve_candidate_kernel_norm_penalty_shrinks_the_kernel(al_basis):
    """As ``regularization`` the Gram matrix is a ridge on the kernel image: with a relative
    weight λ = s·tr(M)/tr(G) the solution is (M + λG)⁻¹b and ΣK² falls as s grows."""
    t = _gaussian(41, 1.2)
    s = fftconvolve(t, _gaussian(21, 1.5), mode="same")
    vt = vs = np.ones_like(t)
    g = kernel_norm_matrix(al_basis)
    plain = solve_candidate(t, s, vt, vs, al_basis)
    sums = [(plain.kernel**2).sum()]
    for scaling in (1e-3, 1e-1):
        sol = solve_candidate(
            t, s, vt, vs, al_basis, regularization=g, lam_type="relative", lam_scaling=scaling
        )
        lam = scaling * np.trace(plain.m) / np.trace(g)
        assert sol.lam == pytest.approx(lam)
        np.testing.assert_allclose(
            sol.coeffs, np.linalg.solve(plain.m + lam * g, plain.b), rtol=1e-8, atol=1e-12
        )
        sums.append((sol.kernel**2).sum())
    assert sums[0] > sums[1] > sums[2]


# ------------------------------------------------------------------------- candidate solution


def test_solve_candidate_recovers_gaussian_kernel_on_one_stamp(gaussian_scene, al_basis):
    template, science, var_t, var_s, pos, kernel = gaussian_scene
    st = _stamps(template, science, var_t, var_s, pos[:1])[0]
    sol = solve_candidate(
        st.template,
        st.science,
        st.variance_template,
        st.variance_science,
        al_basis,
        fit_background=True,
    )
    assert sol.kernel_sum == pytest.approx(1.3, rel=0.005)
    assert sol.m.shape == (28, 28) and sol.b.shape == (28,)
    assert sol.n_pixels == (2 * HALF + 1 - 20) ** 2 and sol.variance == pytest.approx(4.09)
    assert np.abs(sol.kernel - kernel).max() < 0.1 * kernel.max()  # one star, 28 unknowns
    assert sol.background == pytest.approx(5.0, abs=0.5)
    mean, rms = candidate_diffim_stats(
        st.template,
        st.science,
        st.variance_template,
        st.variance_science,
        None,
        None,
        sol.kernel,
        sol.background,
        bad_bits=0,
    )
    assert abs(mean) < 0.25 and 0.8 < rms < 1.2
    core = candidate_diffim_stats(
        st.template,
        st.science,
        st.variance_template,
        st.variance_science,
        None,
        None,
        sol.kernel,
        sol.background,
        bad_bits=0,
        core_radius=3,
    )
    assert np.isfinite(core).all()


def test_candidate_diffim_stats_skips_bad_bits():
    rng = np.random.default_rng(3)
    t = rng.normal(0, 1, (15, 15))
    s = t + rng.normal(0, 1, t.shape)
    k = np.zeros((3, 3))
    k[1, 1] = 1.0
    ones = np.ones_like(t)
    s[7, 7] = 1e6
    mean, _ = candidate_diffim_stats(t, s, ones * 0, ones, None, None, k, 0.0, bad_bits=0)
    assert mean > 100
    mask = np.zeros(t.shape, np.int32)
    mask[7, 7] = 4
    mean, rms = candidate_diffim_stats(t, s, ones * 0, ones, None, mask, k, 0.0, bad_bits=4)
    assert abs(mean) < 0.5 and 0.5 < rms < 1.5
    # a template mask bit spreads over the kernel footprint
    mt = np.zeros(t.shape, np.int32)
    mt[6, 6] = 4
    z_all = candidate_diffim_stats(t, s, ones * 0, ones, mt, None, k, 0.0, bad_bits=4)
    assert abs(z_all[0]) < 0.5


def test_solve_candidate_self_match_is_delta(gaussian_scene):
    template, _, var_t, _, pos, _ = gaussian_scene
    st = _stamps(template, template, var_t, var_t, pos[:1])[0]
    basis = delta_function_basis(9)
    sol = solve_candidate(st.template, st.science, var_t[:41, :41], var_t[:41, :41], basis)
    assert sol.kernel[4, 4] == pytest.approx(1.0, abs=1e-9)
    sol.kernel[4, 4] = 0.0
    assert np.abs(sol.kernel).max() < 1e-9
    # regularised (λ = 0.2, 9-point Laplacian): still essentially a delta
    h = regularization_matrix(9)
    reg = solve_candidate(
        st.template, st.science, var_t[:41, :41], var_t[:41, :41], basis, regularization=h, lam=0.2
    )
    assert reg.kernel[4, 4] == pytest.approx(1.0, abs=1e-3) and reg.lam == 0.2
    rel = solve_candidate(
        st.template,
        st.science,
        var_t[:41, :41],
        var_t[:41, :41],
        basis,
        regularization=h,
        lam_type="relative",
    )
    assert rel.lam == pytest.approx(1e-4 * np.trace(sol.m) / np.trace(h))
    assert np.abs(reg.kernel - np.eye(81)[40].reshape(9, 9)).max() < 1e-3


def test_solve_candidate_rejects_bad_input(al_basis):
    t = np.ones((41, 41))
    with pytest.raises(ValueError, match="<= 0"):
        solve_candidate(t, t, np.zeros_like(t), np.zeros_like(t), al_basis, constant_variance=False)
    bad = t.copy()
    bad[20, 20] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        solve_candidate(bad, t, t, t, al_basis)
    with pytest.raises(ValueError, match="exceed"):
        solve_candidate(t[:15, :15], t[:15, :15], t[:15, :15], t[:15, :15], al_basis)


# --------------------------------------------------------------------------- the full loop


def test_fit_recovers_gaussian_kernel_and_background(gaussian_scene, al_basis):
    template, science, var_t, var_s, pos, kernel = gaussian_scene
    stamps = _stamps(template, science, var_t, var_s, pos)
    spatial, info = fit_psf_matching_kernel(
        stamps,
        basis=al_basis,
        bbox=bbox_from_shape(template.shape),
        options=FitOptions(fit_background=True),
    )
    assert info.converged and info.n_used >= 56 and info.status.count("good") == info.n_used
    assert info.status.count("bad") == info.rejections["kernel_sum"]  # clean data: 3σ tails only
    psf = _gaussian(21, TEMPLATE_PSF)
    matched = fftconvolve(kernel, psf, mode="same")
    for x, y in [(50, 50), (256, 256), (460, 100), (100, 460)]:
        k = spatial.kernel_image(x, y)
        assert spatial.kernel_sum(x, y) == pytest.approx(1.3, rel=0.001)
        assert np.abs(k - kernel).max() < 0.015 * kernel.max()
        assert np.abs(fftconvolve(k, psf, mode="same") - matched).max() < 0.001 * matched.max()
        assert spatial.background(x, y) == pytest.approx(5.0, abs=0.1)
    assert spatial.coeffs.shape == (27, 6) and not spatial.coeffs[0, 1:].any()
    assert spatial.bg_coeffs.shape == (3,)
    assert info.ksum_mean == pytest.approx(1.3, rel=0.005)


def test_fit_rejects_kernel_sum_outlier(gaussian_scene, al_basis):
    template, science, var_t, var_s, pos, _ = gaussian_scene
    stamps = _stamps(template, science, var_t, var_s, pos)
    st = stamps[10]  # a variable star: 1.6x brighter in the science image
    stamps[10] = CandidateStamp(
        st.x,
        st.y,
        st.template,
        (st.science - 55.0) * 1.6 + 55.0,
        st.variance_template,
        st.variance_science,
    )
    spatial, info = fit_psf_matching_kernel(
        stamps,
        basis=al_basis,
        bbox=bbox_from_shape(template.shape),
        options=FitOptions(fit_background=True),
    )
    assert info.status[10] == "bad" and info.rejections["kernel_sum"] >= 1
    assert info.n_restarts >= 1
    assert spatial.kernel_sum(256, 256) == pytest.approx(1.3, rel=0.005)


def test_fit_with_pca_basis(gaussian_scene, al_basis):
    template, science, var_t, var_s, pos, kernel = gaussian_scene
    stamps = _stamps(template, science, var_t, var_s, pos)
    spatial, info = fit_psf_matching_kernel(
        stamps,
        basis=al_basis,
        bbox=bbox_from_shape(template.shape),
        options=FitOptions(fit_background=True, use_pca=True, use_core_stats=True),
    )
    assert info.basis.shape == (5, 21, 21) and spatial.basis.shape == (5, 21, 21)
    assert info.basis[0].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(info.basis[1:].sum(axis=(1, 2)), 0.0, atol=1e-12)
    assert spatial.kernel_sum(256, 256) == pytest.approx(1.3, rel=0.005)
    assert np.abs(spatial.kernel_image(256, 256) - kernel).max() < 0.01 * kernel.max()


def test_fit_self_match_delta_function_basis(gaussian_scene):
    template, _, var_t, _, pos, _ = gaussian_scene
    stamps = _stamps(template, template, var_t, var_t, pos[:16])
    spatial, info = fit_psf_matching_kernel(
        stamps,
        basis=delta_function_basis(7),
        bbox=bbox_from_shape(template.shape),
        options=FitOptions(spatial_order=1),
    )
    assert not spatial.constant_first_term and info.n_used == 16
    for x, y in [(60, 60), (300, 200)]:
        k = spatial.kernel_image(x, y)
        assert k[3, 3] == pytest.approx(1.0, abs=1e-6)
        k[3, 3] = 0.0
        assert np.abs(k).max() < 1e-6


def test_fit_without_usable_candidates_raises(gaussian_scene, al_basis):
    template, science, var_t, var_s, pos, _ = gaussian_scene
    bbox = bbox_from_shape(template.shape)
    with pytest.raises(ValueError, match="no kernel candidates"):
        fit_psf_matching_kernel([], basis=al_basis, bbox=bbox)
    stamps = _stamps(template, science, var_t, var_s, pos[:6])
    with pytest.raises(ValueError, match="no usable kernel candidates"):
        fit_psf_matching_kernel(
            stamps, basis=al_basis, bbox=bbox, options=FitOptions(residual_std_max=1e-3)
        )
    nan_stamps = [
        CandidateStamp(
            s.x, s.y, s.template * np.nan, s.science, s.variance_template, s.variance_science
        )
        for s in stamps
    ]
    with pytest.raises(ValueError, match="no usable kernel candidates"):
        fit_psf_matching_kernel(nan_stamps, basis=al_basis, bbox=bbox)
    with pytest.raises(ValueError, match="no usable kernel candidates"):
        fit_psf_matching_kernel(
            stamps, basis=al_basis, bbox=bbox, options=FitOptions(max_condition_number=1.0)
        )
    with pytest.raises(ValueError, match="outside bbox"):
        fit_psf_matching_kernel(stamps, basis=al_basis, bbox=(0, 0, 10, 10))


def test_fit_visits_n_star_per_cell_best_rated_first(gaussian_scene, al_basis):
    template, science, var_t, var_s, pos, _ = gaussian_scene
    stamps = _stamps(template, science, var_t, var_s, pos)
    # one 512x512 cell, 3 stars per cell: the 3 highest-rated stamps are used
    rated = [
        CandidateStamp(
            s.x,
            s.y,
            s.template,
            s.science,
            s.variance_template,
            s.variance_science,
            rating=float(i),
        )
        for i, s in enumerate(stamps)
    ]
    spatial, info = fit_psf_matching_kernel(
        rated,
        basis=al_basis,
        bbox=bbox_from_shape(template.shape),
        options=FitOptions(
            fit_background=True,
            cell_size=(512, 512),
            n_star_per_cell=3,
            spatial_order=0,
            bg_order=0,
        ),
    )
    assert [i for i, s in enumerate(info.status) if s == "good"] == [61, 62, 63]
    assert info.status.count("unused") == 61
    assert spatial.kernel_sum(0, 0) == pytest.approx(1.3, rel=0.01)


# --------------------------------------------------------------- spatially varying kernels


def _varying_truth(al_basis, bbox):
    coeffs = np.zeros((27, 3))
    coeffs[0, 0] = 1.0  # kernel sum
    coeffs[15] = (0.25, 0.08, 0.0)  # σ=1.5 Gaussian share varies along x
    coeffs[1] = (0.0, 0.0, 0.03)  # asymmetric x-gradient term varies along y
    return SpatialKernel(al_basis, coeffs, None, 1, 0, "chebyshev1", bbox)


def test_fit_recovers_spatially_varying_kernel(al_basis):
    rng = np.random.default_rng(7)
    shape = (1024, 1024)
    bbox = bbox_from_shape(shape)
    truth_kernel = _varying_truth(al_basis, bbox)
    truth, pos = _star_field(shape, 16, TEMPLATE_PSF, rng)
    var_t, var_s = np.full(shape, 0.3**2), np.full(shape, 2.0**2)
    science, _, _ = convolve_spatial(truth, var_t, None, truth_kernel)
    template = truth + rng.normal(0, 0.3, shape)
    science = science + rng.normal(0, 2.0, shape)
    spatial, info = fit_psf_matching_kernel(
        _stamps(template, science, var_t, var_s, pos), basis=al_basis, bbox=bbox
    )
    assert info.converged and info.n_used >= 250
    for x, y in [(60, 60), (512, 512), (960, 100), (100, 960), (960, 960), (300, 700)]:
        want = truth_kernel.kernel_image(x, y)
        assert spatial.kernel_sum(x, y) == pytest.approx(1.0, rel=0.001)
        assert np.abs(spatial.kernel_image(x, y) - want).max() < 0.015 * want.max()


def test_solve_spatial_exact_for_noise_free_normal_equations(al_basis):
    # candidates whose local solutions follow a linear spatial law are fitted exactly
    bbox = (0.0, 0.0, 100.0, 100.0)
    truth = _varying_truth(al_basis, bbox)
    rng = np.random.default_rng(1)
    pos = rng.uniform(0, 100, (12, 2))
    cands = []
    for x, y in pos:
        m = rng.normal(size=(27, 27))
        m = m @ m.T + 27 * np.eye(27)
        a = truth.coefficients(x, y)
        cands.append(type("C", (), {"m": m, "b": m @ a})())
    fit = solve_spatial(cands, pos, al_basis, spatial_order=1, bbox=bbox)
    np.testing.assert_allclose(fit.coeffs, truth.coeffs, atol=1e-10)
    # the raw-coordinate polynomial spans the same functions: same kernels
    poly = solve_spatial(cands, pos, al_basis, spatial_order=1, bbox=bbox, model="polynomial")
    for x, y in pos[:3]:
        np.testing.assert_allclose(poly.kernel_image(x, y), truth.kernel_image(x, y), atol=1e-10)
    assert fit.with_kernel_sum(1.7).kernel_sum(30.0, 60.0) == pytest.approx(1.7)
    with pytest.raises(ValueError, match="no kernel candidates"):
        solve_spatial([], pos[:0], al_basis, bbox=bbox)


# --------------------------------------------------------------------------- convolution


@pytest.mark.parametrize("method", ["exact", "blockwise"])
def test_convolve_spatial_constant_kernel_matches_correlate2d(method):
    """afw's convolve is a correlation with the kernel image (the kernel is not flipped); the
    blockwise method is exact for a constant kernel."""
    rng = np.random.default_rng(5)
    image = rng.normal(10, 3, (60, 70))
    variance = rng.uniform(1, 2, image.shape)
    kern = rng.uniform(0, 1, (7, 7))
    basis = kern[None] / kern.sum()
    spatial = SpatialKernel(basis, np.array([[2.0]]), None, 0, 0, "chebyshev1", (0, 0, 1, 1))
    out, var, mask = convolve_spatial(
        image, variance, np.zeros(image.shape, np.int32), spatial, bad_bits=256, method=method
    )
    inner = (slice(3, -3), slice(3, -3))
    k = 2.0 * basis[0]
    np.testing.assert_allclose(out[inner], correlate2d(image, k, mode="valid"), rtol=1e-12)
    np.testing.assert_allclose(var[inner], correlate2d(variance, k * k, mode="valid"), rtol=1e-12)
    assert np.isnan(out[:3]).all() and np.isinf(var[:, -3:]).all()
    assert (mask[:3] == 256).all() and (mask[inner] == 0).all()
    assert out.dtype == np.float64


@pytest.mark.parametrize("model", ["chebyshev1", "polynomial"])
def test_convolve_spatial_varying_kernel_matches_direct_sums(al_basis, model):
    rng = np.random.default_rng(6)
    image = rng.normal(0, 1, (80, 90)).astype(np.float32)
    variance = rng.uniform(1, 2, image.shape)
    mask = np.zeros(image.shape, np.int32)
    mask[40, 45] = 8
    origin = (1000, 2000)  # the tile sits inside a larger parent image
    bbox = (900.0, 1900.0, 1300.0, 2200.0)
    coeffs = np.pad(_varying_truth(al_basis, bbox).coeffs, ((0, 0), (0, 3)))
    coeffs[1:] += rng.normal(0, 0.02, (26, 6))
    if model == "polynomial":  # raw pixel coordinates: keep the terms O(0.02)
        coeffs /= np.array([1, 1e3, 2e3, 1e6, 2e6, 4e6])
    spatial = SpatialKernel(al_basis, coeffs, None, 2, 0, model, bbox)
    out, var, out_mask = convolve_spatial(image, variance, mask, spatial, origin=origin)
    assert out.dtype == np.float32
    for r, c in [(10, 10), (40, 45), (69, 79), (25, 60)]:
        k = spatial.kernel_image(origin[0] + c, origin[1] + r)
        window = image[r - 10 : r + 11, c - 10 : c + 11].astype(np.float64)
        vwin = variance[r - 10 : r + 11, c - 10 : c + 11]
        assert out[r, c] == pytest.approx((k * window).sum(), abs=1e-5)  # afw: correlation
        assert var[r, c] == pytest.approx((k**2 * vwin).sum(), rel=1e-5)
    assert out_mask[30, 35] == 8 and out_mask[50, 55] == 8 and out_mask[29, 45] == 0


def test_convolve_spatial_normalize_gives_unit_local_sums(al_basis):
    bbox = (-0.5, -0.5, 99.5, 99.5)
    spatial = _varying_truth(al_basis, bbox)
    coeffs = spatial.coeffs.copy()
    coeffs[0] = (1.0, 0.3, -0.2)  # kernel sum varies with position
    spatial = SpatialKernel(
        al_basis, coeffs, None, 1, 0, "chebyshev1", bbox, constant_first_term=False
    )
    assert spatial.kernel_sum(0, 0) != pytest.approx(spatial.kernel_sum(99, 99))
    ones = np.ones((100, 100))
    out, var, _ = convolve_spatial(ones, ones, None, spatial, normalize=True)
    np.testing.assert_allclose(out[10:-10, 10:-10], 1.0, rtol=1e-10)
    k = spatial.kernel_image(50, 50)
    assert var[50, 50] == pytest.approx((k * k).sum() / k.sum() ** 2, rel=1e-10)
    raw, _, _ = convolve_spatial(ones, ones, None, spatial)
    ys, xs = np.mgrid[10:90, 10:90]
    np.testing.assert_allclose(raw[10:-10, 10:-10], spatial.kernel_sum(xs, ys), rtol=1e-10)


def test_convolve_spatial_nan_input_spoils_only_its_footprint():
    basis = np.ones((1, 5, 5)) / 25.0
    spatial = SpatialKernel(basis, np.array([[1.0]]), None, 0, 0, "polynomial", (0, 0, 1, 1))
    image = np.ones((30, 30))
    image[15, 15] = np.nan
    out, _, mask = convolve_spatial(image, np.ones_like(image), None, spatial, bad_bits=1)
    assert np.isnan(out[13:18, 13:18]).all() and (mask[13:18, 13:18] == 1).all()
    assert np.isfinite(out[2:13, 2:28]).all() and (mask[2:13, 2:28] == 0).all()
    np.testing.assert_allclose(out[2:13, 2:28], 1.0)
