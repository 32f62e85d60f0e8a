"""`vllm serve` for the model VLLM_MODEL names in models/models.yaml: the gpu profile's entrypoint.

The official vLLM image has Python and PyYAML but not our package, so this reads the catalog itself: the
model id or alias VLLM_MODEL resolves to the `vllm` source's Hugging Face repository, served under the
model's id (what its worker asks for). Further arguments go to `vllm serve` as they are.
`--print` prints the command instead of running it.
"""

import os
import shlex
import sys

import yaml


def command(catalog: dict, name: str, extra: list[str]) -> list[str]:
    models = catalog.get("models") or {}
    model_id = next(
        (
            mid
            for mid, spec in models.items()
            if name.lower() in {mid.lower(), *map(str.lower, spec.get("aliases", []))}
        ),
        None,
    )
    if model_id is None:
        raise SystemExit(f"vllm: VLLM_MODEL={name!r} is not in models.yaml")
    repo = ((models[model_id].get("sources") or {}).get("vllm") or {}).get("hf_repo")
    if not repo:
        raise SystemExit(f"vllm: models.yaml gives {model_id} no `vllm: {{hf_repo: ...}}` source")
    return ["vllm", "serve", repo, "--served-model-name", model_id, *extra]


def main() -> None:
    args = sys.argv[1:]
    dry = args[:1] == ["--print"]
    with open(os.environ.get("MODELS_FILE", "/models/models.yaml")) as f:
        cmd = command(yaml.safe_load(f), os.environ.get("VLLM_MODEL", "qwen2.5-0.5b-instruct"), args[dry:])
    if dry:
        print(shlex.join(cmd))
        return
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
