"""Pooling models: how a prompt's hidden states become one embedding or one set of class
probabilities, decided once from the engine arguments (vLLM's ``runner``, ``convert`` and
older ``task``), the checkpoint's architecture and its sentence-transformers files.

- runner "auto" picks pooling for a folder with a sentence-transformers pooling module
  (``modules.json``), an architecture named ``*ForSequenceClassification`` (classify) or a
  bare ``*Model`` (embed); generation otherwise.
- pooling_type: LAST (the prompt's last token, the default of decoders), MEAN (all prompt
  tokens) or CLS (the first token, the default of encoders); ``1_Pooling/config.json`` sets it,
  and its ``Normalize`` module whether embeddings are L2-normalised (without
  sentence-transformers files they are, as in vLLM).
- classify: the head's logits go through softmax (sigmoid for one label or a multi-label
  problem, nothing for regression) unless a request turns the activation off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

RUNNERS = ("auto", "generate", "pooling")
CONVERTS = ("auto", "none", "embed", "classify")
TASKS = ("auto", "generate", "embed", "embedding", "classify", "score")
POOLING_TYPES = ("LAST", "MEAN", "CLS")
POOLING_TASKS = ("embed", "classify")
_POOLER_KEYS = ("pooling_type", "normalize", "use_activation", "softmax", "activation")
_ST_MODES = {
    "pooling_mode_lasttoken": "LAST",
    "pooling_mode_mean_tokens": "MEAN",
    "pooling_mode_cls_token": "CLS",
}
_ST_UNSUPPORTED_MODES = (
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
)
_ST_MODE_NAMES = {"lasttoken": "LAST", "mean": "MEAN", "cls": "CLS"}
_ST_MODULE = "sentence_transformers.models."


@dataclass(frozen=True, slots=True)
class PoolerConfig:
    """What a pooling model returns per prompt.

    task "embed": the pooled hidden state, optionally truncated to a request's ``dimensions``
    and L2-normalised when ``normalize`` (a request may override it). task "classify": the
    score head's ``num_labels`` logits through ``activation`` ("softmax", "sigmoid" or
    "none") when ``use_activation``. ``encoder``: the model runs with its transformers code on
    padded batches (bidirectional encoders such as BERT and XLM-RoBERTa, which the engine's
    causal paged attention cannot run).
    """

    task: str
    pooling_type: str
    normalize: bool = True
    use_activation: bool = True
    activation: str = "softmax"
    num_labels: int = 0
    matryoshka_dimensions: tuple[int, ...] | None = None
    encoder: bool = False

    @property
    def reads_every_token(self) -> bool:
        """Whether pooling reads the hidden state of tokens other than the prompt's last (so
        no prompt token may come from the prefix cache)."""
        return self.pooling_type != "LAST"


def check_pooling_args(runner: str, convert: str, task: str) -> None:
    """A ValueError naming the argument when runner, convert and task are unknown or
    contradict each other."""
    for name, value, accepted in (
        ("runner", runner, RUNNERS),
        ("convert", convert, CONVERTS),
        ("task", task, TASKS),
    ):
        if value not in accepted:
            raise ValueError(
                f"{name}={value!r} is not supported; accepted: {', '.join(map(repr, accepted))}"
            )
    if runner == "generate" and convert not in ("auto", "none"):
        raise ValueError(f"convert={convert!r} needs runner='pooling' (or 'auto'), not 'generate'")
    if task == "auto":
        return
    task_pools = task != "generate"
    if runner != "auto" and (runner == "pooling") != task_pools:
        raise ValueError(f"task={task!r} contradicts runner={runner!r}; give one of them")
    pooled_as = "embed" if task == "embedding" else task
    if convert in POOLING_TASKS and (not task_pools or pooled_as not in (convert, "score")):
        raise ValueError(f"task={task!r} contradicts convert={convert!r}; give one of them")


def read_sentence_transformers_pooling(folder: str) -> dict[str, Any] | None:
    """``{"pooling_type", "normalize"}`` from a sentence-transformers folder's ``modules.json``
    and its pooling module's config; None when the folder has no pooling module. Modules that
    change the embedding in ways llmbatch does not run (dense projections, other pooling
    modes) are a ValueError naming them."""
    path = Path(folder) / "modules.json"
    if not path.is_file():
        return None
    modules = json.loads(path.read_text())
    if not isinstance(modules, list):
        raise ValueError(f"{path} must hold a list of modules")
    kinds = {str(m.get("type", "")).removeprefix(_ST_MODULE): m for m in modules}
    pooling = kinds.get("Pooling")
    if pooling is None:
        return None
    unsupported = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
    if unsupported:
        raise ValueError(
            f"{folder}: sentence-transformers module(s) {unsupported} are not supported "
            "(only Transformer, Pooling and Normalize run)"
        )
    config_path = Path(folder) / str(pooling.get("path", "1_Pooling")) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return {
        "pooling_type": _st_pooling_type(config, config_path),
        "normalize": "Normalize" in kinds,
    }


def _st_pooling_type(config: dict[str, Any], path: Path) -> str:
    if config.get("include_prompt") is False:
        raise ValueError(
            f"{path}: include_prompt=false (pooling without the prompt) is not supported"
        )
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        if mode not in _ST_MODE_NAMES:
            raise ValueError(
                f"{path}: pooling_mode {mode!r} is not supported; accepted: "
                f"{', '.join(_ST_MODE_NAMES)}"
            )
        return _ST_MODE_NAMES[mode]
    unsupported = [key for key in _ST_UNSUPPORTED_MODES if config.get(key)]
    chosen = [kind for key, kind in _ST_MODES.items() if config.get(key)]
    if unsupported or len(chosen) > 1:
        raise ValueError(
            f"{path}: pooling {unsupported + chosen} is not supported; one of "
            f"{', '.join(_ST_MODES)} runs"
        )
    return chosen[0] if chosen else "CLS"


def wants_pooling(
    runner: str, convert: str, task: str, architectures: list[str], st_pooling: bool
) -> bool:
    """Whether the engine runs the model as a pooling model (a ``convert`` to a pooling task
    implies the pooling runner)."""
    if runner != "auto":
        return runner == "pooling"
    if convert in POOLING_TASKS:
        return True
    if task != "auto":
        return task != "generate"
    if st_pooling:
        return True
    return any(
        name.endswith("ForSequenceClassification") or _is_base_model(name) for name in architectures
    )


def pooling_task(convert: str, task: str, architectures: list[str]) -> str:
    """ "embed" or "classify": what a pooling engine returns for this checkpoint."""
    if convert in POOLING_TASKS:
        return convert
    if task in ("embed", "embedding"):
        return "embed"
    if task == "classify":
        return "classify"
    classifier = any(name.endswith("ForSequenceClassification") for name in architectures)
    return "classify" if classifier else "embed"


def _is_base_model(architecture: str) -> bool:
    return architecture.endswith(("Model", "ForTextEncoding")) and not architecture.endswith(
        "PreTrainedModel"
    )


def build_pooler_config(
    task: str,
    hf_config: PretrainedConfig,
    st_pooling: dict[str, Any] | None,
    overrides: dict[str, Any] | None,
    encoder: bool,
) -> PoolerConfig:
    """The pooler of a pooling engine: the checkpoint's pooling under the user's
    ``pooler_config`` overrides."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(_POOLER_KEYS))
    if unknown:
        raise ValueError(
            f"pooler_config keys {unknown} are not supported; accepted: {', '.join(_POOLER_KEYS)}"
        )
    pooling_type = overrides.get("pooling_type") or (st_pooling or {}).get("pooling_type")
    pooling_type = str(pooling_type or ("CLS" if encoder else "LAST")).upper()
    if pooling_type not in POOLING_TYPES:
        raise ValueError(
            f"pooler_config pooling_type={pooling_type!r} is not supported; accepted: "
            f"{', '.join(POOLING_TYPES)}"
        )
    normalize = overrides.get("normalize")
    if normalize is None:
        normalize = True if st_pooling is None else st_pooling["normalize"]
    use_activation = _first_given(overrides, ("use_activation", "softmax", "activation"), True)
    text = hf_config.get_text_config()
    num_labels = int(getattr(text, "num_labels", 0) or 0) if task == "classify" else 0
    if task == "classify" and num_labels < 1:
        raise ValueError("a classifier needs num_labels >= 1 in its config.json")
    dims = getattr(text, "matryoshka_dimensions", None)
    return PoolerConfig(
        task=task,
        pooling_type=pooling_type,
        normalize=bool(normalize),
        use_activation=bool(use_activation),
        activation=_classifier_activation(text, num_labels),
        num_labels=num_labels,
        matryoshka_dimensions=tuple(int(d) for d in dims) if dims else None,
        encoder=encoder,
    )


