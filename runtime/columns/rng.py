"""Counter-based randomness: agent i's draws depend only on (seed, purpose, i), never on shards.

In: the scenario seed, a purpose string (a persona field, a step id and iteration) and agent ids.
Out: uint64 hashes, uniforms in [0, 1), and numpy Generators for fixed-size blocks of agents.
Blocks of BLOCK agents get their own Philox stream, so a shard holding agents [a, b) draws
exactly the numbers an unsharded run draws for them.
"""
from __future__ import annotations

import hashlib

import numpy as np

BLOCK = 4096
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def key(seed: int, *parts) -> int:
    """A 64-bit key for a purpose: the seed and any strings or numbers that name it."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(int(seed)).encode())
    for p in parts:
        h.update(b"\x1f")
        h.update(str(p).encode())
    return int.from_bytes(h.digest(), "little")


def text_hash(text: str) -> int:
    """A stable 63-bit hash of a text (prompts are identified by it in results)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def mix(ids: np.ndarray, k: int) -> np.ndarray:
    """splitmix64 of (k + id * golden): a well-spread uint64 per id."""
    with np.errstate(over="ignore"):
        x = np.asarray(ids, dtype=np.uint64) * _GOLDEN + np.uint64(k)
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def uniforms(ids: np.ndarray, k: int) -> np.ndarray:
    """One uniform float in [0, 1) per id, from 53 bits of its hash."""
    return (mix(ids, k) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def block_draws(seed: int, purpose: str, start: int, stop: int, draw) -> np.ndarray:
    """Values for agents [start, stop): `draw(generator, n)` is called once per BLOCK of agents."""
    base = key(seed, purpose)
    first, last = start // BLOCK, (stop - 1) // BLOCK
    parts = []
    for block in range(first, last + 1):
        gen = np.random.Generator(np.random.Philox(key=[base, block]))
        parts.append(np.asarray(draw(gen, BLOCK)))
    values = np.concatenate(parts) if len(parts) > 1 else parts[0]
    offset = first * BLOCK
    return values[start - offset: stop - offset]
