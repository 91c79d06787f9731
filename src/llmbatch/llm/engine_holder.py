"""The engine a processor's stages share: loaded on first use, lent to one run at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llmbatch.llm.summary import RunStats

if TYPE_CHECKING:
    from llmbatch.engine.args import EngineArgs
    from llmbatch.runtime.client import EngineClient
    from llmbatch.runtime.recovery import RecoveryPolicy


class EngineHolder:
    """Starts the engine (its replicas, with ``concurrency`` > 1) on first use and lends it to
    one run at a time; closes it when a run ends unless `keep_loaded` is set (``on_close``
    sees it last, before it closes)."""

    def __init__(
        self,
        engine_args: EngineArgs,
        concurrency: int | tuple[int, int],
        has_image: bool,
        current_stats: Callable[[], RunStats],
        recovery: RecoveryPolicy | None = None,
        on_close: Callable[[EngineClient], None] | None = None,
    ) -> None:
        self._engine_args = engine_args
        self._recovery = recovery
        self._on_close = on_close
        self._concurrency = concurrency
        self._has_image = has_image
        self._current_stats = current_stats
        self._engine: EngineClient | None = None
        self._processor: Any = None
        self._other_tokenizers: dict[tuple[str, bool], Any] = {}
        self._lock = threading.Lock()
        self._processor_lock = threading.Lock()
        self._supersede_current: Callable[[], None] | None = None
        self.keep_loaded = False

    def load(self) -> EngineClient:
        """The engine; starting it counts as the current run's start-up time. With images the
        model's processor is loaded first, so a model without images fails before its engine
        starts."""
        if self._has_image:
            self.processor()
        with self._lock:
            if self._engine is None:
                from llmbatch.runtime.start import start_engine

                stats = self._current_stats()  # the run's clock starts before the load
                started = time.perf_counter()
                self._engine = start_engine(
                    self._engine_args, self._concurrency, self._recovery or _default_recovery()
                )
                stats.engine_startup_s += time.perf_counter() - started
            return self._engine

    @property
    def loaded(self) -> EngineClient | None:
        """The engine if it is loaded (never loads it)."""
        return self._engine

    def tokenizer(self) -> Any:
        return self.load().tokenizer

    def processor(self) -> Any:
        """The model's processor (image processor, tokenizer and chat template); a ValueError
        when the model takes no images."""
        with self._processor_lock:
            if self._processor is None:
                from llmbatch.models.processor import load_image_processor
                from llmbatch.models.source import resolve_model_folder

                args = self._engine_args
                folder = resolve_model_folder(args.model, args.revision, with_weights=False)
                try:
                    self._processor = load_image_processor(folder, args.trust_remote_code)
                except ValueError as exc:
                    raise ValueError(
                        f"has_image=True, but {exc}, or set has_image=False for text-only rows"
                    ) from None
            return self._processor

    def tokenizer_of(self, source: str, with_images: bool = False) -> Any:
        """The tokenizer (with images: the processor) of another model than the engine's, for
        a stage whose config names its own ``model_source``; loaded once."""
        with self._processor_lock:
            key = (source, with_images)
            if key not in self._other_tokenizers:
                from transformers import AutoTokenizer

                from llmbatch.models.processor import load_processor
                from llmbatch.models.source import resolve_model_folder

                args = self._engine_args
                folder = resolve_model_folder(source, with_weights=False)
                self._other_tokenizers[key] = (
                    load_processor(folder, args.trust_remote_code)
                    if with_images
                    else AutoTokenizer.from_pretrained(
                        folder, trust_remote_code=args.trust_remote_code
                    )
                )
            return self._other_tokenizers[key]

    def acquire(self, supersede: Callable[[], None]) -> EngineClient:
        """The engine for a new run; a run still holding it is told to stop (`supersede`)."""
        engine = self.load()
        if self._supersede_current is not None:
            self._supersede_current()
        self._supersede_current = supersede
        return engine

    def release(self, supersede: Callable[[], None]) -> None:
        """A run is over: it no longer needs stopping when the next one starts, and the engine
        is closed unless it is kept loaded."""
        if self._supersede_current == supersede:
            self._supersede_current = None
            if not self.keep_loaded:
                self.close()

    def close(self) -> None:
        with self._lock:
            if self._supersede_current is not None:
                self._supersede_current()
                self._supersede_current = None
            if self._engine is not None:
                if self._on_close is not None:
                    self._on_close(self._engine)
                self._engine.close()
                self._engine = None


def _default_recovery() -> RecoveryPolicy:
    from llmbatch.runtime.recovery import RecoveryPolicy

    return RecoveryPolicy()


def recovery_policy(config: Any) -> RecoveryPolicy:
    """A processor config's ``max_engine_restarts`` and ``engine_stall_timeout_s``."""
    from llmbatch.runtime.recovery import RecoveryPolicy

    default = RecoveryPolicy()
    return RecoveryPolicy(
        getattr(config, "max_engine_restarts", default.max_engine_restarts),
        float(getattr(config, "engine_stall_timeout_s", default.engine_stall_timeout_s)),
    )
