"""The response cache: every model reply that arrived, keyed by what was asked.

In: a request key (provider, model, parameters, system prompt, messages, sample index) and the
reply with its usage. Out: the stored reply for a key, or None; and the ids of batches submitted to
a provider's batch API, by the batch's key. SQLite in WAL mode, one file that
several shard processes share (in the run directory by default, or `--cache PATH`). A reply is
committed by a writer thread within milliseconds of arriving, and every reply of a step is
committed before the step ends, so a crash loses at most the replies of its last few milliseconds.
"""
from __future__ import annotations

import errno
import hashlib
import json
import queue
import sqlite3
import threading
import time


def request_key(provider: str, model: str, params: dict, system, messages: list, sample: int) -> str:
    body = json.dumps({"provider": provider, "model": model, "params": params, "system": system,
                       "messages": messages, "sample": sample}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class ResponseCache:
    """Reads on the caller's thread; writes on a writer thread in group commits, so a shard's event
    loop never waits on SQLite's lock (several shard processes share the file). `flush()` returns
    once every reply handed to `put` is committed; the LLM layer calls it at the end of each step."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
            _set_up(self.db)
        except sqlite3.Error as e:  # a full disk or a directory that cannot be written
            raise _os_error(e, path) from None
        self.queue: queue.Queue = queue.Queue()
        self.error: OSError | None = None  # why replies could not be written (then no more are tried)
        self.writer = threading.Thread(target=self._write_loop, name="response-cache", daemon=True)
        self.writer.start()

    def get(self, key: str):
        row = self.db.execute("SELECT text, usage FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def batch_id(self, key: str) -> str | None:
        """The provider's id of the batch submitted for `key` (batches.py), or None."""
        row = self.db.execute("SELECT batch_id FROM batches WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put_batch(self, key: str, provider: str, batch_id: str) -> None:
        """Record a submitted batch now, not by the writer thread: a crash a moment later must find it."""
        try:
            self.db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?)", (key, provider, batch_id, time.time()))
        except sqlite3.Error as e:
            raise _os_error(e, self.path) from None

    def put(self, key: str, text: str, usage: dict, model: str) -> None:
        self.queue.put((key, text, json.dumps(usage, sort_keys=True), model, time.time()))

    def _write_loop(self) -> None:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")
        while True:
            item = self.queue.get()
            batch, done = [], []
            while item is not None:
                if isinstance(item, threading.Event):
                    done.append(item)
                else:
                    batch.append(item)
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    item = None
            if batch and self.error is None:
                try:
                    db.execute("BEGIN")
                    db.executemany("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?)", batch)
                    db.execute("COMMIT")
                except sqlite3.Error as e:  # a full disk: the next flush() raises it, naming the file
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    self.error = _os_error(e, self.path)
            for event in done:
                event.set()

    def flush(self) -> None:
        """Wait until every reply handed to `put` is committed; raise OSError if they could not be."""
        event = threading.Event()
        self.queue.put(event)
        event.wait()
        if self.error is not None:
            raise self.error

    def __len__(self) -> int:
        self.flush()
        return self.db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self.flush()
        self.db.close()


SETUP_WAIT = 60.0  # seconds a new connection retries a file another process is setting up


def _set_up(db: sqlite3.Connection) -> None:
    """WAL mode and the tables. Shards in several processes open a new file at the same moment, and
    SQLite answers a second `journal_mode=WAL` or schema change "database is locked" at once,
    without its busy timeout (seen: 36 of 150 pairs of processes): so retry until it settles."""
    deadline = time.monotonic() + SETUP_WAIT
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
                       "usage TEXT NOT NULL, model TEXT NOT NULL, created REAL NOT NULL)")
            # batches submitted to a provider's batch API (batches.py): found again after a crash
            db.execute("CREATE TABLE IF NOT EXISTS batches (key TEXT PRIMARY KEY, provider TEXT NOT NULL, "
                       "batch_id TEXT NOT NULL, created REAL NOT NULL)")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _os_error(error: sqlite3.Error, path: str) -> OSError:
    """SQLite's error as the OSError a full disk gives elsewhere, naming the cache file."""
    full = getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return OSError(errno.ENOSPC if full else errno.EIO, str(error), path)
