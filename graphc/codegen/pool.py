"""LLVM IR of the native worker pool: threads parked in generated code, and the call that uses them.

Every function takes the pool's state, `state_bytes(target)` zeroed bytes the host owns (8-byte
aligned), so each pool is independent and the code has no globals. `graphc_pool_init(pool, n)`
says n workers will serve it; `graphc_pool_worker(pool, tid)` is entered once by each worker
thread (a Python thread through ctypes, which releases the GIL, or a pthread) and never returns
until `graphc_pool_stop(pool)`. `graphc_pool_run(pool, task, arg, n)` posts `task(arg, t, n)` for
t = 1..n-1 to the workers, runs t = 0 itself and waits: posting a job is a few atomic
instructions, so splitting a GEMM costs microseconds, not a Python thread hand-off (~65 us).
An idle worker spins briefly, then sleeps on a futex, so it never burns a core between steps; every
waiter yields its core between polls once it has waited a while, which matters when the machine
has more runnable threads than cores.
"""

from __future__ import annotations

from llvmlite import ir

from graphc.codegen.target import Target

I8P = ir.IntType(8).as_pointer()
I32, I64 = ir.IntType(32), ir.IntType(64)
TASK = ir.FunctionType(ir.VoidType(), [I8P, I64, I64]).as_pointer()
RUN = ir.FunctionType(ir.VoidType(), [I8P, TASK, I8P, I64])
# the state: job number (the futex word), quit flag, sleeping workers, jobs counted done,
# workers started, and the posted job (task, arg, threads)
STATE = ir.LiteralStructType([I32, I32, I32, I64, I64, TASK, I8P, I64])
_FIELDS = ("seq", "quit", "sleepers", "done", "workers", "task", "arg", "nthreads")
FUTEX_WAIT, FUTEX_WAKE = 128, 129  # private futexes (the system call's number is the Target's)


def flush_denormals(b: ir.IRBuilder, target: Target) -> ir.Value | None:
    """Set flush-to-zero on this thread; returns the old control register to restore, or None on a
    target without one: denormal gradients late in training otherwise slow every float op
    (docs/perf.md)."""
    c = target.platform.fp_control
    if c is None:
        return None
    t = ir.IntType(c.width)
    if c.via_memory:
        slot = b.alloca(t)
        b.call(_intrinsic(b.module, c.get, ir.VoidType(), [I8P]), [b.bitcast(slot, I8P)])
        old = b.load(slot)
    else:
        old = b.call(_intrinsic(b.module, c.get, t, []), [])
    restore_fp_control(b, target, b.or_(old, ir.Constant(t, c.bits)))
    return old


def restore_fp_control(b: ir.IRBuilder, target: Target, value: ir.Value | None) -> None:
    """Write `value` (from flush_denormals) back to the control register."""
    c = target.platform.fp_control
    if c is None or value is None:
        return
    if c.via_memory:
        slot = b.alloca(value.type)
        b.store(value, slot)
        b.call(_intrinsic(b.module, c.set, ir.VoidType(), [I8P]), [b.bitcast(slot, I8P)])
    else:
        b.call(_intrinsic(b.module, c.set, ir.VoidType(), [value.type]), [value])


