"""`python -m services.models add|list|show|remove`: the model catalog (MODELS_FILE) from the command line.

add Qwen/Qwen2.5-7B-Instruct-GGUF:Q4_K_M     the repo's GGUF whose name carries that quantization
add REPO --file NAME.gguf                     one file of a repo
add ./my-model.gguf                           a file on this machine
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from services.common import gguf_info
from services.common.catalog import Catalog, CatalogError, ModelSpec, parse
from services.common.settings import Settings, settings_or_exit
from services.models import catalog_file, hub

GGUF_ENGINES = ("llama_server", "llama_cpp")
REPO_ENGINES = ("mlx", "vllm")
"""Engines that read a whole Hugging Face repository: mlx-lm (MLX weights, downloaded here) and vLLM (which
downloads the repo itself on its GPU box: only the entry is written, after the hub confirms the repo)."""


class Refused(RuntimeError):
    """What the user asked cannot be done: one line, exit status 1."""


def _model_id(filename: str) -> str:
    return hub.SPLIT.sub("", filename).removesuffix(".gguf").removesuffix(".GGUF").lower()


def _relative(path: Path, models_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(models_dir.resolve()))
    except ValueError:
        return str(path.resolve())


def _entry(
    args: argparse.Namespace, source: dict[str, Any], info: gguf_info.GGUFInfo, described: str
) -> dict[str, Any]:
    body: dict[str, Any] = {"description": args.description or described}
    if args.alias:
        body["aliases"] = list(dict.fromkeys(args.alias))
    body["context_length"] = args.context_length or info.context_length or 4096
    if info.architecture:
        body["architecture"] = info.architecture
    if info.chat_template is None and args.chat_format:
        body["chat_format"] = args.chat_format
    body["sources"] = {engine: dict(source) for engine in args.engine or GGUF_ENGINES}
    return body


def _check_names(text: str, origin: str, model_id: str, aliases: list[str], replace: bool) -> None:
    """Refuse an id or alias another model answers to (a request for it would silently get that model)."""
    models, _ = parse(text, origin)
    if model_id in models and not replace:
        raise Refused(f"{model_id} is already in the catalog (--force replaces it)")
    taken = {name.lower(): spec.id for spec in models.values() for name in (spec.id, *spec.aliases)}
    for name in (model_id, *aliases):
        owner = taken.get(name.lower())
        if owner is not None and owner != model_id:
            raise Refused(f"the name {name!r} is already taken by {owner}")


def add_repo(args: argparse.Namespace, settings: Settings) -> int:
    """An MLX or vLLM model: a whole repository, named by its id."""
    engines = list(dict.fromkeys(args.engine))
    if any(e not in REPO_ENGINES for e in engines):
        raise Refused("--engine mlx and vllm take a whole repository; llama_server and llama_cpp take a GGUF")
    repo = args.spec
    if repo.count("/") != 1 or ":" in repo:
        raise Refused(f"{repo}: expected OWNER/REPO for --engine {'/'.join(engines)}")
    picked = hub.pick_repo(repo, revision=args.revision)
    model_id = args.id or repo.split("/")[1].lower()
    path = settings.models_file
    _check_names(catalog_file.read(path), str(path), model_id, args.alias or [], args.force)
    sources: dict[str, dict[str, Any]] = {}
    size = sum(f.size or 0 for f in picked.files)
    if "mlx" in engines:
        placed, _ = hub.download(picked, settings.models_dir)
        folder = placed[0].parent
        sources["mlx"] = {"path": _relative(folder, settings.models_dir), "hf_repo": repo, "revision": picked.revision,
                          "size": sum(p.stat().st_size for p in placed)}  # fmt: skip
    if "vllm" in engines:
        sources["vllm"] = {"hf_repo": repo, "revision": picked.revision, "size": size}
    conf = hub.config(picked)
    body: dict[str, Any] = {"description": args.description or f"{repo} ({', '.join(engines)})"}
    if args.alias:
        body["aliases"] = list(dict.fromkeys(args.alias))
    body["context_length"] = args.context_length or conf.get("max_position_embeddings") or 4096
    if conf.get("model_type"):
        body["architecture"] = conf["model_type"]
    body["sources"] = sources
    with catalog_file.locked(path):
        text = catalog_file.read(path) if path.exists() else f"default: {model_id}\nmodels: {{}}\n"
        _check_names(text, str(path), model_id, args.alias or [], args.force)
        catalog_file.write(path, catalog_file.with_entry(text, model_id, body))
    where = sources["mlx"]["path"] if "mlx" in sources else "the hub (vLLM downloads it on its own machine)"
    print(f"added {model_id}: {where} ({size / 2**20:.0f} MiB, context {body['context_length']}) to {path}")
    return 0


def add(args: argparse.Namespace, settings: Settings) -> int:
    if args.engine and any(e in REPO_ENGINES for e in args.engine):
        return add_repo(args, settings)
    path = settings.models_file
    local = Path(args.spec).expanduser()
    if local.exists() or args.spec.lower().endswith(".gguf"):
        if not local.is_file():
            raise Refused(f"{args.spec}: no such file")
        placed, source, described = [local], {"path": _relative(local, settings.models_dir)}, f"{local.name} (local)"
    else:
        repo, _, quant = args.spec.partition(":")
        if repo.count("/") != 1:
            raise Refused(f"{args.spec}: expected OWNER/REPO[:QUANT], OWNER/REPO --file NAME, or a path to a .gguf")
        picked = hub.pick(repo, quant=quant or None, file=args.file, revision=args.revision)
        model_id = args.id or _model_id(picked.files[0].name)
        # before gigabytes are downloaded
        _check_names(catalog_file.read(path), str(path), model_id, args.alias or [], args.force)
        placed, sha = hub.download(picked, settings.models_dir)
        source = {
            "path": _relative(placed[0], settings.models_dir),
            "hf_repo": repo,
            "hf_file": picked.files[0].name,
            "revision": picked.revision,
            "sha256": sha,
            "size": sum(p.stat().st_size for p in placed),
        }
        described = f"{repo} {picked.files[0].name}"
        if quant and args.spec not in (args.alias or []):
            args.alias = [*(args.alias or []), args.spec]
    model_id = args.id or _model_id(placed[0].name)
    info = gguf_info.read(placed[0])
    with catalog_file.locked(path):
        text = catalog_file.read(path) if path.exists() else f"default: {model_id}\nmodels: {{}}\n"
        _check_names(text, str(path), model_id, args.alias or [], args.force)
        body = _entry(args, source, info, described)
        catalog_file.write(path, catalog_file.with_entry(text, model_id, body))
    size = sum(p.stat().st_size for p in placed) / 2**20
    print(
        f"added {model_id}: {source['path']} ({size:.0f} MiB, context {body['context_length']}, "
        f"{info.architecture or 'unknown architecture'}) to {path}"
    )
    return 0


def list_models(args: argparse.Namespace, settings: Settings) -> int:
    catalog = Catalog.from_yaml(settings.models_file)
    rows = [("ID", "KIND", "CONTEXT", "ENGINES", "WEIGHTS")]
    for spec in catalog.models.values():
        rows.append(
            (
                spec.id + (" (default)" if spec.id == catalog.default else ""),
                spec.kind,
                str(spec.context_length),
                ",".join(spec.sources),
                _weights(catalog, spec, settings.models_dir),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[4])
    return 0


def _weights(catalog: Catalog, spec: ModelSpec, models_dir: Path) -> str:
    for engine in spec.sources:
        p = catalog.path_for(spec.id, engine, models_dir)
        if p is not None:
            return f"{p.relative_to(models_dir) if p.is_relative_to(models_dir) else p}" + (
                "" if p.exists() else " (missing)"
            )
    src = next(iter(spec.sources.values()), None)
    return f"hub: {src.hf_repo}" if src is not None and src.hf_repo else "-"


def show(args: argparse.Namespace, settings: Settings) -> int:
    catalog = Catalog.from_yaml(settings.models_file)
    try:
        spec = catalog.get(args.model)
    except Exception:  # ModelNotFound: the API's 404 class; here one line
        raise Refused(f"{args.model}: not in {settings.models_file}") from None
    print(f"id:             {spec.id}{' (default)' if spec.id == catalog.default else ''}")
    for field in ("description", "kind", "aliases", "context_length", "chat_format", "architecture"):
        value = getattr(spec, field)
        if value not in (None, (), ""):
            print(f"{field + ':':15} {', '.join(value) if isinstance(value, tuple) else value}")
    for engine, src in spec.sources.items():
        print(f"source {engine}: " + ", ".join(f"{k}={v}" for k, v in src.model_dump(exclude_none=True).items()))
    path = next((p for e in spec.sources if (p := catalog.path_for(spec.id, e, settings.models_dir))), None)
    if path is None or not path.is_file():
        print(f"weights:        {'missing: ' + str(path) if path else 'none on this machine'}")
        return 0
    info = gguf_info.read(path)
    print(f"gguf:           {info.name or '?'}: architecture {info.architecture}, context {info.context_length}")
    if info.chat_template is None:
        print("chat template:  none in the file (chat_format or a chat_template_file gives one)")
    else:
        print("chat template (from the GGUF):")
        print(info.chat_template)
    return 0


def remove(args: argparse.Namespace, settings: Settings) -> int:
    path = settings.models_file
    with catalog_file.locked(path):
        text = catalog_file.read(path)
        catalog = Catalog.from_text(text, origin=str(path))
        model_id = catalog.resolve(args.model) if args.model.lower() in catalog._names else None
        if model_id is None or model_id not in catalog.models:
            raise Refused(f"{args.model}: not in {path}")
        if model_id == catalog.default:
            raise Refused(f"{model_id} is the default model: make another the default first")
        placed = {
            p
            for e in catalog.models[model_id].sources
            if (p := catalog.path_for(model_id, e, settings.models_dir)) is not None
        }
        catalog_file.write(path, catalog_file.without(text, model_id))
    hf_dir = (settings.models_dir / "hf").resolve()
    for p in placed:  # only what `add` downloaded; a file the user put there is theirs
        if not args.keep_files and p.resolve().is_relative_to(hf_dir):
            for part in p.parent.glob(hub.SPLIT.sub("", p.name) + "*") if hub.SPLIT.search(p.name) else [p]:
                part.unlink(missing_ok=True)
    print(f"removed {model_id} from {path}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.models", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("add", help="download a model from Hugging Face (or take a local GGUF) into the catalog")
    p.add_argument(
        "spec", help="OWNER/REPO:QUANT, OWNER/REPO (with --file, or --engine mlx/vllm), or a path to a .gguf"
    )
    p.add_argument("--file", help="the file in the repo (for a split GGUF, its first part)")
    p.add_argument("--revision", help="a branch, tag or commit of the repo (default: main)")
    p.add_argument("--id", help="the model id (default: from the file name)")
    p.add_argument("--alias", action="append", help="another name for it (repeatable)")
    p.add_argument("--description", help="one line for /v1/models readers")
    p.add_argument(
        "--engine",
        action="append",
        choices=GGUF_ENGINES + REPO_ENGINES,
        help="engines to record (default: llama_server and llama_cpp for a GGUF); mlx downloads an MLX repo, vllm "
        "records a repo vLLM downloads itself",
    )
    p.add_argument("--context-length", type=int, help="tokens (default: the GGUF's own)")
    p.add_argument("--chat-format", help="llama.cpp's template name, for a GGUF that carries no chat template")
    p.add_argument("--force", action="store_true", help="replace an entry with the same id")
    p.set_defaults(run=add)
    p = sub.add_parser("list", help="the catalog's models")
    p.set_defaults(run=list_models)
    p = sub.add_parser("show", help="one model's entry, and what its GGUF says (context, chat template)")
    p.add_argument("model", help="id or alias")
    p.set_defaults(run=show)
    p = sub.add_parser("remove", help="take a model out of the catalog (and the files `add` downloaded)")
    p.add_argument("model", help="id or alias")
    p.add_argument("--keep-files", action="store_true", help="leave its downloaded files in place")
    p.set_defaults(run=remove)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_or_exit()
    try:
        return args.run(args, settings)
    except (Refused, CatalogError, hub.HubError, gguf_info.NotGGUF) as exc:
        print(f"models: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("models: interrupted (run it again: the download resumes from huggingface_hub's cache)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
