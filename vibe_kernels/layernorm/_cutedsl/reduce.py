"""Row reductions for the CuTeDSL kernels: thread -> warp (butterfly shuffles) -> CTA (shared memory) -> cluster
(distributed shared memory, completion tracked by an mbarrier's transaction count).

A reduction buffer is an fp32 shared-memory tensor of shape (rows_per_cta, warps_per_row * cluster_n); slot
[r, rank * warps_per_row + w] holds warp w's partial for row r from the CTA of cluster rank ``rank``. The warps of
one row synchronize among themselves (a named barrier per row), never with the CTA's other rows. Several values
(the backward's two sums) share one pass: one barrier / one mbarrier wait for all of them.
"""

from __future__ import annotations

import operator

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, const_expr
from cutlass.cutlass_dsl import dsl_user_op


@dsl_user_op
def _store_remote_f32(value: Float32, smem_ptr: cute.Pointer, mbar_ptr: cute.Pointer, peer_rank: Int32, *, loc=None, ip=None) -> None:
    """st.async of one fp32 into CTA ``peer_rank``'s shared memory, crediting 4 bytes to its mbarrier."""
    remote_addr = cute.arch.map_dsmem_ptr(smem_ptr, peer_rank, loc=loc, ip=ip).toint(loc=loc, ip=ip)
    remote_mbar = cute.arch.map_dsmem_ptr(mbar_ptr, peer_rank, loc=loc, ip=ip).toint(loc=loc, ip=ip)
    cute.arch.inline_ptx(
        "st.async.shared::cluster.mbarrier::complete_tx::bytes.f32 [{$r0}], {$r1}, [{$r2}];",
        read_only_args=[Int32(remote_addr), Float32(value), Int32(remote_mbar)],
        loc=loc,
        ip=ip,
    )


@dsl_user_op
def _slot_pointer(buffer: cute.Tensor, coord, *, loc=None, ip=None) -> cute.Pointer:
    return buffer.iterator + cute.crd2idx(coord, buffer.layout, loc=loc, ip=ip)


@cute.jit
def _publish(partials: list, warps_per_row: cutlass.Constexpr[int], cluster_n: cutlass.Constexpr[int], buffers: tuple,
             mbar_ptr, phase) -> None:
    """Writes each warp's partials (lane 0's ``partials[i]``) to slot [row, rank * warps_per_row + warp] of
    ``buffers[i]`` in every CTA of the row's cluster, and waits until every slot of the row is written."""
    lane = cute.arch.lane_idx()
    warp = cute.arch.warp_idx()
    row_in_cta = warp // warps_per_row
    warp_in_row = warp % warps_per_row
    slots = const_expr(warps_per_row * cluster_n)
    if const_expr(cluster_n == 1):
        if lane == 0:
            for i in cutlass.range_constexpr(len(partials)):
                buffers[i][row_in_cta, warp_in_row] = partials[i]
        rows = const_expr(cute.size(buffers[0], mode=[0]))
        if const_expr(rows == 1):
            cute.arch.barrier()
        else:
            # One named barrier per row (ids 1..rows; 0 is the CTA-wide one): the rows of a CTA do not wait for each
            # other, so one row's loads overlap another's reduction as they would in separate CTAs.
            cute.arch.barrier(barrier_id=1 + row_in_cta, number_of_threads=warps_per_row * 32)
    else:
        rank = cute.arch.block_idx_in_cluster()
        if warp == 0:
            with cute.arch.elect_one():
                rows = cute.size(buffers[0], mode=[0])
                cute.arch.mbarrier_arrive_and_expect_tx(mbar_ptr, len(partials) * rows * slots * 4)
        if lane < cluster_n:
            # Lane p sends this warp's partials to cluster peer p (itself included).
            for i in cutlass.range_constexpr(len(partials)):
                dst = _slot_pointer(buffers[i], (row_in_cta, rank * warps_per_row + warp_in_row))
                _store_remote_f32(partials[i], dst, mbar_ptr, lane)
        cute.arch.mbarrier_wait(mbar_ptr, phase)


