"""Timing helpers shared by the benchmarks: samplers, round-robin medians and a single-thread mode that holds.

Single-threaded means pinned: `pin_to_one_cpu` restricts every thread of the process to one CPU, so the process
cannot use more than one CPU-second per wall second, and XLA, which sizes its CPU thread pools from the affinity
mask when its backend starts, then runs each computation on one thread. XLA_FLAGS do not do this (jax 0.10.2,
measured on a 1500² matmul + elementwise jit): `intra_op_parallelism_threads=1` is not an XLA flag (ignored
without `--`, fatal with it) and `--xla_cpu_multi_thread_eigen=false` still left four threads doing the work.
`check_single_threaded` asserts the result in the run: every thread still on one CPU, and CPU/wall of every
timed row ≤ `MAX_CPU_PER_WALL`.
"""

import os
import statistics
import time

import jax

# One CPU gives CPU/wall ≤ 1 on every sample; the margin only absorbs the two clocks being read at different
# instants. Under load from other processes CPU/wall drops below 1, so there is no lower bound.
MAX_CPU_PER_WALL = 1.15


def sampler(step, carry, *args, steps=1, sync=jax.block_until_ready):
  """A callable running `carry = step(carry, *args)` `steps` times, then `sync`; returns (wall, CPU) s per call.

  CPU time is the process's (all threads). Single-threaded, it is the figure least disturbed by other
  processes on a shared machine; multi-threaded it also counts spin-waiting.
  """
  cell = [carry]

  def sample():
    wall, cpu = time.perf_counter(), time.process_time()
    value = cell[0]
    for _ in range(steps):
      value = step(value, *args)
    sync(value)
    cell[0] = value
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps

  return sample


def interleaved_medians(samplers, repeats, warmup):
  """(wall, CPU) median seconds of each sampler, sampled round-robin so other processes' load hits all alike."""
  for sample in samplers:
    for _ in range(warmup):
      sample()
  times = [[] for _ in samplers]
  for _ in range(repeats):
    for record, sample in zip(times, samplers):
      record.append(sample())
  return [tuple(statistics.median(column) for column in zip(*record)) for record in times]


def thread_ids():
  """Ids of this process's threads (Linux: /proc/self/task)."""
  return [int(tid) for tid in os.listdir("/proc/self/task")]


def thread_cpus():
  """The CPUs any thread of this process may run on."""
  cpus = set()
  for tid in thread_ids():
    try:
      cpus |= os.sched_getaffinity(tid)
    except ProcessLookupError:  # the thread ended since the listing
      pass
  return cpus


def pin_to_one_cpu(cpu=None):
  """Pins every thread of this process, and so every thread started later, to `cpu`; returns it.

  Call it before the first jax computation: a backend already started keeps the thread pools it sized then
  (still confined to one CPU, only time-sliced). `cpu` defaults to the lowest CPU this process may run on.
  """
  cpu = min(os.sched_getaffinity(0)) if cpu is None else cpu
  for tid in thread_ids():
    try:
      os.sched_setaffinity(tid, {cpu})
    except ProcessLookupError:
      pass
  return cpu


def check_single_threaded(rows, limit=MAX_CPU_PER_WALL):
  """Raises RuntimeError unless all threads are on one CPU and every row (dict: name, seconds, cpu_seconds) has
  CPU/wall ≤ `limit`.

  Both, because under load from other processes a multi-threaded run also shows CPU/wall ≤ 1 (it gets less than
  one CPU); the pin is what holds whatever the load, CPU/wall is what the tables show.
  """
  cpus = thread_cpus()
  over = [f"{r['name']}: {r['cpu_seconds'] / r['seconds']:.2f}" for r in rows
          if r["cpu_seconds"] > limit * r["seconds"]]
  if len(cpus) > 1 or over:
    raise RuntimeError(f"not single-threaded: threads on CPUs {sorted(cpus)}, CPU/wall > {limit} in "
                       f"{'; '.join(over) or 'no row'}. Tried: every thread pinned with sched_setaffinity before jax "
                       "started, torch.set_num_threads(1); a thread escaped the pin (e.g. a runtime re-binding its "
                       "workers)")
