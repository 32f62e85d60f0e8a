"""Model commands (load, unload) from an API replica to one worker, and the worker's answer.

A command goes onto the worker's own list (keys.control); the worker answers on a list named by the
command's id (keys.command_result), which the replica that sent it reads for a bounded time. So an admin
hears whether the model was loaded, refused (this worker's engine does not hold it) or failed (its engine
could not load it), instead of a 202 that says nothing of the outcome.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, ValidationError

from services.common import keys
from services.common.errors import APIError

Op = Literal["load", "unload"]
Outcome = Literal["loaded", "unloaded", "refused", "failed"]

KEEP_S = 300
"""Seconds a command waits on its worker's list, and an answer on its own, before Redis drops it: a worker
busy draining an unload takes its next command late, and nobody reads an answer after the API's wait."""


class ModelCommandConflict(APIError):
    """The fleet's state forbids the command: the named worker's engine does not hold the model, or every
    worker that could load it is full. Nothing was changed; the message says what to do instead."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    id: str = ""
    """Empty in a command from an API older than the answers: the worker then answers nobody."""
    op: Op
    model: str


class Result(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    worker: str
    op: Op
    model: str
    outcome: Outcome
    message: str = ""
    seconds: float = 0.0


def new_id() -> str:
    return f"cmd-{uuid.uuid4().hex[:16]}"


def send(client: redis.Redis, worker_id: str, command: Command) -> None:
    key = keys.control(worker_id)
    pipe = client.pipeline(transaction=False)
    pipe.rpush(key, command.model_dump_json())
    pipe.expire(key, KEEP_S)
    pipe.execute()


def parse(raw: bytes | str) -> Command | None:
    """A command from the list, or None for one this worker cannot read (logged by the caller)."""
    try:
        return Command.model_validate_json(raw)
    except ValidationError:
        return None


def reply(client: redis.Redis, result: Result) -> None:
    if not result.id:
        return
    key = keys.command_result(result.id)
    pipe = client.pipeline(transaction=False)
    pipe.rpush(key, result.model_dump_json())
    pipe.expire(key, KEEP_S)
    pipe.execute()


def collect(client: redis.Redis, command_id: str, expected: int, wait: float, tick: float = 1.0) -> list[Result]:
    """Up to `expected` answers to one command, read for at most `wait` seconds (BLPOPs of `tick`, each
    well under the client's socket timeout)."""
    key = keys.command_result(command_id)
    deadline = time.monotonic() + wait
    results: list[Result] = []
    while len(results) < expected:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        item = client.blpop([key], timeout=max(0.01, min(tick, left)))
        if item is not None:
            results.append(Result.model_validate_json(item[1]))
    return results
