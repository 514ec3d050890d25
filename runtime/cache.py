"""The response cache: every model reply that arrived, keyed by what was asked.

In: a request key (provider, model, parameters, system prompt, messages, sample index) and the
reply with its usage. Out: the stored reply for a key, or None. SQLite in WAL mode, one file that
several shard processes share (in the run directory by default, or `--cache PATH`). A reply is
committed by a writer thread within milliseconds of arriving, and every reply of a step is
committed before the step ends, so a crash loses at most the replies of its last few milliseconds.
"""
from __future__ import annotations

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
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
                        "usage TEXT NOT NULL, model TEXT NOT NULL, created REAL NOT NULL)")
        self.queue: queue.Queue = queue.Queue()
        self.writer = threading.Thread(target=self._write_loop, name="response-cache", daemon=True)
        self.writer.start()

    def get(self, key: str):
        row = self.db.execute("SELECT text, usage FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

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
            if batch:
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?)", batch)
                db.execute("COMMIT")
            for event in done:
                event.set()

    def flush(self) -> None:
        event = threading.Event()
        self.queue.put(event)
        event.wait()

    def __len__(self) -> int:
        self.flush()
        return self.db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self.flush()
        self.db.close()
