"""`python -m services.keys create|list|revoke`: manage the API keys in API_KEYS_FILE (or --file).

`create` prints the new key once; only its SHA-256 is stored. Running API processes pick up any change
within about a second (they re-read the file when it changes).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from services.common.settings import settings_or_exit
from services.keys import store


def _models(text: str) -> tuple[str, ...]:
    models = tuple(m.strip() for m in text.split(",") if m.strip())
    if not models:
        raise argparse.ArgumentTypeError("give at least one model id")
    return models


def _expiry(text: str) -> datetime:
    try:
        return store.parse_expiry(text)
    except store.KeyFileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpm", type=int, help="requests per minute (default: KEY_DEFAULT_RPM)")
    p.add_argument("--tpm", type=int, help="tokens per minute, prompt and completion (default: KEY_DEFAULT_TPM)")
    p.add_argument("--concurrency", type=int, help="requests in flight at once (default: KEY_DEFAULT_CONCURRENCY)")
    p.add_argument("--priority", type=int, help="fair-share weight, 1-100 (default 1): 2 gets twice the turns")


def _limits(args: argparse.Namespace) -> dict[str, int | None]:
    return {field: getattr(args, field) for field in store.LIMIT_FIELDS}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.keys", description=__doc__)
    p.add_argument("--file", type=Path, help="the keys file (default: API_KEYS_FILE)")
    sub = p.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="make a key and print it once")
    create.add_argument("name")
    create.add_argument("--models", type=_models, help="comma-separated model ids or aliases it may use")
    create.add_argument("--expires", type=_expiry, help="YYYY-MM-DD (start of that day, UTC) or ISO 8601 time")
    create.add_argument("--admin", action="store_true", help="may load/unload models, read status and metrics")
    _limit_options(create)
    change = sub.add_parser("set", help="change a key's limits or priority (0 = back to the KEY_DEFAULT_* setting)")
    change.add_argument("name")
    _limit_options(change)
    sub.add_parser("list", help="names, first characters, models, expiry; never the key or its hash")
    revoke = sub.add_parser("revoke", help="delete a key; it stops working within about a second")
    revoke.add_argument("name")
    return p


def _row(key: store.ApiKey) -> str:
    models = ",".join(key.models) if key.models is not None else "*"
    expires = key.expires.isoformat() if key.expires else "never"
    flags = " admin" if key.admin else ""
    limits = "".join(f"\t{f}={getattr(key, f)}" for f in ("rpm", "tpm", "concurrency") if getattr(key, f))
    flags = f"{limits}\tpriority={key.priority}{flags}"
    expired = " (expired)" if key.expired() else ""
    return f"{key.name}\t{key.shown}...\tmodels={models}\texpires={expires}{expired}{flags}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    path = args.file
    if path is None:
        path = settings_or_exit().api_keys_file
        if path is None:
            print("no keys file: set API_KEYS_FILE or pass --file", file=sys.stderr)
            return 2
    try:
        if args.command == "create":
            key = store.create(
                path, args.name, models=args.models, expires=args.expires, admin=args.admin, **_limits(args)
            )
            print(key)
            print(f"created {args.name!r} in {path}; this key is shown only now", file=sys.stderr)
        elif args.command == "list":
            for key in store.read(path).keys:
                print(_row(key))
        elif args.command == "set":
            print(_row(store.set_limits(path, args.name, **_limits(args))))
        else:
            store.revoke(path, args.name)
            print(f"revoked {args.name!r}", file=sys.stderr)
    except (store.KeyFileError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
