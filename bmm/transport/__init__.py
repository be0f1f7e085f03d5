"""How bmm reaches a machine's operating system."""


def executor_node(ex) -> str | None:
    """The inventory name of the node an executor talks to (for error messages)."""
    node = getattr(ex, "node", None)
    if node:
        return node
    target = getattr(ex, "target", None)
    return getattr(target, "node", None) or getattr(target, "host", None)
