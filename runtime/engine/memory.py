"""Agents' memory: the last k messages and answers of every agent of a shard, as columns.

In: the size k (the longest `memory = last k` of the shard's agent kinds) and the shard's agent
count; then (prompt, reply) pairs or messages for selected agents. Out: an agent's memory, oldest
first, as ("user", text) and ("assistant", reply) entries; the characters each agent holds (for
token estimates); and the arrays a checkpoint saves. A ring of 2k object columns: no list per agent.
"""
from __future__ import annotations

import numpy as np


class Memory:
    def __init__(self, k: int, n: int):
        self.k = k
        self.text = [np.full(n, None, dtype=object) for _ in range(2 * k)]  # prompt, reply per slot
        self.chars = np.zeros((2 * k, n), dtype=np.int32)
        self.count = np.zeros(n, dtype=np.int64)
        self._interned: dict = {}

    def intern(self, text):
        """Short replies ("yes", "42") are shared, not stored once per agent."""
        if text is None or len(text) > 64:
            return text
        return self._interned.setdefault(text, text)

    def chars_of(self, sel: np.ndarray) -> np.ndarray:
        if not self.k:
            return np.zeros(len(sel), dtype=np.int64)
        return self.chars[:, sel].sum(axis=0).astype(np.int64)

    def remember(self, sel: np.ndarray, prompts, replies) -> None:
        """Push (prompt, reply) into the ring of each selected agent; `prompts` one text or one per agent."""
        k = self.k
        if not k or not len(sel):
            return
        slots = (self.count[sel] % k) * 2
        prompt_list = prompts if isinstance(prompts, list) else None
        for slot in np.unique(slots).tolist():
            which = slots == slot
            agents = sel[which]
            idx = np.flatnonzero(which)
            if prompt_list is None:
                self.text[slot][agents] = prompts
                self.chars[slot, agents] = len(prompts)
            else:
                texts = [prompt_list[i] for i in idx.tolist()]
                self.text[slot][agents] = texts
                self.chars[slot, agents] = [len(t) for t in texts]
            if replies is None:
                self.text[slot + 1][agents] = None
                self.chars[slot + 1, agents] = 0
            else:
                texts = [self.intern(replies[i]) for i in idx.tolist()]
                self.text[slot + 1][agents] = texts
                self.chars[slot + 1, agents] = [len(t) if t else 0 for t in texts]
        self.count[sel] += 1

    def of(self, local: int) -> list:
        """One agent's memory, oldest first: ("user", text) and ("assistant", reply) entries."""
        k = self.k
        count = int(self.count[local])
        out = []
        for j in range(max(0, count - k), count):
            slot = (j % k) * 2
            out.append(("user", self.text[slot][local]))
            reply = self.text[slot + 1][local]
            if reply is not None:
                out.append(("assistant", reply))
        return out

    def arrays(self) -> list:
        return [*self.text, self.chars, self.count]
