"""Batch-1 latency of ``.tflite`` files: timed interleaved, with the CPU share the timing got.

Every model is run at batch 1 on one random image of raw pixels (:func:`batch1_interpreter`);
several models are timed round-robin in blocks (:func:`time_interleaved`), so a change of
machine load hits all alike; at one interpreter thread each invoke() is timed by the calling
thread's CPU time, which leaves out the time it waited for a core held by other work. The CPU share (:func:`with_cpu_share`) tells a quiet timing from
one that ran beside other work (below :data:`BUSY_CPU_SHARE`, :func:`busy_timing_warning`).
Needs only ``ai-edge-litert`` and numpy.
"""

from __future__ import annotations

import logging

import numpy as np

from pn_tf.tflite.runtime import load_interpreter, quantize

log = logging.getLogger(__name__)


def batch1_interpreter(path, num_threads=1, seed=0, image=None):
    """An interpreter at batch 1, its input filled with ``image`` (one input as the model takes
    it, e.g. the run's first held-out image, with or without its batch axis, or the first of a
    batch; 1-D signals too) or else, for any other shape, one random image of raw pixels.

    An int8 network's time depends on what it computes on: NASNetMobile's int8 baseline ran
    8.4 ms on N(0, 1) inputs and 7.7 ms on pixels, its pruned copy 6.3 and 6.6 ms (cuts 0.24
    and 0.15), so every timing that a cut is computed from should use the same input.
    """
    interpreter = load_interpreter(path, num_threads)
    detail = interpreter.get_input_details()[0]
    if detail["shape_signature"][0] == -1 and detail["shape"][0] != 1:
        interpreter.resize_tensor_input(detail["index"], [1] + list(detail["shape"][1:]))
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
    values, shape = None, tuple(int(d) for d in detail["shape"])
    if image is not None:  # one input with or without its batch axis, or a batch of them
        given = np.asarray(image, np.float32)
        if given.shape == shape[1:]:
            values = given[None]
        elif given.shape[1:] == shape[1:] and len(given):
            values = given[:1]
    if values is None:
        values = np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)
    interpreter.set_tensor(detail["index"], quantize(values, detail))
    return interpreter


def time_interleaved(interpreters, runs, warmup=20, block=10, num_threads=1):
    """``(times, cpu_share)``: per-model lists of ``runs`` invoke() times in seconds, measured
    round-robin, and the CPU share the timing got (:func:`with_cpu_share`; ``num_threads``:
    the interpreters' thread count). Logs a warning when the share is below
    :data:`BUSY_CPU_SHARE` (other work was running).

    Each round runs a block of invocations of every model, in a rotating order, so a change
    of machine load hits all models alike.
    """
    clock = _invoke_clock(num_threads)
    times, share = with_cpu_share(lambda: _time_rounds(interpreters, runs, warmup, block, clock), num_threads)
    warning = busy_timing_warning(share)
    if warning:
        log.warning(warning)
    return times, share


def _invoke_clock(num_threads):
    """What one invoke() is timed with: at one interpreter thread, the CPU time of the calling
    thread (TFLite runs the whole invoke on it), which leaves out the time the thread waited
    while other work had the core (on a quiet machine it equals the wall time; with other jobs
    on the 2 cores, wall-clock medians of tiny models moved by several percent); with more
    threads the wall time (the workers' time is not the caller's)."""
    import time

    return time.thread_time if num_threads == 1 else time.perf_counter


def _time_rounds(interpreters, runs, warmup, block, clock=None):
    import time

    clock = clock or time.perf_counter
    for interpreter in interpreters:
        for _ in range(warmup):
            interpreter.invoke()
    times = [[] for _ in interpreters]
    order = list(range(len(interpreters)))
    while len(times[0]) < runs:
        n = min(block, runs - len(times[0]))
        for i in order:
            invoke = interpreters[i].invoke
            for _ in range(n):
                start = clock()
                invoke()
                times[i].append(clock() - start)
        order = order[1:] + order[:1]
    return times


# Below this share of the CPU time it asked for, a timing ran beside other work (see cpu_share).
BUSY_CPU_SHARE = 0.85


def fastest_ms(times):
    """The fastest of one model's timed runs (seconds), in ms: what a latency *cut* is computed
    from (the report, the measured landing, the latency table and its check).

    Interference on a shared machine (other tenants' use of the caches and memory, which the
    CPU share does not see) only ever adds time, and adds more to a larger model, for stretches
    longer than an interleaved round. On the project's 2-core EPYC the same two NASNetMobile
    int8 files, timed interleaved in separate processes, gave median-based cuts from 0.15 to
    0.28 and fastest-run cuts from 0.187 to 0.205 (docs/latency_budgets.md). The median is
    still reported as what a busy machine gives.
    """
    return float(np.min(times) * 1e3)


def measure_latency(paths, num_threads=1, runs=100, warmup=20, block=10, seed=0, image=None):
    """``{path: {"min_ms", "median_ms", "p90_ms", "cpu_share"}}``: batch-1 latency of each file,
    timed interleaved (``min_ms`` the fastest run, :func:`fastest_ms`), each on ``image``
    (see :func:`batch1_interpreter`).

    ``cpu_share`` (the same for every file) is the process CPU time spent during the timing
    over ``num_threads`` x its wall time: about 1 on an idle machine, lower when other work
    took cores away from the interpreter (then the latencies are inflated and unreliable;
    below :data:`BUSY_CPU_SHARE` a warning is logged).
    """
    interpreters = [batch1_interpreter(p, num_threads, seed, image) for p in paths]
    times, share = time_interleaved(interpreters, runs, warmup, block, num_threads)
    return {p: {"min_ms": fastest_ms(t), "median_ms": float(np.median(t) * 1e3), "p90_ms": float(np.percentile(t, 90) * 1e3),
                "cpu_share": float(share)}
            for p, t in zip(paths, times)}


def with_cpu_share(fn, num_threads):
    """``(fn(), share)``: share = CPU time of the threads that ran ``fn``'s interpreters / (wall
    time x ``num_threads``).

    With one interpreter thread, TFLite runs ``invoke()`` on the calling thread, so its CPU
    time alone is counted (``time.thread_time``). The process's CPU time would also count
    threads that have nothing to do with the timing: numpy's OpenBLAS starts one worker per
    extra core at import and busy-waits in it for a while after every matrix product, which
    made a 1-thread timing read as using 2 cores (share 2.0) on a 2-core machine. With more
    interpreter threads the workers are other threads of the process, so the process's CPU
    time is used and any other busy thread of the process inflates the share.
    """
    import time

    clock = time.thread_time if num_threads == 1 else time.process_time
    cpu, wall = clock(), time.perf_counter()
    result = fn()
    share = (clock() - cpu) / (max(time.perf_counter() - wall, 1e-9) * num_threads)
    return result, float(share)


def busy_timing_warning(cpu_share):
    """A one-line warning when a latency timing did not get the CPU it asked for, else None."""
    if cpu_share >= BUSY_CPU_SHARE:
        return None
    return (f"the latency timing got only {cpu_share:.0%} of the CPU time it asked for: other work "
            "was running, so these latencies are inflated and not comparable; time again on a quiet "
            "machine (python tools/bench_tflite.py --models=A.tflite,B.tflite)")
