"""How bmm reaches a machine's operating system."""
