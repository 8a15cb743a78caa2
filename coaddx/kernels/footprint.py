"""The separable footprint sums of one interior destination pixel, in explicit SIMD (the hot
loop of :mod:`coaddx.kernels.warp`).

For a footprint of ``n`` x ``n`` source pixels starting at flat index ``q`` of a C-contiguous
float32 (or float64) plane, :func:`footprint_sums` returns

* ``sum_k w_x(k) a(k)`` with ``a(k) = sum_t w_y(t) I(t, k)`` (each column summed over the
  rows first, then the columns weighted), and
* ``sum_k w_x(k)^2 b(k)`` with ``b(k) = sum_t w_y(t)^2 V(t, k)``,

the weights read from ``wxs[k, c]`` and ``wys[t, c]``, their squares from ``wx2s`` and
``wy2s``. The column accumulators are one LLVM vector per plane (``n`` = 6 and 8: 8 lanes,
the 6-tap rows read with a masked load that leaves the two spare lanes zero; 4: 4 lanes; 2: 2):
each tap row is one vector load per plane, one conversion to float64 and one FMA with the
broadcast weight. numba leaves LLVM's SLP vectoriser off, so the same loop written with scalar
accumulators stays scalar; this intrinsic spells the vectors out instead. Every sum is
accumulated in float64 in a fixed order (each column over the rows t = 0..n-1, then
``w_x(0) a(0)``, plus ``w_x(k) a(k)`` for k = 1..n-1, each step one fused multiply-add); the
lane width does not change any sum.
"""

from __future__ import annotations

import llvmlite
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["corner_or", "footprint_sums"]


def _width(ntap: int) -> int:
    """Lanes of the column accumulator: the power of two >= ntap."""
    return 1 << (ntap - 1).bit_length()


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


def _load_row(builder: ir.IRBuilder, ptr: ir.Value, lltype: ir.Type, ntap: int, align: int):
    """The ``ntap`` values at ptr as a vector of ``_width(ntap)`` lanes (spare lanes zero, not
    read: a masked load, so that the footprint's last pixel may end the plane)."""
    width = _width(ntap)
    vec = ir.VectorType(lltype, width)
    vptr = builder.bitcast(ptr, vec.as_pointer())
    if width == ntap:
        return builder.load(vptr, align=align)
    i1 = ir.IntType(1)
    mask = ir.Constant(ir.VectorType(i1, width), [i1(int(lane < ntap)) for lane in range(width)])
    elem = "f32" if lltype == ir.FloatType() else "f64"
    suffix = f"p0v{width}{elem}" if llvmlite.ir_layer_typed_pointers_enabled else "p0"
    name = f"llvm.masked.load.v{width}{elem}.{suffix}"
    fnty = ir.FunctionType(vec, [vptr.type, ir.IntType(32), mask.type, vec])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    zero = ir.Constant(vec, [0.0] * width)
    return builder.call(fn, [vptr, ir.Constant(ir.IntType(32), align), mask, zero])


@intrinsic
def footprint_sums(typingctx, image, variance, q, stride, wxs, wx2s, wys, wy2s, c, taps):
    """(sum K I, sum K^2 V) over the len(taps) x len(taps) footprint at flat index ``q`` (rows
    ``stride`` apart) of the 1-d planes ``image`` and ``variance``, with the weights of
    destination column ``c`` (``wx2s``, ``wy2s``: the squares of ``wxs``, ``wys``); ``taps``
    (a tuple) gives the tap count at compile time. No bounds checks: the caller guarantees the
    footprint lies inside the planes."""
    if not isinstance(taps, types.UniTuple) or len(taps) not in (2, 4, 6, 8):
        return None
    if any(p.dtype not in (types.float32, types.float64) for p in (image, variance)):
        return None
    ntap = len(taps)
    width = _width(ntap)
    sig = types.UniTuple(types.float64, 2)(
        image, variance, q, stride, wxs, wx2s, wys, wy2s, c, taps
    )

    def codegen(context, builder, signature, args):  # pragma: no cover - numba
        img_t, var_t, q_t, stride_t, wx_t, wx2_t, wy_t, wy2_t, c_t, _ = signature.args
        a_img, a_var, v_q, v_stride, a_wx, a_wx2, a_wy, a_wy2, v_c, _ = args
        intp = types.intp
        v_q = context.cast(builder, v_q, q_t, intp)
        v_stride = context.cast(builder, v_stride, stride_t, intp)
        v_c = context.cast(builder, v_c, c_t, intp)
        f64 = ir.DoubleType()

        def array(value, aryty):
            return context.make_array(aryty)(context, builder, value), aryty

        planes = [array(a_img, img_t), array(a_var, var_t)]
        wx = [array(a_wx, wx_t), array(a_wx2, wx2_t)]
        wy = [array(a_wy, wy_t), array(a_wy2, wy2_t)]

        def weight(ary, k):
            ptr = cgutils.get_item_pointer(
                context, builder, ary[1], ary[0], [context.get_constant(intp, k), v_c]
            )
            return builder.load(ptr)

        accs = [ir.Constant(ir.VectorType(f64, width), 0.0) for _ in planes]
        row = v_q
        for t in range(ntap):
            for p, (ary, aryty) in enumerate(planes):
                ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [row])
                lltype = context.get_value_type(aryty.dtype)
                vals = _load_row(builder, ptr, lltype, ntap, aryty.dtype.bitwidth // 8)
                if lltype != f64:
                    vals = builder.fpext(vals, ir.VectorType(f64, width))
                w = _splat(builder, weight(wy[p], t), width)
                accs[p] = _fma(builder, w, vals, accs[p])
            row = builder.add(row, v_stride)
        out = []
        for p in range(len(planes)):
            total = None
            for k in range(ntap):
                x = weight(wx[p], k)
                a = builder.extract_element(accs[p], ir.Constant(ir.IntType(32), k))
                total = builder.fmul(x, a) if total is None else _fma(builder, x, a, total)
            out.append(total)
        return context.make_tuple(builder, signature.return_type, out)

    return sig, codegen


@intrinsic
def corner_or(typingctx, flat, q, dx, dy):
    """flat[q] | flat[q + dx] | flat[q + dy] | flat[q + dx + dy] of a 1-d integer array, without
    bounds checks or negative-index wraparound (the caller guarantees the four indices lie in
    the array): the bilinear mask footprint (dx = 0 or 1, dy = 0 or the row stride) and the
    corners of the mask tile summaries."""
    if not isinstance(flat, types.Array) or not isinstance(flat.dtype, types.Integer):
        return None
    sig = flat.dtype(flat, q, dx, dy)

    def codegen(context, builder, signature, args):  # pragma: no cover - numba
        ary_t, q_t, dx_t, dy_t = signature.args
        ary = context.make_array(ary_t)(context, builder, args[0])
        intp = types.intp
        v_q, v_dx, v_dy = (
            context.cast(builder, v, t, intp)
            for v, t in zip(args[1:], (q_t, dx_t, dy_t), strict=True)
        )
        out = None
        idxs = [v_q, builder.add(v_q, v_dx), builder.add(v_q, v_dy)]
        idxs.append(builder.add(idxs[1], v_dy))
        for idx in idxs:
            ptr = cgutils.get_item_pointer(context, builder, ary_t, ary, [idx])
            val = builder.load(ptr)
            out = val if out is None else builder.or_(out, val)
        return out

    return sig, codegen
