"""The AutoGen echo agent (imports autogen_core at module level: import it only when
AutoGen is installed). Kept apart from bench/autogen_peer.py because AutoGen reads
the handler's type hints at class creation, so they must be real objects, not the
strings ``from __future__ import annotations`` makes."""

from dataclasses import dataclass

from autogen_core import MessageContext, RoutedAgent, message_handler


@dataclass
class EchoMessage:
    text: str


class EchoAgent(RoutedAgent):
    def __init__(self) -> None:
        super().__init__("echo: returns the text (the no-op task)")

    @message_handler
    async def on_message(self, message: EchoMessage, ctx: MessageContext) -> EchoMessage:
        return EchoMessage(text=message.text)
