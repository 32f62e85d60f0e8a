"""Engine choice on every platform, from facts passed in (no patching of the real machine)."""

from services.worker.detect import Facts, choose

LINUX = Facts("Linux", "x86_64", cuda=False, rocm=False, has_mlx=False, has_llama_cpp=True)


def test_plain_cpu_box_runs_llama_cpp():
    c = choose("auto", "auto", LINUX)
    assert c.engines == ("llama_cpp",) and c.device == "cpu"


def test_apple_silicon_prefers_mlx_then_falls_back():
    mac = Facts("Darwin", "arm64", cuda=False, rocm=False, has_mlx=True, has_llama_cpp=True)
    c = choose("auto", "auto", mac)
    assert c.engines == ("mlx", "llama_cpp") and c.device == "metal"


def test_mac_without_mlx_says_why():
    mac = Facts("Darwin", "arm64", cuda=False, rocm=False, has_mlx=False, has_llama_cpp=True)
    c = choose("auto", "auto", mac)
    assert c.engines == ("llama_cpp",) and any("mlx-lm is not installed" in r for r in c.reasons)


def test_gpu_with_vllm_endpoint_prefers_vllm():
    gpu = Facts("Linux", "x86_64", cuda=True, rocm=False, has_mlx=False, has_llama_cpp=True, vllm_url="http://v:8000")
    c = choose("auto", "auto", gpu)
    assert c.engines == ("vllm", "llama_cpp") and c.device == "cuda"


def test_gpu_without_vllm_endpoint_skips_it():
    gpu = Facts("Linux", "x86_64", cuda=False, rocm=True, has_mlx=False, has_llama_cpp=True)
    c = choose("auto", "auto", gpu)
    assert c.engines == ("llama_cpp",) and c.device == "rocm"


def test_llama_server_endpoint_is_preferred_on_cpu():
    f = Facts(
        "Linux",
        "x86_64",
        cuda=False,
        rocm=False,
        has_mlx=False,
        has_llama_cpp=True,
        llama_server_url="http://127.0.0.1:8080",
    )
    assert choose("auto", "cpu", f).engines == ("llama_server", "llama_cpp")


def test_explicit_engine_is_obeyed():
    assert choose("mlx", "auto", LINUX).engines == ("mlx",)


def test_nothing_available_explains():
    bare = Facts("Linux", "x86_64", cuda=False, rocm=False, has_mlx=False, has_llama_cpp=False)
    c = choose("auto", "auto", bare)
    assert c.engines == () and "no in-process engine" in c.reasons[-1]
