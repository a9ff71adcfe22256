"""Runs many ``vlprompt`` commands and Python snippets in children forked from one process that imported vlprompt's
command-line stack once.

A ``vlprompt`` process spends 10 to 15 s of CPU importing torch, Lightning and open_clip before it reads its
arguments, and the README walk-through runs about thirty of them. Here each command is a child forked from a server
that paid for the imports once: the child takes the caller's stdin, stdout and stderr (passed over the socket),
working directory, environment and arguments, runs ``vlprompt.commands.main`` (what the ``vlprompt`` console script
calls) or a snippet as ``python -c`` would, and its exit status becomes the caller's. What a command starts itself (a
sweep's workers) is still a fresh process.

What differs from a fresh process, so what the tests using it cannot check: a module imported by the server read the
environment the server started with (the children's own environment is in place before the command runs); signals
sent to the caller do not reach the child; and the console script itself is not started (``make install`` runs it,
tests/test_cli.py and tests/test_packaging.py start fresh ``python -m vlprompt`` processes).

    python tests/command_server.py SOCKET        # imports, prints "ready", serves until terminated
    CLIENT                                       # source of a stdlib-only program's run_on_server(argv)
    with serving(cwd, env) as env: ...           # a server for the block; env names its socket
    [sys.executable, "-c", VLPROMPT_CLIENT, *args]   # `vlprompt ARGS` through the server in env
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
import types
from pathlib import Path
from typing import Iterator

HEADER = 8  # bytes: the request's length, sent with the caller's three standard streams
STATUS = 4  # bytes: the child's exit status, signed

#: A program that forwards its own arguments, working directory and environment to the server at ``VLPROMPT_SERVER``
#: and exits with the status the command ended with. ``python -c`` snippets go through it too (``--python-code``).
CLIENT = f'''
import json, os, socket, sys


def run_on_server(argv):
    request = json.dumps({{"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(os.environ["VLPROMPT_SERVER"])
        socket.send_fds(connection, [len(request).to_bytes({HEADER}, "big")], [0, 1, 2])
        connection.sendall(request)
        with connection.makefile("rb") as replies:
            status = replies.read({STATUS})
    if len(status) < {STATUS}:
        sys.exit("command server: the command's process ended without a status (killed?)")
    sys.exit(int.from_bytes(status, "big", signed=True))
'''
#: ``vlprompt ARGS`` as a program: ``[sys.executable, "-c", VLPROMPT_CLIENT, *ARGS]``.
VLPROMPT_CLIENT = CLIENT + 'run_on_server(["vlprompt", *sys.argv[1:]])\n'


@contextlib.contextmanager
def serving(cwd: Path, env: dict, start_timeout: float = 600) -> Iterator[dict]:
    """A command server started in ``cwd`` with ``env`` (what its imports read), stopped on leaving; yields ``env``
    with ``VLPROMPT_SERVER`` naming its socket, the environment its clients run in."""
    socket_dir = Path(tempfile.mkdtemp(prefix="vlprompt-server-"))  # short: a socket's path has at most 107 bytes
    env = {**env, "VLPROMPT_SERVER": str(socket_dir / "socket")}
    server = subprocess.Popen([sys.executable, __file__, env["VLPROMPT_SERVER"]], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        started = (select.select([server.stdout], [], [], start_timeout)[0]
                   and server.stdout.readline().strip() == "ready")
        assert started, "the command server did not start (tests/command_server.py; its error is above)"
        yield env
    finally:
        server.terminate()
        server.wait(timeout=60)
        server.stdout.close()
        shutil.rmtree(socket_dir, ignore_errors=True)


def _run(request: dict) -> int:
    """In the forked child: become the caller's process, then run its command. Returns the exit status."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    # sys.argv and sys.path[0] as the caller's would be: for `python -c` the working directory, otherwise the
    # console script's folder
    try:
        if argv[0] == "--python-code":  # `python -c CODE ARGS`
            sys.argv, sys.path[0] = ["-c", *argv[2:]], ""
            sys.modules["__main__"] = module = types.ModuleType("__main__")  # the snippet's own, as under python -c
            exec(compile(argv[1], "<string>", "exec"), module.__dict__)
        else:
            from vlprompt.commands import main

            sys.argv, sys.path[0] = list(argv), os.path.dirname(sys.executable)
            main(argv[1:])
        return 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - as an uncaught exception ends `python`: traceback, status 1
        traceback.print_exc()
        return 1


def _serve_one(listener: socket.socket, connection: socket.socket) -> None:
    message, fds, _, _ = socket.recv_fds(connection, HEADER, 3)
    length = int.from_bytes(message, "big")
    with connection.makefile("rb") as requests:
        payload = requests.read(length)
    if len(payload) < length or len(fds) != 3:  # a caller that died mid-request: nothing to run, keep serving
        for fd in fds:
            os.close(fd)
        return
    if os.fork():  # the server: the child owns the connection and the streams now
        for fd in fds:
            os.close(fd)
        connection.close()
        return
    listener.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the command may wait for processes of its own
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    status = 1
    try:
        status = _run(json.loads(payload))
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:
            connection.sendall(status.to_bytes(STATUS, "big", signed=True))
        finally:
            os._exit(status & 0xFF)


def serve(path: str) -> None:
    # What every command imports, loaded before the first fork: the children share it.
    import vlprompt.cli  # noqa: F401
    import vlprompt.commands  # noqa: F401
    import vlprompt.data.check  # noqa: F401
    import vlprompt.eval.report  # noqa: F401
    import vlprompt.eval.suite  # noqa: F401
    import vlprompt.inference  # noqa: F401
    import vlprompt.meta_init  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished children are reaped by the kernel
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        print("ready", flush=True)
        while True:
            connection, _ = listener.accept()
            with connection:
                _serve_one(listener, connection)


if __name__ == "__main__":
    serve(sys.argv[1])
