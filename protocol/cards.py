"""The A2A-compatible view of an agent card (field names of the A2A spec)."""

from __future__ import annotations

from .names import MAJOR_VERSION
from .types import A2ACard, A2AInterface, A2ASkill, AgentCard

__all__ = ["A2A_BINDING", "a2a_card"]

#: protocolBinding URI naming this protocol in an A2A card
A2A_BINDING = f"https://agent-mesh.dev/protocol/v{MAJOR_VERSION}"


def a2a_card(card: AgentCard, server_url: str) -> A2ACard:
    """Describe an agent to A2A tooling: one skill per served capability."""
    return A2ACard(
        name=card.id,
        description=card.description or card.role or card.id,
        version=card.version or "0",
        supported_interfaces=(
            A2AInterface(url=server_url, protocol_binding=A2A_BINDING, protocol_version=str(MAJOR_VERSION)),
        ),
        skills=tuple(
            A2ASkill(id=cap, name=cap, description=f"{card.role}: serves {cap}".strip(": "), tags=card.expertise)
            for cap in card.serves
        ),
        capabilities={"streaming": False},
    )
