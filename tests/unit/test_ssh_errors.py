"""A dropped ssh link is reported in words, whatever paramiko raised. paramiko often raises with
an empty message (EOFError(), SSHException('')); the error must still say the link went, never
end in a bare colon. The lab's test_localdisk_faults drives the real sshd; this pins each path."""

from __future__ import annotations

import paramiko
import pytest

from bmm.errors import TransientError
from bmm.transport.ssh import SshSession, SshTarget


class _Transport:
    def __init__(self, open_raises=None, channel=None):
        self.open_raises, self.channel = open_raises, channel

    def is_active(self):
        return True

    def open_session(self, timeout):
        if self.open_raises is not None:
            raise self.open_raises
        return self.channel


class _Channel:
    def __init__(self, send_raises):
        self.send_raises = send_raises

    def settimeout(self, t):
        pass

    def exec_command(self, command):
        pass

    def sendall(self, data):
        raise self.send_raises

    def close(self):
        pass


class _Client:
    def __init__(self, transport):
        self.transport = transport

    def get_transport(self):
        return self.transport


def session(transport) -> SshSession:
    s = SshSession(SshTarget("10.0.0.9", node="server7"))
    s._client = _Client(transport)
    return s


@pytest.mark.parametrize("raised, words", [
    (EOFError(), "link lost: the connection closed"),
    (paramiko.SSHException(""), "link lost: the session ended (SSHException)"),
    (OSError(), "link lost: the session ended (OSError)"),
    (paramiko.SSHException("Unable to open channel."), "link lost: Unable to open channel."),
    (paramiko.ChannelException(1, "Administratively prohibited"), "the node refused a session"),
])
def test_a_session_that_cannot_open_says_why(raised, words):
    with pytest.raises(TransientError) as err:
        session(_Transport(open_raises=raised)).run(["true"], timeout=5)
    assert err.value.node == "server7"
    assert str(err.value.reason).startswith("ssh root@10.0.0.9:22: ")
    assert words in err.value.reason
    assert not err.value.reason.rstrip().endswith(":")


@pytest.mark.parametrize("raised", [EOFError(), OSError(), paramiko.SSHException("")])
def test_a_stream_cut_mid_copy_says_the_link_was_lost(raised):
    chunks = iter([b"x" * 10, None])
    with pytest.raises(TransientError) as err:
        session(_Transport(channel=_Channel(raised))).run_stream_in(["dd"], lambda: next(chunks), timeout=5)
    assert "link lost: " in err.value.reason
    assert not err.value.reason.rstrip().endswith(":")
