"""The separable footprint sums of one interior destination pixel, in explicit SIMD (the hot
loop of :mod:`coaddx.kernels.warp`).

For a footprint of ``n`` x ``n`` source pixels starting at flat index ``q`` of a C-contiguous
float32 (or float64) plane, :func:`footprint_sums` returns

* ``sum_k w_x(k) a(k)`` with ``a(k) = sum_t w_y(t) I(t, k)`` (each column summed over the
  rows first, then the columns weighted), and
* ``sum_k w_x(k)^2 b(k)`` with ``b(k) = sum_t w_y(t)^2 V(t, k)``,

the weights read from ``wxs[k, c]`` and ``wys[t, c]``. The column accumulators are LLVM vectors
(``n`` = 6: one of 4 lanes and one of 2; 8: two of 4; 2: one of 2): each tap row is one
vector load per plane, one conversion to float64 and one FMA. numba leaves LLVM's SLP
vectoriser off, so the same loop written with scalar accumulators stays scalar; this
intrinsic spells the vectors out instead (about 20 % off the whole Lanczos-3 warp kernel on
the project machine). Every sum is accumulated in float64 in a fixed order.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["footprint_sums"]


def _groups(ntap: int) -> list[tuple[int, int]]:
    """(first column, width) of each vector accumulator: widths 4, then a 2 for the rest."""
    out = [(s, 4) for s in range(0, ntap - ntap % 4, 4)]
    if ntap % 4:
        out.append((ntap - ntap % 4, ntap % 4))
    return out


def _splat(builder: ir.IRBuilder, value: ir.Value, width: int) -> ir.Value:
    vec = ir.VectorType(value.type, width)
    out = ir.Constant(vec, ir.Undefined)
    for lane in range(width):
        out = builder.insert_element(out, value, ir.Constant(ir.IntType(32), lane))
    return out


def _fma(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    """a * b + c rounded once (llvm.fma, on scalars or vectors)."""
    ty = a.type
    name = f"llvm.fma.v{ty.count}f64" if isinstance(ty, ir.VectorType) else "llvm.fma.f64"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty, ty]), name)
    return builder.call(fn, [a, b, c])


@intrinsic
def footprint_sums(typingctx, image, variance, q, stride, wxs, wys, c, taps):
    """(sum K I, sum K^2 V) over the len(taps) x len(taps) footprint at flat index ``q`` (rows
    ``stride`` apart) of the 1-d planes ``image`` and ``variance``, with the weights of
    destination column ``c``; ``taps`` (a tuple) gives the tap count at compile time. No
    bounds checks: the caller guarantees the footprint lies inside the planes."""
    if not isinstance(taps, types.UniTuple) or len(taps) not in (2, 4, 6, 8):
        return None
    if image.dtype != variance.dtype or image.dtype not in (types.float32, types.float64):
        return None
    ntap = len(taps)
    sig = types.UniTuple(types.float64, 2)(image, variance, q, stride, wxs, wys, c, taps)

    def codegen(context, builder, signature, args):  # pragma: no cover - numba
        img_t, var_t, q_t, stride_t, wx_t, wy_t, c_t, _ = signature.args
        a_img, a_var, v_q, v_stride, a_wx, a_wy, v_c, _ = args
        intp = types.intp
        v_q = context.cast(builder, v_q, q_t, intp)
        v_stride = context.cast(builder, v_stride, stride_t, intp)
        v_c = context.cast(builder, v_c, c_t, intp)
        planes = [
            (context.make_array(img_t)(context, builder, a_img), img_t),
            (context.make_array(var_t)(context, builder, a_var), var_t),
        ]
        wx = context.make_array(wx_t)(context, builder, a_wx)
        wy = context.make_array(wy_t)(context, builder, a_wy)
        f64 = ir.DoubleType()
        lltype = context.get_value_type(img_t.dtype)
        groups = _groups(ntap)

        def weight(ary, aryty, k):
            ptr = cgutils.get_item_pointer(
                context, builder, aryty, ary, [context.get_constant(intp, k), v_c]
            )
            return builder.load(ptr)

        accs = [[ir.Constant(ir.VectorType(f64, w), 0.0) for _, w in groups] for _ in planes]
        row = v_q
        for t in range(ntap):
            w = weight(wy, wy_t, t)
            for p, ((ary, aryty), w_p) in enumerate(
                zip(planes, (w, builder.fmul(w, w)), strict=True)
            ):
                for g, (start, width) in enumerate(groups):
                    idx = builder.add(row, context.get_constant(intp, start))
                    ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx])
                    vptr = builder.bitcast(ptr, ir.VectorType(lltype, width).as_pointer())
                    vals = builder.load(vptr, align=aryty.dtype.bitwidth // 8)
                    if lltype != f64:
                        vals = builder.fpext(vals, ir.VectorType(f64, width))
                    accs[p][g] = _fma(builder, _splat(builder, w_p, width), vals, accs[p][g])
            row = builder.add(row, v_stride)
        out = []
        for p in range(len(planes)):
            total = None
            for g, (start, width) in enumerate(groups):
                for lane in range(width):
                    x = weight(wx, wx_t, start + lane)
                    if p == 1:
                        x = builder.fmul(x, x)
                    a = builder.extract_element(accs[p][g], ir.Constant(ir.IntType(32), lane))
                    total = builder.fmul(x, a) if total is None else _fma(builder, x, a, total)
            out.append(total)
        return context.make_tuple(builder, signature.return_type, out)

    return sig, codegen
