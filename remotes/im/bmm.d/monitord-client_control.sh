#!/usr/bin/env python3
"""bmm IM control: `[stop] bmm <host id> <host name>`, run by run_monitord_client /
stop_monitord_client on the front-end (protocol §2.3, §2.8). See im_drivers/control.py."""
from im_drivers.control import main

main(__file__)
