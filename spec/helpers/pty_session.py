#!/usr/bin/env python3
"""pty_session.py: drive a command on a pseudo-terminal, expect-style.

    pty_session.py TIMEOUT TRANSCRIPT STEP... -- CMD [ARG...]

Each STEP is "expect:TEXT" (wait until the output after the previous match
contains TEXT), "raw:" (wait until the terminal is out of canonical mode,
i.e. a line editor reads it key by key) or "send:TEXT" (type TEXT;
backslash escapes such as \\t, \\r, \\x04 and \\x1b are decoded).  Then
it waits for the command to exit.  The whole session is bounded by TIMEOUT
seconds.  The output goes to the file TRANSCRIPT; the exit status is the
command's, 124 when a wait ran out (the command is then killed by its PID),
125 when the command exited before an expected text appeared.
"""
import codecs
import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import time


def main():
    timeout = float(sys.argv[1])
    transcript = sys.argv[2]
    sep = sys.argv.index("--")
    steps = sys.argv[3:sep]
    cmd = sys.argv[sep + 1:]
    deadline = time.monotonic() + timeout

    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        os.execvp(cmd[0], cmd)

    out = bytearray()
    eof = False

    def pump(wait):
        nonlocal eof
        if eof:
            return
        r, _, _ = select.select([fd], [], [], max(0.0, wait))
        if r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if data:
                out.extend(data)
            else:
                eof = True

    def finish(status, why=None):
        if why:
            out.extend(("\n[pty_session: %s]\n" % why).encode())
        with open(transcript, "wb") as f:
            f.write(bytes(out))
        sys.exit(status)

    mark = 0
    for step in steps:
        kind, _, text = step.partition(":")
        if kind == "send":
            os.write(fd, codecs.decode(text, "unicode_escape").encode("latin-1"))
        elif kind == "expect":
            want = text.encode()
            while True:
                at = out.find(want, mark)
                if at >= 0:
                    mark = at + len(want)
                    break
                if eof:
                    os.waitpid(pid, 0)
                    finish(125, "exited before %r" % text)
                left = deadline - time.monotonic()
                if left <= 0:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    finish(124, "timed out waiting for %r" % text)
                pump(min(left, 0.1))
        elif kind == "raw":
            # the line editor has the terminal (no canonical mode): an
            # EOF (Ctrl-D) typed before that would be lost to the switch
            while termios.tcgetattr(fd)[3] & termios.ICANON:
                if eof or time.monotonic() >= deadline:
                    finish(124, "the terminal never left canonical mode")
                pump(0.01)
        else:
            finish(2, "unknown step %r" % step)

    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            while not eof and time.monotonic() < deadline:
                pump(0.05)
            finish(os.waitstatus_to_exitcode(status))
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            finish(124, "timed out waiting for the exit")
        pump(min(left, 0.05))


if __name__ == "__main__":
    main()
