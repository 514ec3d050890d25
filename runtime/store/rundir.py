"""The run directory: everything a run leaves behind, written so a crash never fakes completeness.

In: paths and data from the driver. Out: files under runs/<scenario>-<time>/ (or --run-dir):
plan.json, events.jsonl (append-only, one JSON object per line), personas.parquet,
asks/<step>/<iteration>.parquet, metrics.jsonl, summary.json, manifest.json (manifest.py). Whole files are written to a
temporary name and renamed, so a file that exists is complete. The directory's own formats
(events, checkpoints) carry RUN_FORMAT; one written by a newer Populace is refused, never read as damaged.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

# The format of what a run writes for itself: the `run_started` event, checkpoints' driver.json and
# shard Arrow files. Bump it when an older Populace would misread the new files. A file without a
# stamp was written before stamps existed: format 1.
RUN_FORMAT = 1
KEEP_CHECKPOINTS = 2  # a resume needs the newest; the one before it covers a checkpoint damaged mid-write


@functools.cache
def populace_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("populace")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class NewerFormatError(Exception):
    """A run directory file written by a newer Populace: refused with both versions named."""

    def __init__(self, path: str, found: int, written_by: str | None = None):
        by = f" (written by Populace {written_by})" if written_by else ""
        super().__init__(f"{path} has run format {found}{by}, newer than this Populace ({populace_version()}) "
                         f"reads (format {RUN_FORMAT}); upgrade Populace to read this run")
        self.path, self.found, self.written_by = path, found, written_by

    def __reduce__(self):
        return (NewerFormatError, (self.path, self.found, self.written_by))


def check_format(found, path: str, written_by=None) -> None:
    """Refuse a stamp newer than RUN_FORMAT; no stamp (None) is format 1."""
    if isinstance(found, int) and not isinstance(found, bool) and found > RUN_FORMAT:
        raise NewerFormatError(path, found, written_by if isinstance(written_by, str) else None)


def new_run_dir(scenario: str, base: str = "runs") -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(base, f"{scenario}-{stamp}")
    suffix = 1
    while os.path.exists(path):
        suffix += 1
        path = os.path.join(base, f"{scenario}-{stamp}-{suffix}")
    return path


def named_error(error: OSError, path: str) -> OSError:
    """`error` naming the file being written: a write on a full disk says why, not which file.
    (pyarrow's message wraps the reason in its own words; the errno's own text is plainer.)"""
    if error.filename:
        return error
    return OSError(error.errno, os.strerror(error.errno) if error.errno else (error.strerror or str(error)), path)


def _file_mode() -> int:
    """What open() would give a new file here (0o666 less the umask): mkstemp's 0600 would keep a
    run directory shared over NFS (or with colleagues) unreadable to the others."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _file_mode()


