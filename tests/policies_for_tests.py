"""Python policies used by the runtime tests (loaded by `provider = python` models)."""


def by_age(agent):
    """Per-agent policy: answer from the persona; fail for agents whose id ends in 7."""
    if agent["id"] % 10 == 7:
        raise RuntimeError(f"policy refused agent {agent['id']}")
    return min(100, agent["persona"]["age"] + len(agent["memory"]))


def out_of_range(agent):
    """Returns an invalid answer for even ids: recorded as an error, value missing."""
    return 500 if agent["id"] % 2 == 0 else 5


def dies_in_round_two(agent):
    """Kills its own worker process when agent 15 is asked in round 2: a shard that keeps dying."""
    import os

    if agent["id"] == 15 and agent["variables"].get("round") == 2:
        os._exit(1)
    return agent["id"] % 100


def kind_echo(agent):
    """The kind its prompt names ("... of kind B: ..."), checking the system prompt says the same."""
    kind = agent["prompt"].split("of kind ")[1].split(":")[0]
    return kind
