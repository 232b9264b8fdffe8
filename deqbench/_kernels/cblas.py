"""A CBLAS gemm called through an address given at run time.

The optional gemm backend (``deqbench[mkl]``: MKL's ``cblas_dgemm`` and
``cblas_sgemm`` from ``libmkl_rt``, loaded by :mod:`deqbench._blas`) reaches
the kernels as an integer in their settings vector, and :func:`cblas_gemm`
calls it by that address. Nothing about the library is compiled in: a kernel
in numba's on-disk cache carries no address and no external symbol, so it
loads in any process, with the library present or absent (a constant
function pointer would be stale in the next process, and an external symbol
would fail to link where the library is missing).
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.core.errors import TypingError
from numba.extending import intrinsic

CBLAS_ROW_MAJOR = 101
CBLAS_NO_TRANS = 111


@intrinsic
def cblas_gemm(typingctx, addr, m, n, k, a, lda, b, ldb, c, ldc):
    """``c <- a @ b`` by the CBLAS gemm at address ``addr`` (``cblas_dgemm`` for
    float64 arrays, ``cblas_sgemm`` for float32; row-major, no transposes,
    ``alpha = 1``, ``beta = 0``), with ``m x k`` times ``k x n`` and the leading
    dimensions ``lda``, ``ldb``, ``ldc`` (32-bit integers: the LP64 interface)."""
    arrays = (a, b, c)
    if not all(isinstance(x, types.Array) and x.ndim == 2 for x in arrays):
        raise TypingError("cblas_gemm: a, b, c must be 2-D arrays")
    if a.dtype not in (types.float64, types.float32) or b.dtype != a.dtype or c.dtype != a.dtype:
        raise TypingError(f"cblas_gemm: one dtype, float32 or float64, got {a.dtype}, "
                          f"{b.dtype}, {c.dtype}")
    sig = types.void(addr, m, n, k, a, lda, b, ldb, c, ldc)

    def codegen(context, builder, signature, args):
        addr_, m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_ = args
        i32 = ir.IntType(32)
        real = context.get_value_type(signature.args[4].dtype)
        ptr = real.as_pointer()

        def data(i, value):
            return context.make_array(signature.args[i])(context, builder, value).data

        def int32(value):
            return builder.trunc(value, i32)

        fnty = ir.FunctionType(ir.VoidType(), [i32] * 6 + [real, ptr, i32, ptr, i32, real, ptr,
                                                           i32])
        fn = builder.inttoptr(addr_, fnty.as_pointer())
        builder.call(fn, [ir.Constant(i32, CBLAS_ROW_MAJOR), ir.Constant(i32, CBLAS_NO_TRANS),
                          ir.Constant(i32, CBLAS_NO_TRANS), int32(m_), int32(n_), int32(k_),
                          ir.Constant(real, 1.0), data(4, a_), int32(lda_), data(6, b_),
                          int32(ldb_), ir.Constant(real, 0.0), data(8, c_), int32(ldc_)])
        return context.get_dummy_value()

    return sig, codegen