def _first_given(values: dict[str, Any], names: tuple[str, ...], default: Any) -> Any:
    for name in names:
        if values.get(name) is not None:
            return values[name]
    return default


def _classifier_activation(config: PretrainedConfig, num_labels: int) -> str:
    """As transformers' losses read ``problem_type``: regression has none, multi-label
    classification a sigmoid per label, single-label softmax (a sigmoid for one label)."""
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


def finish_embeddings(
    pooled: torch.Tensor, dimensions: list[int | None], normalize: list[bool]
) -> torch.Tensor:
    """Rows L2-normalised over their first ``dimensions`` values (Matryoshka truncation; None:
    all of them) where ``normalize`` asks, in float32 and on the device in one pass; the caller
    keeps each row's first ``dimensions`` values."""
    pooled = pooled.float()
    width = pooled.shape[-1]
    if not any(normalize):
        return pooled
    last = torch.tensor(
        [width - 1 if d is None else d - 1 for d in dimensions], device=pooled.device
    )
    sums = pooled.square().cumsum(dim=-1).gather(1, last.unsqueeze(1))
    # as F.normalize: the norm is clamped so that a zero vector stays zero
    scale = sums.sqrt().clamp_min(1e-12).reciprocal()
    keep = torch.tensor(normalize, device=pooled.device).unsqueeze(-1)
    return torch.where(keep, pooled * scale, pooled)


def finish_logits(
    logits: torch.Tensor, activation: str, use_activation: list[bool]
) -> torch.Tensor:
    """Class probabilities (or raw logits for rows that turned the activation off), float32."""
    logits = logits.float()
    if activation == "softmax":
        activated = torch.softmax(logits, dim=-1)
    elif activation == "sigmoid":
        activated = torch.sigmoid(logits)
    else:
        activated = logits
    keep = torch.tensor(use_activation, device=logits.device).unsqueeze(-1)
    return torch.where(keep, activated, logits)
