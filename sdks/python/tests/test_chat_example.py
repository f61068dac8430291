"""The chat example (examples/chat.py): how it names senders, and that you
see your own lines."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import arqonbus
from support import BusServer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "chat.py"


def _chat_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chat_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _message(payload: object) -> arqonbus.Message:
    return arqonbus.Message(
        id="arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P",
        room="r",
        channel="c",
        from_="arq_01JDQ0AAAAAAAAAAAAAABCDEFG",
        payload=payload,
        meta=None,
        timestamp="2026-11-29T12:34:56.789Z",
    )


def test_senders_without_a_nick_show_as_a_short_id_not_a_question_mark() -> None:
    chat = _chat_module()
    nicks: dict = {}
    assert chat._line(_message({"nick": "ana", "text": "hi"}), nicks) == "[12:34:56] <ana> hi"
    assert nicks == {"arq_01JDQ0AAAAAAAAAAAAAABCDEFG": "ana"}
    assert chat._line(_message({"text": "from arqon pub"}), {}) == "[12:34:56] <BCDEFG> from arqon pub"
    assert chat._line(_message(42), {}) == "[12:34:56] <BCDEFG> 42"


def test_your_own_lines_are_shown(bus: BusServer) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), bus.url, "chat-test", "echo", "--nick", "ana"],
        input="hello there\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.endswith("] <ana> hello there") for line in lines), done.stdout
