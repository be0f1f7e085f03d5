"""What a bare-metal host and its instance report to OpenNebula's monitord."""
