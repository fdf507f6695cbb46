"""The terminal chat: in-process session logic, and the real command in a pseudo-terminal (Ctrl-C, Ctrl-D)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator

import pytest

from c2c.serve.chat import ChatSession, run_chat
from c2c.serve.engine import Engine


@pytest.fixture
def session(make_engine) -> Iterator[tuple[ChatSession, io.StringIO]]:
    out = io.StringIO()
    engine: Engine = make_engine(max_new_tokens=64, batch_window_s=0)
    yield ChatSession(engine, max_tokens=6, out=out), out


def test_conversation_keeps_history_and_streams(session, c2c_model) -> None:
    chat, out = session
    first = chat.ask("What is the capital of France?")
    q1 = [{"role": "user", "content": "What is the capital of France?"}]
    assert first == c2c_model.generate(q1, max_new_tokens=6)
    assert f"c2c> {first}" in out.getvalue()
    second = chat.ask("And of Spain?")
    q2 = q1 + [{"role": "assistant", "content": first}, {"role": "user", "content": "And of Spain?"}]
    assert second == c2c_model.generate(q2, max_new_tokens=6)
    assert len(chat.history) == 4
    assert chat.handle_line("/reset") and chat.history == []


def test_commands(session) -> None:
    chat, out = session
    assert chat.handle_line("/mode") and "mode: c2c" in out.getvalue()
    assert chat.handle_line("/mode t2t") and chat.mode == "t2t" and chat.prompt == "[t2t] you> "
    chat.handle_line("Why is the sky blue?")
    assert "[sharer note: " in out.getvalue()
    assert chat.handle_line("/mode telepathy") and chat.mode == "t2t" and "unknown mode" in out.getvalue()
    assert chat.handle_line("/help") and "/reset" in out.getvalue()
    assert chat.handle_line("/frobnicate") and "unknown command" in out.getvalue()
    assert chat.handle_line("   ")
    assert chat.handle_line("/exit") is False and chat.handle_line("/quit") is False


def test_run_chat_ends_on_eof_and_ctrl_c(session) -> None:
    chat, out = session
    lines = iter(["/mode receiver", "hello"])

    def read(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    run_chat(chat, read=read)
    assert chat.mode == "receiver" and len(chat.history) == 2 and out.getvalue().endswith("bye\n")

    def interrupt(prompt: str) -> str:
        raise KeyboardInterrupt

    run_chat(chat, read=interrupt)
    assert out.getvalue().endswith("bye\n")


def _controlling_terminal() -> None:
    """In the child: a new session whose controlling terminal is the pty, so Ctrl-C sends SIGINT, with
    SIGINT's default disposition as a user's shell gives it (a test run started in the background, e.g. by
    a non-interactive shell with `&`, ignores SIGINT, and the child would inherit that)."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    """A child process on a pseudo-terminal, read without blocking."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb"}
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, preexec_fn=_controlling_terminal
        )
        os.close(slave)
        self.buffer = ""

    def expect(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen; terminal shows:\n{self.buffer[-2000:]}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    self.buffer += os.read(self.master, 65536).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    if self.proc.poll() is not None:
                        raise AssertionError(f"{text!r} not seen before exit:\n{self.buffer[-2000:]}") from None
        return self.buffer

    def send(self, data: str) -> None:
        os.write(self.master, data.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


@pytest.mark.slow
def test_chat_command_in_a_terminal(saved_pair) -> None:
    term = Terminal(
        [
            sys.executable,
            "-m",
            "c2c.serve.cli",
            "chat",
            str(saved_pair.fuser_dir),
            "--receiver",
            str(saved_pair.receiver_dir),
            "--sharer",
            str(saved_pair.sharer_dir),
            "--max-tokens",
            "4000",
            "--threads",
            "1",
        ]
    )
    try:
        term.expect("[c2c] you> ")
        term.send("/mode receiver\r")
        term.expect("[receiver] you> ")
        term.send("Tell me a long story.\r")
        term.expect("receiver> ")
        time.sleep(0.5)  # mid-answer: 4000 tokens take far longer
        term.send("\x03")  # Ctrl-C stops the answer, not the chat
        term.expect("(stopped)")
        term.expect("[receiver] you> ", timeout=20)
        term.send("\x04")  # Ctrl-D at the prompt leaves
        term.expect("bye")
        assert term.proc.wait(30) == 0
    finally:
        term.close()
