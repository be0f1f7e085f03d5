"""Boot mechanisms: how a node is made to boot what bmm chose."""
