"""A process-wide thread pool for per-example work (record decoding, PIL resizing release the GIL)."""

from collections.abc import Callable, Sequence
import concurrent.futures
import functools
import os


@functools.cache
def _pool() -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1))


def parallel_map(fn: Callable, items: Sequence) -> list:
  """``[fn(x) for x in items]``, in order, computed on the shared pool."""
  if len(items) < 2:
    return [fn(x) for x in items]
  return list(_pool().map(fn, items))
