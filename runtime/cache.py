"""The response cache: every model reply that arrived, keyed by what was asked.

In: a request key (provider, model, parameters, system prompt, messages, sample index) and the
reply with its usage. Out: the stored reply for a key, or None. SQLite in WAL mode, one file that
several shard processes share (in the run directory by default, or `--cache PATH`). A reply is
committed as soon as it arrives, so a crash loses nothing that was paid for.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time


def request_key(provider: str, model: str, params: dict, system, messages: list, sample: int) -> str:
    body = json.dumps({"provider": provider, "model": model, "params": params, "system": system,
                       "messages": messages, "sample": sample}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, path: str):
        self.path = path
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
                        "usage TEXT NOT NULL, model TEXT NOT NULL, created REAL NOT NULL)")

    def get(self, key: str):
        row = self.db.execute("SELECT text, usage FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def put(self, key: str, text: str, usage: dict, model: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?)",
                        (key, text, json.dumps(usage, sort_keys=True), model, time.time()))

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self.db.close()
