"""Run under mpiexec by tests/test_mpi.py: the PETSc path against the single-process one.

Every rank builds the same small cases with the same seeds, so each can compare its
gathered results with SciPy's serial ones. Prints ``OK <case>`` lines on rank 0; any
mismatch raises (non-zero exit).
"""

import numpy as np
import scipy.sparse.linalg as sla
from petsc4py import PETSc

import convmat
from convmat import petsc
from convmat.krylov import cgls

COMM = PETSc.COMM_WORLD
RANK, SIZE = COMM.getRank(), COMM.getSize()

CASES = [
    ("2d strided", (3, 2, 3, 3), (2, 9, 7), dict(padding=1, stride=(2, 1))),
    ("2d reflect groups", (4, 1, 3, 3), (2, 8, 8), dict(padding=1, groups=2,
                                                       padding_mode="reflect")),
    ("1d dilated", (2, 1, 5), (1, 40), dict(padding=((3, 1),), dilation=2)),
    ("3d circular", (2, 2, 3, 3, 3), (2, 5, 4, 6), dict(padding=1, padding_mode="circular")),
    ("1 channel blur", (1, 1, 5, 5), (1, 24, 24), dict(padding="same")),
]


def say(text):
    if RANK == 0:
        print(text, flush=True)


def raises(exc, text, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc as err:
        assert text in str(err), (text, str(err))
        return
    raise AssertionError(f"{fn.__name__} did not raise {exc.__name__}: {text}")


def check_errors():
    w = np.ones((1, 1, 3, 3))
    raises(TypeError, "weight dtype complex128 is complex but this PETSc build's scalar type "
           "is float64", petsc.conv_matrix, w.astype(complex), (1, 5, 5))
    raises(ValueError, "needs 64-bit indices but this PETSc build uses int32",
           petsc.conv_matrix, w, (1, 40000, 40000))
    raises(convmat.ConvMatrixTooLarge, "its share of W", petsc.conv_matrix, w, (1, 9, 9),
           max_bytes=1000)
    op = petsc.DistributedConvOperator(w, (1, 6, 6), padding=1)
    raises(ValueError, "y must be finite with 36 entries (output shape (1, 6, 6)), got shape "
           "(5,)", op.lsqr, np.ones(5))
    raises(ValueError, "y must be finite", op.lsqr, np.full(36, np.nan))
    raises(ValueError, "damp must be a finite number >= 0, got damp=-1.0", op.lsqr,
           np.ones(36), damp=-1.0)
    raises(ValueError, "rtol must be a finite number >= 0", op.lsqr, np.ones(36), rtol=np.inf)
    _, small = petsc.DistributedConvOperator(w, (1, 4, 4), padding=1).create_vecs()
    raises(ValueError, "y has 16 entries but W has 36 rows", op.lsqr, small)
    say("OK errors")


def main():
    check_errors()
    # stream every share in many small chunks (two passes: count, then insert)
    petsc.CHUNK_BYTES = 3000
    g = convmat.conv_geometry((3, 2, 3, 3), (2, 9, 7), padding=1)
    chunks = petsc._chunks(g, 0, 27, petsc.CHUNK_BYTES)
    assert len(chunks) > 3 and chunks[0][0] == 0 and chunks[-1][1] == 27
    assert all(a < b for a, b in chunks) and all(
        x[1] == y[0] for x, y in zip(chunks[:-1], chunks[1:], strict=True))
    for name, wshape, ishape, opts in CASES:
        rng = np.random.default_rng(0)
        w = rng.standard_normal(wshape)
        op = petsc.DistributedConvOperator(w, ishape, **opts)
        W = convmat.conv_matrix(w, ishape, **opts)
        rstart, rend = op.matrix.getOwnershipRange()
        # the builder's arrays handed over: the CSR itself on one rank, split arrays on more
        expected = "seqaij" if op.matrix.getComm().getSize() == 1 else "mpiaij"
        assert op.matrix.getType() == expected, (name, op.matrix.getType())
        whole = op.gather_matrix()
        # the same generator: exactly the same entries
        assert whole.shape == W.shape and (whole != W).nnz == 0, name
        np.testing.assert_array_equal(whole.toarray(), W.toarray())
        x = rng.standard_normal(op.input_shape)
        y = rng.standard_normal(op.output_shape)
        np.testing.assert_allclose(op.apply(x).ravel(), W @ x.ravel(), rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(op.apply_transpose(y).ravel(), W.T @ y.ravel(), rtol=1e-13,
                                   atol=1e-13)
        # LSQR: a fixed number of iterations gives the same iterate as SciPy's lsqr
        b = W @ rng.standard_normal(W.shape[1]) + 0.1 * rng.standard_normal(W.shape[0])
        for damp in (0.0, 0.3):
            res = op.lsqr(b.reshape(op.output_shape), damp=damp, rtol=0.0, maxiter=12)
            ref = sla.lsqr(W, b, damp=damp, atol=0.0, btol=0.0, iter_lim=12)[0]
            assert res.iterations == 12, res
            np.testing.assert_allclose(res.x.ravel(), ref, rtol=0,
                                       atol=1e-9 * np.abs(ref).max())
        # to convergence, like deconvolve
        res = op.lsqr(b.reshape(op.output_shape), damp=0.3, rtol=1e-10, maxiter=2000)
        ref = convmat.deconvolve(b, convmat.ConvOperator(w, ishape, **opts), damp=0.3,
                                 atol=1e-12, btol=1e-12, maxiter=2000)
        assert res.converged, res
        np.testing.assert_allclose(res.x, ref.x, rtol=0, atol=1e-7 * np.abs(ref.x).max())
        # the same solve on distributed vectors: x stays a Vec, norms agree
        vec = op.to_vec(b, output=True)
        res_vec = op.lsqr(vec, damp=0.3, rtol=1e-10, maxiter=2000)
        assert isinstance(res_vec.x, PETSc.Vec) and res_vec.iterations == res.iterations
        np.testing.assert_allclose(op.gather(res_vec.x), res.x.ravel(), rtol=0, atol=1e-12)
        assert abs(res_vec.residual_norm - ref.residual_norm) <= 1e-7 * np.linalg.norm(b)
        # PETSc's options database, under a prefix, overrides the settings: 5 iterations of
        # KSPCGLS give convmat's CGLS's 5th iterate (CG on the normal equations from 0)
        opts_db = PETSc.Options()
        opts_db.setValue("cm_ksp_type", "cgls")
        opts_db.setValue("cm_ksp_max_it", 5)
        res_opt = op.lsqr(b.reshape(op.output_shape), rtol=0.0, maxiter=100,
                          options_prefix="cm_")
        opts_db.delValue("cm_ksp_type")
        opts_db.delValue("cm_ksp_max_it")
        assert res_opt.method == "petsc-kspcgls" and res_opt.iterations == 5, res_opt
        ref5 = cgls(W.__matmul__, W.T.__matmul__, b, np.zeros(W.shape[1]), atol=0.0,
                    btol=0.0, maxiter=5)[0]
        np.testing.assert_allclose(res_opt.x.ravel(), ref5, rtol=0, atol=1e-9 * np.abs(ref5).max())
        plain = op.lsqr(b.reshape(op.output_shape), rtol=0.0, maxiter=3, options_prefix="none_")
        assert plain.method == "petsc-ksplsqr" and plain.iterations == 3
        say(f"OK {name}: ranks={SIZE} rows {rstart}:{rend} of {W.shape[0]}, "
            f"lsqr {res.iterations} iterations ({res.stop_reason})")
    say("ALL OK")


if __name__ == "__main__":
    main()
