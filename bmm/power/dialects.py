"""PDU command-line dialects, as data: a new vendor is an entry here, or (without touching
bmm) a table in a TOML file named by the node's `dialects_file`, same keys. Kept as a Python
dict rather than a .toml next to it so that it always ships with the package.

Regular expressions are Python `re` syntax. In command templates and in `status_pattern`,
the text {outlet} is replaced by the node's outlet number (nothing else is substituted).

Keys (required: password_prompt, prompt, on, off, status, status_pattern, state_on, state_off):
  description       free text
  user_prompt       regex: the PDU asks for the user name (telnet login; ssh logs in itself)
  password_prompt   regex: the PDU (or the ssh client) asks for the password
  prompt            regex: the command prompt after login
  login_failed      regex: text meaning the login was refused (fatal, never retried)
  command_ok        regex: must appear in every command's answer (else transient)
  command_error     regex: an answer meaning the PDU rejected the command (fatal)
  busy              regex: an answer meaning "try again later" (transient)
  on / off / status command templates; reboot (optional: else off, reboot_delay_s, on)
  logout            command that leaves the CLI
  status_pattern    regex with a named group `state`, searched in the status answer
  state_on / state_off   regexes for the values of `state` that mean on / off
  line_ending       what ends a command line (default "\\r")
  reboot_delay_s    default off->on delay for reset when there is no reboot command
"""

DIALECTS: dict[str, dict] = {
    "apc": {
        "description": "APC Switched Rack PDU, AOS command line (AP79xx/AP86xx/AP89xx; the lab PDU)",
        "user_prompt": r"User Name\s*:",
        "password_prompt": r"(?i)password\s*:",
        "prompt": r"apc>",
        "login_failed": r"(?i)(login failed|incorrect|access denied|too many failed)",
        "command_ok": r"E000:",
        "command_error": r"(?m)^\s*E(?!000)\d{3}:[^\r\n]*",
        "busy": r"(?i)(in use|busy)",
        "on": "olOn {outlet}",
        "off": "olOff {outlet}",
        "reboot": "olReboot {outlet}",
        "status": "olStatus {outlet}",
        "logout": "exit",
        # " 3: board1: On" (outlet, name, state; APC marks pending changes with "*")
        "status_pattern": r"(?m)^\s*{outlet}:[^\r\n]*:\s*(?P<state>On|Off)\*?\s*$",
        "state_on": r"^On$",
        "state_off": r"^Off$",
        "line_ending": "\r",
        "reboot_delay_s": 5.0,
    },
}