@cute.jit
def _slot_total(buffer: cute.Tensor, row_in_cta, slots: cutlass.Constexpr[int], center=None) -> Float32:
    """The sum of the ``slots`` values of row ``row_in_cta`` of ``buffer`` (of their squared distances to ``center``
    when given), the same in every lane of the warp."""
    lane = cute.arch.lane_idx()
    acc = Float32(0.0)
    for k in cutlass.range_constexpr(cute.ceil_div(slots, 32)):
        slot = lane + k * 32
        if slot < slots:
            value = buffer[row_in_cta, slot]
            if const_expr(center is not None):
                value = (value - center) * (value - center)
            acc = acc + value
    return cute.arch.warp_reduction(acc, operator.add, threads_in_group=32)


@cute.jit
def row_sum(
    values: tuple,
    threads_per_row: cutlass.Constexpr[int],
    warps_per_row: cutlass.Constexpr[int],
    cluster_n: cutlass.Constexpr[int],
    buffers: tuple,
    mbar_ptr,
    phase,
) -> tuple:
    """Sums each fp32 scalar in ``values`` over the threads of its row (and the row's cluster).

    ``buffers``: one reduction buffer per value (unused when a row fits in one warp). ``mbar_ptr``/``phase``: the
    mbarrier that this pass waits on, and its phase parity (clusters only). Every thread gets the row totals.
    """
    lanes = const_expr(min(threads_per_row, 32))
    partials = [cute.arch.warp_reduction(v, operator.add, threads_in_group=lanes) for v in values]
    if const_expr(warps_per_row * cluster_n == 1):
        return tuple(partials)
    _publish(partials, warps_per_row, cluster_n, buffers, mbar_ptr, phase)
    row_in_cta = cute.arch.warp_idx() // warps_per_row
    totals = []
    for i in cutlass.range_constexpr(len(values)):
        totals.append(_slot_total(buffers[i], row_in_cta, warps_per_row * cluster_n))
    return tuple(totals)


@cute.jit
def row_mean_m2(
    mean: Float32,
    m2: Float32,
    count: cutlass.Constexpr[int],
    threads_per_row: cutlass.Constexpr[int],
    warps_per_row: cutlass.Constexpr[int],
    cluster_n: cutlass.Constexpr[int],
    buffers: tuple,
    mbar_ptr,
    phase,
) -> tuple:
    """A row's mean and sum of squared deviations (M2) from each thread's own ``mean`` and ``m2`` over ``count``
    values (the same count in every thread), in one pass: pairs merge by Chan's formula, which for two equal
    counts c is mean = (mean_a + mean_b) / 2, M2 = M2_a + M2_b + (mean_b - mean_a)^2 * c / 2. Butterfly shuffles
    merge a warp's threads; the warps (and the cluster's CTAs) then exchange (mean, M2) once through ``buffers``
    (two reduction buffers), and every thread merges all of them: the row's mean is the mean of the warps' means,
    its M2 the sum of theirs plus each warp's count times the squared distance of its mean to the row's. A
    two-pass variance needs two exchanges (the sum, then the squares about the mean): for rows split over a cluster
    each is a round of distributed shared memory stores and an mbarrier wait."""
    lanes = const_expr(min(threads_per_row, 32))
    for k in cutlass.range_constexpr(lanes.bit_length() - 1):
        other_mean = cute.arch.shuffle_sync_bfly(mean, offset=lanes >> (k + 1), mask=-1, mask_and_clamp=31)
        other_m2 = cute.arch.shuffle_sync_bfly(m2, offset=lanes >> (k + 1), mask=-1, mask_and_clamp=31)
        delta = other_mean - mean
        # Symmetric in the pair (a + b == b + a, (b - a)^2 == (a - b)^2): both lanes hold the same result.
        m2 = m2 + other_m2 + delta * delta * Float32((count << k) * 0.5)
        mean = (mean + other_mean) * Float32(0.5)
    if const_expr(warps_per_row * cluster_n == 1):
        return mean, m2
    _publish([mean, m2], warps_per_row, cluster_n, buffers, mbar_ptr, phase)
    row_in_cta = cute.arch.warp_idx() // warps_per_row
    slots = const_expr(warps_per_row * cluster_n)
    row_mean = _slot_total(buffers[0], row_in_cta, slots) * Float32(1.0 / slots)
    spread = _slot_total(buffers[0], row_in_cta, slots, row_mean)
    return row_mean, _slot_total(buffers[1], row_in_cta, slots) + spread * Float32(count * lanes)
