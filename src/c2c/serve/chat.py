"""Interactive terminal chat over the generation engine (no server in between).

The conversation keeps its history; answers stream as they are generated. Commands:

    /mode [c2c|receiver|sharer|t2t]   show or switch the communication mode
    /reset                            forget the conversation
    /help                             list the commands
    /exit, /quit                      leave (as do Ctrl-D and Ctrl-C at the prompt)

Ctrl-C while an answer streams stops that answer and returns to the prompt.

The chat follows the fuser's recorded prompt format, as the server does: with a chat fuser the
conversation is rendered with the chat templates; with a plain-text fuser (or a pair without chat
templates) each line is sent as a plain-text prompt on its own, with no history (a conversation has no
plain-text rendering the fuser was trained on), and the banner says so.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from c2c.serve.schema import DoneEvent, ErrorEvent, NoteEvent, Prompt, RequestError, ServingEngine, TextEvent

HELP = """commands:
  /mode [c2c|receiver|sharer|t2t]  show or switch the communication mode
  /reset                           forget the conversation
  /help                            this list
  /exit, /quit                     leave (Ctrl-D or Ctrl-C at the prompt too)
Ctrl-C while an answer streams stops it."""


class ChatSession:
    """State of one terminal conversation; :meth:`handle_line` processes one line of user input."""

    def __init__(
        self,
        engine: ServingEngine,
        *,
        mode: str = "c2c",
        max_tokens: int | None = None,
        temperature: float = 0.0,
        system: str | None = None,
        out: TextIO | None = None,
    ) -> None:
        if mode not in engine.info.modes:
            raise ValueError(f"mode {mode!r} is not available; choose one of {', '.join(engine.info.modes)}")
        self.engine = engine
        self.mode = mode
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.system = system
        self.out = out or sys.stdout
        self.history: list[dict[str, str]] = []
        self.plain_text = engine.info.chat_refusal is not None
        """Each line is a plain-text prompt of its own (a plain-text fuser or a pair without chat templates)."""
        if self.plain_text and system:
            raise ValueError(
                f"a system prompt needs chat prompts, which this model refuses ({engine.info.chat_refusal})"
            )

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    @property
    def prompt(self) -> str:
        return f"[{self.mode}] you> "

    def handle_line(self, line: str) -> bool:
        """Process one input line; return False when the user asked to leave."""
        line = line.strip()
        if not line:
            return True
        if line.startswith("/"):
            return self._command(line)
        self.ask(line)
        return True

    def _command(self, line: str) -> bool:
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        if cmd in ("/exit", "/quit"):
            return False
        if cmd == "/help":
            self.write(HELP + "\n")
        elif cmd == "/reset":
            self.history.clear()
            self.write("(conversation cleared)\n")
        elif cmd == "/mode":
            if not arg:
                self.write(f"mode: {self.mode} (available: {', '.join(self.engine.info.modes)})\n")
            elif arg in self.engine.info.modes:
                self.mode = arg
                self.write(f"(mode switched to {arg})\n")
            else:
                self.write(f"unknown mode {arg!r}; available: {', '.join(self.engine.info.modes)}\n")
        else:
            self.write(f"unknown command {cmd!r}; /help lists the commands\n")
        return True

    def ask(self, text: str) -> str | None:
        """Send ``text`` as the next user turn, stream the answer; returns it (None if stopped or failed)."""
        prompt: Prompt
        if self.plain_text:
            prompt = text
        else:
            prompt = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
            prompt = [*prompt, {"role": "user", "content": text}]
        try:
            params = self.engine.make_params(mode=self.mode, max_tokens=self.max_tokens, temperature=self.temperature)
            handle = self.engine.submit(prompt, params)
        except RequestError as e:
            self.write(f"error: {e.message}\n")
            return None
        parts: list[str] = []
        self.write(f"{self.mode}> ")
        try:
            for ev in handle.iter_events():
                if isinstance(ev, NoteEvent):
                    self.write(f"[sharer note: {ev.text}]\n{self.mode}> ")
                elif isinstance(ev, TextEvent):
                    parts.append(ev.text)
                    self.write(ev.text)
                elif isinstance(ev, ErrorEvent):
                    self.write(f"\nerror: {ev.message}\n")
                    return None
                elif isinstance(ev, DoneEvent):
                    t = ev.timings
                    self.write(
                        f"\n  ({ev.completion_tokens} tokens, {ev.finish_reason}, "
                        f"first token {_ms(t.get('first_token'))}, total {_ms(t.get('total'))})\n"
                    )
        except KeyboardInterrupt:
            handle.cancel()
            self.write("\n(stopped)\n")
            return None
        answer = "".join(parts)
        if self.plain_text:
            return answer
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        return answer


def _ms(seconds: float | int | None) -> str:
    return "-" if seconds is None else f"{float(seconds) * 1000:.0f} ms"


def run_chat(
    session: ChatSession,
    *,
    read: Callable[[str], str] = input,
) -> None:
    """The read-eval loop; returns on /exit, Ctrl-D or Ctrl-C at the prompt."""
    info = session.engine.info
    session.write(f"c2c chat: model {info.model_id}, mode {session.mode}. /help for commands, Ctrl-D to quit.\n")
    if session.plain_text:
        session.write(f"plain-text prompts: each line is answered on its own, without history ({info.chat_refusal})\n")
    while True:
        try:
            line = read(session.prompt)
        except (EOFError, KeyboardInterrupt):
            session.write("\nbye\n")
            return
        if not session.handle_line(line):
            session.write("bye\n")
            return
