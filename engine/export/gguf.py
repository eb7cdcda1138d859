"""A merged model directory written as GGUF by llama.cpp's own converter, and an Ollama Modelfile beside it.

The converter is llama.cpp's `convert_hf_to_gguf.py` with its `conversion/` package and the `gguf-py`
library of the same commit (the script puts that copy first on its path, so script and library always
match). It ships inside the llama-cpp-python source distribution on PyPI, not in any wheel: on first use
the sdist is fetched with pip (`pip download --no-deps --no-binary :all:`, about 76 MB, once) and only the
converter's files (about 2 MB) are kept under the cache (`~/.cache/tunedeck/llama.cpp-VERSION`).
TUNEDECK_LLAMA_CPP_SDIST names an sdist already on disk (offline machines). f16 and q8_0 are the
converter's own --outtype; q4_k_m is the f16 file quantised by llama.cpp itself: its `llama-quantize` binary
on PATH, else `llama_model_quantize` of its Python bindings (`pip install llama-cpp-python`, which compiles
llama.cpp), both the same C++ code.
Heavy only in the subprocesses it starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from engine.core.files import ensure_private_dir
from engine.core.paths import cache_dir

LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python sdist whose vendored llama.cpp converts
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
QUANTS = ("f16", "q8_0", "q4_k_m")
QUANTIZE_BINARIES = ("llama-quantize", "quantize")


def quantize_binary() -> str | None:
    return next((found for name in QUANTIZE_BINARIES if (found := shutil.which(name))), None)


def can_quantize() -> bool:
    import importlib.util

    return quantize_binary() is not None or importlib.util.find_spec("llama_cpp") is not None


def check_quant(quant: str) -> None:
    """Refuse, before any work, what cannot be written here."""
    if quant not in QUANTS:
        raise ValueError(f"--quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    if quant == "q4_k_m" and not can_quantize():
        raise ValueError("--quant q4_k_m needs llama.cpp: its llama-quantize on PATH or its Python bindings "
                         "(pip install llama-cpp-python); f16 and q8_0 need nothing more")


def converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py, fetched once into the cache."""
    home = cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    script = home / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    ensure_private_dir(home.parent)
    with tempfile.TemporaryDirectory(dir=home.parent) as tmp:
        sdist = os.environ.get("TUNEDECK_LLAMA_CPP_SDIST") or _download_sdist(Path(tmp))
        partial = Path(tmp) / "llama.cpp"
        with tarfile.open(sdist) as tar:
            prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].startswith(CONVERTER_FILES) and (m.isfile() or m.isdir())]
            if not any(m.name.endswith("/convert_hf_to_gguf.py") for m in members):
                raise ValueError(f"{sdist} holds no llama.cpp converter: expected llama-cpp-python "
                                 f"{LLAMA_CPP_PYTHON}'s sdist")
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(partial, members=members, filter="data")
        os.replace(partial, home)
    return script


def _download_sdist(into: Path) -> Path:
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                             "--dest", str(into), f"llama-cpp-python=={LLAMA_CPP_PYTHON}"],
                            capture_output=True, text=True)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if result.returncode != 0 or not found:
        raise ValueError(f"could not fetch llama.cpp's converter (pip download llama-cpp-python=={LLAMA_CPP_PYTHON} "
                         f"failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}); download that sdist "
                         "elsewhere and set TUNEDECK_LLAMA_CPP_SDIST to its path")
    return found[0]


def write_gguf(model_dir: Path, out_file: Path, quant: str) -> Path:
    """`model_dir` (a merged Hugging Face model with its tokenizer) as one GGUF file; the tokenizer, its
    special tokens and the chat template go into the file's metadata."""
    check_quant(quant)
    outtype = "f16" if quant == "q4_k_m" else quant
    first = out_file.with_suffix(".f16.gguf") if quant == "q4_k_m" else out_file
    _run([sys.executable, str(converter()), str(model_dir), "--outfile", str(first), "--outtype", outtype],
         "llama.cpp's convert_hf_to_gguf.py")
    if quant == "q4_k_m":
        if quantize_binary():
            _run([quantize_binary(), str(first), str(out_file), "Q4_K_M"], "llama-quantize")
        else:
            _quantize_with_bindings(first, out_file)
        first.unlink()
    os.chmod(out_file, 0o600)
    return out_file


def _quantize_with_bindings(f16: Path, out_file: Path) -> None:
    """Q4_K_M through llama-cpp-python's binding of llama.cpp's quantiser (what llama-quantize calls)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(out_file).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp's llama_model_quantize failed on {f16.name} (see its stderr above)")


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")


CHATML_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def modelfile(gguf_name: str, tokenizer, system: str | None) -> str:
    """An Ollama Modelfile. Ollama reads the chat template from the GGUF and maps it to one it knows;
    a ChatML template (the demo model's) is written out here so it does not depend on that guess.
    Greedy decoding is the default, as tunedeck evaluated the model."""
    template = tokenizer.chat_template or ""
    stops = [t for t in dict.fromkeys([tokenizer.eos_token, "<|im_end|>" if "<|im_start|>" in template else None])
             if t]
    lines = [f"FROM ./{gguf_name}", ""]
    if "<|im_start|>" in template:
        lines += [f'TEMPLATE """{CHATML_TEMPLATE}"""', ""]
    else:
        lines += ["# TEMPLATE: none here; Ollama uses the chat template stored in the GGUF file", ""]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += ["PARAMETER temperature 0", ""]
    return "\n".join(lines)


def run_commands(gguf: Path, name: str) -> str:
    """The commands that run the file with llama.cpp and with Ollama, for the README and the demo."""
    return "\n".join([
        f"llama-cli -m {gguf} -cnv            # llama.cpp: chat in the terminal, with the GGUF's chat template",
        f"llama-server -m {gguf} --port 8080  # llama.cpp: OpenAI-compatible server",
        f"cd {gguf.parent} && ollama create {name} -f Modelfile && ollama run {name}   # Ollama",
    ])
