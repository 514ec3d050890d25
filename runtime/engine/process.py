"""Facts about the process a shard runs in: where (Ray node or local), its memory, whether Ray
restarted it. In: nothing (the running process). Out: small values for info() and start-up.
"""
from __future__ import annotations

import os
import sys


def where() -> dict:
    """The Ray node (id, IP) this process runs on inside a Ray actor; "local" for the local executor."""
    import socket

    where = {"node": "local", "ip": "", "host": socket.gethostname()}
    ray = sys.modules.get("ray")  # never import Ray here: the local executor does without it
    if ray is not None and ray.is_initialized():
        context = ray.get_runtime_context()
        if context.get_actor_id() is not None:
            where["node"], where["ip"] = context.get_node_id(), ray.util.get_node_ip_address()
    return where


def rss() -> int | None:
    """This process's resident memory in bytes (Linux: /proc/self/statm, one small read), else None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def reconstructed() -> bool:
    try:
        import warnings

        import ray

        with warnings.catch_warnings():  # the property warns about a deprecated call inside Ray itself
            warnings.simplefilter("ignore", DeprecationWarning)
            return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed
    except Exception:  # not inside a Ray actor (local executor): never a restart
        return False
