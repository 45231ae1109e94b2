"""Append-only JSONL result files that survive a kill and merge across machines: one record per finished run,
identified by its ``"key"``; the first record of a key wins."""

from collections.abc import Iterable
import json
import os
import pathlib


def read_records(path: pathlib.Path) -> list[dict]:
  """Records of a JSONL file, first one per key; a line cut short by a kill is ignored."""
  records, seen = [], set()
  if not path.exists():
    return records
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict) and "key" in record and record["key"] not in seen:
      seen.add(record["key"])
      records.append(record)
  return records


def append_record(path: pathlib.Path, record: dict):
  """Appends one record as one line, flushed to disk (a finished setting survives a kill right after)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  cut = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
  with open(path, "a") as f:
    f.write(("\n" if cut else "") + json.dumps(record, sort_keys=True) + "\n")  # a cut line stays apart
    f.flush()
    os.fsync(f.fileno())


def merge_records(path: pathlib.Path, others: Iterable[pathlib.Path]) -> int:
  """Appends the records of `others` whose keys `path` lacks; returns how many."""
  have = {r["key"] for r in read_records(path)}
  added = 0
  for other in others:
    for record in read_records(pathlib.Path(other)):
      if record["key"] not in have:
        append_record(path, record)
        have.add(record["key"])
        added += 1
  return added
