"""Dataset: Ray Data's Dataset API over a lazy stream of Arrow blocks, run in this process.

The operations live in modules of one concept each, mixed into ``Dataset``: per-row and
per-batch functions (``map_ops``), columns (``column_ops``), joining datasets (``combine``),
sorting (``sort``), grouping and aggregates (``grouped``), random sampling (``sampling``) and
splitting (``splits``); consuming a dataset is ``outputs``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from llmbatch.data import operators, spill
from llmbatch.data.blocks import Stream, balanced_sizes, conform, rebatch, split_into
from llmbatch.data.blocks import unify_schemas as unify
from llmbatch.data.checkpoint import ResumableJob, WriteWatch, unwatched
from llmbatch.data.column_ops import ColumnOperations
from llmbatch.data.combine import CombineOperations
from llmbatch.data.grouped import AggregateOperations
from llmbatch.data.identity import digest, tables_identity, value_identity
from llmbatch.data.map_ops import RowOperations
from llmbatch.data.outputs import DatasetOutputs, check_count
from llmbatch.data.plan import PlanInfo, StageStats, describe_stats
from llmbatch.data.sampling import SampleOperations
from llmbatch.data.sort import SortOperations
from llmbatch.data.splits import SplitOperations

StreamTransform = Callable[[Iterator[pa.Table]], Iterable[pa.Table]]


class Dataset(
    DatasetOutputs,
    RowOperations,
    ColumnOperations,
    CombineOperations,
    SortOperations,
    AggregateOperations,
    SampleOperations,
    SplitOperations,
):
    """Rows in input order, held as a stream of blocks (``pyarrow.Table``), built lazily.

    Operations add stages to a plan and return a new Dataset; nothing is read until the dataset
    is consumed (iterated, taken, counted, written or materialized), and every consumption runs
    the plan again from its source unless the dataset was materialized. Blocks flow one at a
    time, so memory holds a few blocks, never the whole dataset; the operations that need every
    row at once (sort, shuffle, groupby, split) keep them in temporary files beyond a few
    hundred MB (see ``llmbatch.data.spill``).

    Ray's scheduling keywords (``compute``, ``concurrency``, ``num_cpus``, ``num_gpus``,
    ``memory``, ...) are accepted by the map-like methods so that Ray code runs unchanged; they
    have no effect, since everything runs in this process.
    """

    def __init__(
        self,
        open_stream: Callable[[], Iterator[pa.Table]],
        *,
        name: str,
        info: PlanInfo | None = None,
        parents: Sequence[Dataset] = (),
        identity: Callable[[], str] | None = None,
        input_files: Sequence[str] = (),
    ) -> None:
        self._open_stream = open_stream
        self._info = info or PlanInfo()
        self._parents = tuple(parents)
        self._stats = StageStats(name)
        self._identity = identity or (lambda: name)
        self._input_files = list(input_files)
        self._resumable: ResumableJob | None = None

    def fingerprint(self) -> str:
        """A hash of the plan and its source that a later process computes alike: file names,
        sizes and modification times or in-memory content, each stage with its parameters, and
        the code of the functions it runs. Resumable writes use it to recognise their job."""
        parts = []
        node: Dataset | None = self
        while node is not None:
            parts.append(node._identity())
            if len(node._parents) > 1:
                parts.append([parent.fingerprint() for parent in node._parents])
            node = node._parents[0] if len(node._parents) == 1 else None
        return digest(*parts[::-1])

    def _blocks(self) -> Stream:
        return self._stats.track(iter(self._open_stream()))

    def _chain(
        self, name: str, apply: Callable[[Stream], Stream], info: PlanInfo, code: Any = None
    ) -> Dataset:
        def identity() -> str:
            return name if code is None else f"{name}:{digest(value_identity(code))}"

        return Dataset(
            lambda: apply(self._blocks()), name=name, info=info, parents=[self], identity=identity
        )

    def _combine(
        self,
        name: str,
        open_stream: Callable[[], Stream],
        parents: Sequence[Dataset],
        info: PlanInfo,
    ) -> Dataset:
        """A dataset made from several (the first is ``self``), e.g. by union or zip."""
        return Dataset(open_stream, name=name, info=info, parents=parents)

    def _materialized(self, blocks: Sequence[pa.Table]) -> MaterializedDataset:
        return MaterializedDataset(blocks, upstream_stats=self.stats())

    # Stages

    def transform(self, fn: StreamTransform, name: str, *, preserves_rows: bool = False) -> Dataset:
        """Adds a stage that sees the whole stream: the way processing stages plug in.

        ``fn`` receives an iterator over the upstream blocks (``pyarrow.Table``, in input order)
        and yields output tables in order. It may keep state, buffer rows across blocks, cut them
        into batches of its own size (``llmbatch.data.blocks.rebatch``) and change the columns.
        It runs once per consumption and pulls upstream only as fast as it asks for blocks. Each
        yielded table is one output block, and writers write one file per block.

        ``preserves_rows=True`` promises one output row per input row, in order: the output is
        then cut back into the input's blocks (so ``repartition`` still sets the file count after
        this stage), the row count stays known, and a broken promise raises ValueError.
        """
        if not callable(fn):
            raise TypeError(f"transform {name!r}: fn must be callable, got {type(fn).__name__}")
        if preserves_rows:
            info = PlanInfo(self._info.num_rows, self._info.max_rows, self._info.count_rows)
            return self._chain(
                name,
                lambda stream: operators.transform_preserving_rows(stream, fn, name),
                info,
                fn,
            )
        return self._chain(
            name, lambda stream: operators.transform(stream, fn, name), PlanInfo(), fn
        )

    def limit(self, limit: int) -> Dataset:
        """The first ``limit`` rows; reading upstream stops as soon as they have passed."""
        limit = check_count("limit", limit, minimum=0)
        return self._chain(
            f"limit({limit})",
            lambda stream: operators.limit(stream, limit),
            self._info.limited(limit),
        )

    def repartition(
        self,
        num_blocks: int | None = None,
        target_num_rows_per_block: int | None = None,
        *,
        shuffle: bool = False,
    ) -> Dataset:
        """Re-cuts the stream into blocks, which also sets how many files the writers produce.

        ``num_blocks=k`` gives exactly k blocks of n/k rows (sizes differ by at most one), where
        n is the row count known before running: from an in-memory or materialized source, a
        ``limit``, or by counting the source's rows in a first pass when only row-preserving
        stages (map, select, ...) follow it. When a ``limit`` comes after a stage that drops rows
        (filter), n is that limit and the last blocks may be short or empty. When n cannot be
        known without running (after flat_map, map_batches or a transform), blocks keep their
        sizes and a warning says so. ``target_num_rows_per_block=r`` needs no count: blocks of
        exactly r rows, the last one smaller. Rows always keep their order (``shuffle=True`` is
        not supported: use ``random_shuffle``).
        """
        if shuffle:
            raise ValueError(
                "repartition(shuffle=True) is not supported: rows keep input order; use "
                "random_shuffle() to shuffle them"
            )
        if (num_blocks is None) == (target_num_rows_per_block is None):
            raise ValueError(
                "repartition needs exactly one of num_blocks, target_num_rows_per_block"
            )
        info = self._info
        if target_num_rows_per_block is not None:
            rows = check_count("target_num_rows_per_block", target_num_rows_per_block, minimum=1)
            blocks = None if info.num_rows is None else math.ceil(info.num_rows / rows)
            return self._chain(
                f"repartition(target_num_rows_per_block={rows})",
                lambda stream: rebatch(stream, rows),
                PlanInfo(info.num_rows, info.max_rows, info.count_rows, blocks, info.schema),
            )
        num_blocks = check_count("num_blocks", num_blocks, minimum=1)
        name = f"repartition({num_blocks})"
        if info.row_bound is None and info.count_rows is None:
            warnings.warn(
                f"{name}: the number of rows is unknown until the dataset runs (a flat_map, "
                f"map_batches or transform comes before it), so blocks keep their sizes. Call "
                f"limit() or materialize() first, or use target_num_rows_per_block.",
                stacklevel=2,
            )
            return self._chain(name, lambda stream: stream, info)

        def split(stream: Stream) -> Stream:
            rows = info.exact_rows()
            rows = info.max_rows if rows is None else rows
            yield from split_into(stream, balanced_sizes(rows, num_blocks))

        laid_out = PlanInfo(info.num_rows, info.max_rows, info.count_rows, num_blocks, info.schema)
        return self._chain(name, split, laid_out)

    def materialize(self) -> MaterializedDataset:
        """Runs the plan once and keeps every block (in memory, or beyond a few hundred MB in
        memory-mapped temporary files: see ``spill``) for any number of later uses."""
        blocks = spill.hold(self._blocks())
        return MaterializedDataset(blocks, upstream_stats=self.stats())

    # Description

    def input_files(self) -> list[str]:
        """The files the dataset reads, in order (none for in-memory sources)."""
        files: list[str] = list(self._input_files)
        for parent in self._parents:
            files.extend(file for file in parent.input_files() if file not in files)
        return files

    def stats(self) -> str:
        """Blocks, rows and seconds of each stage during its latest run, sources first."""
        stages = []
        node: Dataset | None = self
        upstream = ""
        while node is not None:
            stages.append(node._stats)
            if len(node._parents) > 1:
                upstream = "\n".join(parent.stats() for parent in node._parents)
            node = node._parents[0] if len(node._parents) == 1 else None
        own = describe_stats(stages[::-1])
        return f"{upstream}\n{own}" if upstream else own

    def __repr__(self) -> str:
        rows = "?" if self._info.num_rows is None else self._info.num_rows
        return f"{type(self).__name__}(num_rows={rows}, schema={_format_schema(self._info.schema)})"


class MaterializedDataset(Dataset):
    """A dataset whose blocks are in memory (or memory-mapped temporary files): consuming it
    again never re-runs what made it."""

    def __init__(self, blocks: Sequence[pa.Table], *, upstream_stats: str = "") -> None:
        schema = unify([block.schema for block in blocks]) if blocks else None
        self._tables = [conform(block, schema) for block in blocks]
        self._upstream_stats = upstream_stats
        info = PlanInfo(
            num_rows=sum(block.num_rows for block in self._tables),
            num_blocks=len(self._tables),
            schema=schema,
        )
        super().__init__(
            lambda: iter(self._tables),
            name="materialized",
            info=info,
            identity=lambda: f"materialized:{tables_identity(self._tables)}",
        )

    def materialize(self) -> MaterializedDataset:
        return self

    def size_bytes(self) -> int:
        return sum(table.nbytes for table in self._tables)

    def stats(self) -> str:
        own = super().stats()
        return f"{self._upstream_stats}\n{own}" if self._upstream_stats else own

    def __repr__(self) -> str:
        info = self._info
        return (
            f"MaterializedDataset(num_blocks={info.num_blocks}, num_rows={info.num_rows}, "
            f"schema={_format_schema(info.schema)})"
        )


def resumable(
    output: Dataset,
    source: Dataset,
    process: Callable[[Stream], Stream],
    identity: Callable[[], str],
    prepare: Callable[[], None],
    watch: WriteWatch | None = None,
) -> Dataset:
    """Marks ``output`` (``process`` applied to ``source``'s stream) as resumable when written:
    a rerun into the same folder streams only the rows of ``source`` not yet committed through
    ``process`` (see `llmbatch.data.checkpoint.ResumableJob`)."""
    output._resumable = ResumableJob(
        source._blocks, process, source.fingerprint, identity, prepare, watch or unwatched
    )
    return output


def resumable_job(dataset: Dataset) -> ResumableJob | None:
    """The job behind ``dataset`` when writing it can resume, else None."""
    return dataset._resumable


def _format_schema(schema: pa.Schema | None) -> str:
    if schema is None:
        return "Unknown schema"
    return "{" + ", ".join(f"{field.name}: {field.type}" for field in schema) + "}"
