"""Which model a chat gets when it names an OpenAI model: CHAT_MODEL, an instruct model, while it is served.

The catalog's default (Gemma 3 270M) is a base model: it continues text well and does not follow chat turns
("Name three colors." -> "run this code on a single node."). A client written for OpenAI sends gpt-3.5-turbo
to /v1/chat/completions and expects its turn answered, so on the chat routes an OpenAI name (models.yaml's
`openai_names`) goes to CHAT_MODEL. Everything else resolves as the catalog says: /v1/completions' OpenAI
names (text-davinci-003, ...) stay on the default, and a model named by its id or alias gets that model.

CHAT_MODEL is the one place that says which model chats: the native stack starts its worker from the same
setting (services/stack/procfile.py). Where no worker serves it (its weights not fetched, a compose stack
without its worker, its worker restarting) or the caller's key may not use it, the chat goes to the default,
as before, rather than failing.
"""

from __future__ import annotations

from typing import Protocol

import falcon

from services.api.limits import key_limits
from services.common.catalog import Catalog
from services.common.errors import ModelNotFound


class Serving(Protocol):
    def serving(self, fresh: bool = False) -> dict[str, list]: ...


class ChatModel:
    def __init__(self, name: str, catalog: Catalog, gateway: Serving) -> None:
        self.name = name
        self.catalog = catalog
        self.gateway = gateway

    def resolve(self, req: falcon.Request, requested: str) -> str:
        """The canonical id a chat naming `requested` is served by (ModelNotFound for an unknown name)."""
        model_id = self.catalog.resolve(requested)
        if not self.name or not self.catalog.is_openai_name(requested):
            return model_id
        try:
            chat = self.catalog.resolve(self.name)
        except ModelNotFound:  # CHAT_MODEL names no model of this catalog (one reloaded since, say)
            return model_id
        if chat != model_id and self.gateway.serving().get(chat) and key_limits.may_use(req, chat, self.catalog):
            return chat
        return model_id