def _intrinsic(m: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    return m.globals.get(name) or ir.Function(m, ir.FunctionType(ret, args), name)


def share(b: ir.IRBuilder, size: ir.Value, tid: ir.Value, nt: ir.Value, align: int = 1
          ) -> tuple[ir.Value, ir.Value]:
    """Thread tid's range [lo, hi) of [0, size): equal shares rounded up to multiples of `align`."""
    one, al = ir.Constant(I64, 1), ir.Constant(I64, align)
    ceil_div = lambda x, y: b.sdiv(b.add(x, b.sub(y, one)), y)
    clamp = lambda x: b.select(b.icmp_signed("<", x, size), x, size)
    chunk = b.mul(ceil_div(ceil_div(size, nt), al), al)
    lo = clamp(b.mul(tid, chunk))
    return lo, clamp(b.add(lo, chunk))


def state_bytes(target: Target) -> int:
    """Bytes of a pool's state."""
    return STATE.get_abi_size(target.target_machine().target_data)


def _fields(b: ir.IRBuilder, pool: ir.Value) -> list[ir.Value]:
    """Pointers to the fields of the state `pool` points to, in _FIELDS order."""
    p = b.bitcast(pool, STATE.as_pointer())
    return [b.gep(p, [ir.Constant(I32, 0), ir.Constant(I32, i)]) for i in range(len(_FIELDS))]


def build_pool(target: Target) -> ir.Module:
    m = ir.Module("graphc_pool")
    m.triple = target.triple
    syscall = ir.Function(m, ir.FunctionType(I64, [I64], var_arg=True), "syscall")
    facts = target.platform
    pause = _intrinsic(m, facts.pause, ir.VoidType(), []) if facts.pause else None

    def relax(b, polls):
        """Between two polls: a pause, and once `polls` is past the tuning's `yield_after`, sched_yield too, so a
        waiting thread hands its core to the one it waits for when the machine is oversubscribed."""
        if pause:
            b.call(pause, [])
        with b.if_then(b.icmp_unsigned(">", polls, ir.Constant(I32, target.tuning.yield_after))):
            b.call(syscall, [ir.Constant(I64, facts.sched_yield)])

    # worker(pool, tid): wait for a new job number, run the task if it has a part for us, count done
    w = ir.Function(m, ir.FunctionType(ir.VoidType(), [I8P, I64]), "graphc_pool_worker")
    tid = w.args[1]
    entry, wait, sleep, run, leave = (w.append_basic_block(n) for n in ("entry", "wait", "sleep", "run", "leave"))
    b = ir.IRBuilder(entry)
    seq, quit_, sleepers, done, _, task, arg, nthreads = _fields(b, w.args[0])
    seen = b.alloca(I32)
    spins = b.alloca(I32)
    # start from job 0, not from the current job number: a job posted before this thread got
    # here must still be run (the pool is fresh, and every worker starts with it)
    b.store(ir.Constant(I32, 0), seen)
    flush_denormals(b, target)
    b.store(ir.Constant(I32, 0), spins)
    b.branch(wait)
    b.position_at_end(wait)
    b.cbranch(b.icmp_unsigned("!=", b.load_atomic(quit_, "acquire", 4), ir.Constant(I32, 0)), leave,
              w.append_basic_block("poll"))
    b.position_at_end(w.blocks[-1])
    now = b.load_atomic(seq, "acquire", 4)
    fresh = w.append_basic_block("spin")
    b.cbranch(b.icmp_unsigned("!=", now, b.load(seen)), run, fresh)
    b.position_at_end(fresh)
    n = b.add(b.load(spins), ir.Constant(I32, 1))
    relax(b, n)
    b.store(n, spins)
    b.cbranch(b.icmp_unsigned("<", n, ir.Constant(I32, target.tuning.spins)), wait, sleep)
    b.position_at_end(sleep)
    b.store(ir.Constant(I32, 0), spins)
    # sleeps only while seq still equals what we saw: a job posted meanwhile is never missed
    b.atomic_rmw("add", sleepers, ir.Constant(I32, 1), "seq_cst")
    b.call(syscall, [ir.Constant(I64, facts.futex), seq, ir.Constant(I32, FUTEX_WAIT), b.load(seen),
                     ir.Constant(I8P, None)])
    b.atomic_rmw("sub", sleepers, ir.Constant(I32, 1), "seq_cst")
    b.branch(wait)
    b.position_at_end(run)
    b.store(now, seen)
    b.store(ir.Constant(I32, 0), spins)
    n_t = b.load_atomic(nthreads, "acquire", 8)
    has_part = w.append_basic_block("part")
    counted = w.append_basic_block("counted")
    b.cbranch(b.icmp_signed("<", tid, n_t), has_part, counted)
    b.position_at_end(has_part)
    b.call(b.load_atomic(task, "acquire", 8), [b.load_atomic(arg, "acquire", 8), tid, n_t])
    b.branch(counted)
    b.position_at_end(counted)
    b.atomic_rmw("add", done, ir.Constant(I64, 1), "release")
    b.branch(wait)
    b.position_at_end(leave)
    b.ret_void()

    def post(b, seq, sleepers):
        """Bump the job number; wake sleepers (a sleeper that counted itself after this bump sees
        the new number in FUTEX_WAIT and returns at once)."""
        b.atomic_rmw("add", seq, ir.Constant(I32, 1), "seq_cst")
        with b.if_then(b.icmp_unsigned("!=", b.load_atomic(sleepers, "seq_cst", 4), ir.Constant(I32, 0))):
            b.call(syscall, [ir.Constant(I64, facts.futex), seq, ir.Constant(I32, FUTEX_WAKE),
                             ir.Constant(I32, 2 ** 31 - 1)])

    # init(pool, n): the number of workers started (each counts every job it sees)
    f = ir.Function(m, ir.FunctionType(ir.VoidType(), [I8P, I64]), "graphc_pool_init")
    b = ir.IRBuilder(f.append_basic_block("entry"))
    b.store_atomic(f.args[1], _fields(b, f.args[0])[_FIELDS.index("workers")], "release", 8)
    b.ret_void()

    # run(pool, task, arg, n): post to all workers, do part 0, wait until every worker counted the job
    r = ir.Function(m, RUN, "graphc_pool_run")
    pool, t_fn, t_arg, t_n = r.args
    b = ir.IRBuilder(r.append_basic_block("entry"))
    seq, _, sleepers, done, workers, task, arg, nthreads = _fields(b, pool)
    target_done = b.add(b.load_atomic(done, "acquire", 8), b.load_atomic(workers, "acquire", 8))
    b.store_atomic(t_fn, task, "release", 8)
    b.store_atomic(t_arg, arg, "release", 8)
    b.store_atomic(t_n, nthreads, "release", 8)
    post(b, seq, sleepers)
    b.call(t_fn, [t_arg, ir.Constant(I64, 0), t_n])
    polls = b.alloca(I32)
    b.store(ir.Constant(I32, 0), polls)
    spin, out = r.append_basic_block("spin"), r.append_basic_block("out")
    b.branch(spin)
    b.position_at_end(spin)
    n = b.add(b.load(polls), ir.Constant(I32, 1))
    b.store(n, polls)
    relax(b, n)
    b.cbranch(b.icmp_signed("<", b.load_atomic(done, "acquire", 8), target_done), spin, out)
    b.position_at_end(out)
    b.ret_void()

    s = ir.Function(m, ir.FunctionType(ir.VoidType(), [I8P]), "graphc_pool_stop")
    b = ir.IRBuilder(s.append_basic_block("entry"))
    seq, quit_, sleepers = _fields(b, s.args[0])[:3]
    b.store_atomic(ir.Constant(I32, 1), quit_, "release", 4)
    post(b, seq, sleepers)
    b.ret_void()
    return m
