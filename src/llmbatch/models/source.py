"""Turning what a user names as the model (folder, .gguf file or Hub id) into a local folder."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from llmbatch.models.gguf import converted_gguf_folder

_CONFIG_AND_TOKENIZER_FILES = ["*.json", "tokenizer*", "*.model", "*.tiktoken", "*.jinja", "*.txt"]


def _is_hub_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def download_from_hub(repo_id: str, revision: str | None, with_weights: bool) -> str:
    """Config, tokenizer and (with_weights) safetensors files of a Hub model, in the Hub cache."""
    patterns = _CONFIG_AND_TOKENIZER_FILES + (["*.safetensors"] if with_weights else [])
    try:
        return snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=patterns,
            # Mistral repositories also ship the weights a second time in their own layout.
            ignore_patterns=["consolidated*"],
        )
    except Exception as err:
        raise OSError(
            f"model {repo_id!r} is not a local path, and downloading it from the Hugging Face Hub "
            f"failed ({type(err).__name__}: {err}). If the model is on disk, pass the path of its "
            "folder (config.json, tokenizer files, *.safetensors) or of its .gguf file instead."
        ) from err


def resolve_model_folder(model: str, revision: str | None = None, with_weights: bool = True) -> str:
    """A local folder holding config.json (and tokenizer and weight files) for ``model``."""
    path = Path(model).expanduser()
    if path.exists() and revision is not None:
        raise ValueError(f"revision={revision!r} applies to Hub ids only, but {model!r} is local")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{model} has no config.json: pass a Hugging Face model folder or a .gguf file"
            )
        return str(path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(
                f"{model} is a file but not a .gguf file: pass a .gguf file or a model folder"
            )
        return converted_gguf_folder(path)
    if not _is_hub_id(model):
        raise FileNotFoundError(
            f"model {model!r} does not exist and is not a valid Hugging Face Hub id "
            "('name' or 'organization/name'): pass a model folder, a .gguf file or a Hub id"
        )
    return download_from_hub(model, revision, with_weights)