def temporary(directory: str, suffix: str = "") -> tuple[int, str]:
    """A new temporary file in `directory` (fd, path) with ordinary permissions."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.fchmod(fd, _MODE)
    return fd, tmp


@contextlib.contextmanager
def replacing(target: str, suffix: str = ""):
    """A temporary path beside `target` for the block to write; it becomes `target` when the block
    ends. On any error (a full disk) the temporary is removed, nothing half-written is left looking
    complete, and an OSError names `target`."""
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = temporary(directory, suffix)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise named_error(e, target) from None
        raise


def write_atomic(target: str, data: bytes) -> None:
    """Write to a temporary name, sync, rename: the file at `target` is whole or absent."""
    with replacing(target) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class _AppendOnly:
    """A JSON-lines file written with one unbuffered append per line: a failed write (a full disk)
    leaves nothing in a buffer to fail again at close, and names the file."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        size = os.fstat(self.fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                torn = f.read(1) != b"\n"
            if torn:  # a crash mid-line: end it, so the next line is not glued to it (readers skip it)
                self.write("\n")

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as e:
            raise named_error(e, self.path) from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def clean(value):
    """NaN is not JSON: missing numbers are written as null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not hasattr(value, "__len__"):
        return clean(value.item())
    return value


def dumps(value) -> str:
    return json.dumps(clean(value), sort_keys=True, default=_json_default, ensure_ascii=False)


class RunDirBusy(Exception):
    """Another Populace process is writing this run directory."""


def lock(path: str) -> int:
    """Hold the run directory for this process (an flock on `.lock`, released when it ends, also by
    kill -9): two drivers writing one directory would interleave their events and checkpoints."""
    import fcntl

    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT, _MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunDirBusy(f"{path} is in use by another Populace process (pid {holder}); wait for it to end "
                         "or stop it (the monitor's Stop, or Ctrl-C) first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


class RunDir:
    def __init__(self, path: str, lock_fd: int | None = None):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self._lock = lock_fd if lock_fd is not None else lock(path)
        self._events = _AppendOnly(os.path.join(path, "events.jsonl"))
        self._metrics = _AppendOnly(os.path.join(path, "metrics.jsonl"))
        self.metrics_written = 0
        # checkpoints kept (the newest); 0 keeps every one, which `populace branch` needs to start at any of them
        self.keep_checkpoints = KEEP_CHECKPOINTS

    def file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def write_bytes(self, name: str, data: bytes) -> None:
        write_atomic(self.file(name), data)

    def write_json(self, name: str, value) -> None:
        self.write_bytes(name, (json.dumps(clean(value), indent=2, sort_keys=True, default=_json_default) + "\n").encode())

    def write_tables(self, name: str, tables: list[pa.Table]) -> None:
        """Shard tables, in agent order, as one Parquet file (a row group per shard)."""
        schema = pa.unify_schemas([t.schema for t in tables])
        with replacing(self.file(name), ".parquet") as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for t in tables:
                if t.num_rows:
                    writer.write_table(t.cast(schema))

    def read_control(self) -> str:
        """The latest request in control.json: "run" (none), "pause", "resume" or "stop"."""
        try:
            with open(self.file("control.json"), encoding="utf-8") as f:
                action = json.load(f).get("action", "run")
        except (OSError, ValueError, AttributeError):
            return "run"
        return action if action in ("pause", "resume", "stop") else "run"

    def event(self, event: dict) -> None:
        # One write per line: a reader never sees half an event unless the process dies mid-write.
        self._events.write(dumps(event) + "\n")

    def metric(self, row: dict) -> None:
        self._metrics.write(dumps(row) + "\n")
        self.metrics_written += 1

    def truncate_metrics(self, lines: int) -> None:
        """On resume: keep the records made before the checkpoint; the rest are made again."""
        self._metrics.close()
        path = self.file("metrics.jsonl")
        with open(path, "rb") as f:  # bytes: a damaged line is kept or dropped, never decoded here
            kept = [line for line in f if line.endswith(b"\n")][:lines]
        write_atomic(path, b"".join(kept))
        self._metrics = _AppendOnly(path)
        self.metrics_written = len(kept)

    def prune_checkpoints(self, keep: int | None = None) -> None:
        """Delete all but the newest `keep` checkpoints (default: the run's `keep_checkpoints`; 0 keeps all)."""
        import shutil

        keep = self.keep_checkpoints if keep is None else keep
        if not keep:
            return
        root = self.file("checkpoints")
        done = sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "driver.json")))
        for old in done[:-keep]:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)

    def close(self) -> None:
        self._events.close()
        self._metrics.close()
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    def clear_control(self) -> None:
        """A resumed run starts without the pause or stop that ended (or held) the one before."""
        try:
            os.unlink(self.file("control.json"))
        except FileNotFoundError:
            pass


def request_control(run_dir: str, action: str) -> None:
    """Ask a running driver to pause, resume or stop (written atomically; read between steps)."""
    if action not in ("pause", "resume", "stop"):
        raise ValueError(f"unknown action {action!r}")
    fd, tmp = temporary(run_dir)
    with os.fdopen(fd, "w") as f:
        json.dump({"action": action, "at": time.time()}, f)
    os.replace(tmp, os.path.join(run_dir, "control.json"))


def iteration_file(label: str) -> str:
    """`[round=2]` -> `round=2`; the top level (no loop) -> `once` (the layout before hive folders)."""
    text = label.strip("[]").replace(",", "_").replace(" ", "")
    return re.sub(r"[^A-Za-z0-9_=.-]", "_", text) or "once"


def label_parts(label: str) -> list[tuple[str, str]]:
    """`[t=1, round=2]` -> [("t", "1"), ("round", "2")]: the loop variables of an iteration."""
    inner = label.strip()[1:-1] if label.startswith("[") else ""
    out = []
    for part in inner.split(", "):
        if "=" in part:
            name, _, value = part.partition("=")
            out.append((name.strip(), value))
    return out


def partition_dir(label: str) -> str:
    """Hive folders for an iteration: `[t=1, round=2]` -> `t=1/round=2`; the top level -> ``.

    pyarrow, pandas, polars and DuckDB read these folder names back as columns (values URI-encoded:
    a loop over texts may hold `/` or `=`)."""
    from urllib.parse import quote

    return "/".join(f"{name}={quote(str(value), safe='')}" for name, value in label_parts(label))


def ask_file(step_id: str, label: str, part: int = 0) -> str:
    """An ask's answers for one iteration: `asks/ask.guess/round=2/part-0.parquet` (relative)."""
    folder = partition_dir(label)
    return f"asks/{step_id[5:]}/" + (f"{folder}/" if folder else "") + f"part-{part}.parquet"
