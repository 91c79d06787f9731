"""A processor over a Ray Dataset, written resumably with llmbatch's writers
(``llmbatch.data.write_parquet(processor(ray_dataset), path)``).

The write numbers the source's rows: with Ray's ``preserve_order`` the source's blocks come in
the same order on every run, each block's rows are hashed (the job's fingerprint, so a changed
input is another job) and counted, and the rows not yet committed are sliced out of their
blocks, tagged with their numbers, and run through the processor's actors. The driver commits
what comes back, in any order, as shards of consecutive rows with the manifest of a local
write: a killed job, run again, processes only the missing rows.

The source's blocks stay in Ray's object store (spilled to disk beyond it) for the whole write.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa

from llmbatch.data.identity import digest, tables_identity
from llmbatch.data.numbered_writes import ROW_NUMBER, write_numbered
from llmbatch.data.outputs import RESUMABLE_WRITER
from llmbatch.data.resume import WriteReport
from llmbatch.integrations.ray import ray_data

RayDataset = Any


def resumable_ray(
    process: Callable[[RayDataset], RayDataset],
    source: RayDataset,
    identity: Callable[[], str],
) -> RayDataset:
    """``process(source)``, which llmbatch's writers write resumably."""
    output = process(source)
    job = _RayJob(process, source, identity)
    setattr(output, RESUMABLE_WRITER, job.write)
    return output


class _RayJob:
    def __init__(
        self, process: Callable[[RayDataset], RayDataset], source: RayDataset, identity: Any
    ) -> None:
        self._process = process
        self._source = source
        self._identity = identity

    def write(
        self,
        path: Any,
        file_format: str,
        *,
        filesystem: Any = None,
        overwrite: bool = False,
        retry_failed: bool = False,
        max_rows_per_file: int | None = None,
        **options: Any,
    ) -> WriteReport:
        import ray

        blocks = _ordered_blocks(self._source)
        described = ray.get([_task(_describe_block).remote(ref) for ref in blocks])
        sizes = [rows for rows, _ in described]
        fingerprint = digest(
            digest([sha for _, sha in described]), self._identity(), file_format, repr(options)
        )

        def process_rows(runs: list[tuple[int, int]]) -> Iterable[pa.Table]:
            numbered = _numbered_blocks(blocks, sizes, runs)
            if not numbered:
                return
            dataset = ray_data().from_arrow_refs(numbered)
            yield from self._process(dataset).iter_batches(batch_size=None, batch_format="pyarrow")

        return write_numbered(
            sum(sizes),
            fingerprint,
            process_rows,
            path,
            file_format,
            filesystem=filesystem,
            overwrite=overwrite,
            retry_failed=retry_failed,
            max_rows_per_file=max_rows_per_file,
            options=options,
        )


def _ordered_blocks(source: RayDataset) -> list[Any]:
    """The source's block references, in the same order on every run."""
    context = ray_data().DataContext.get_current()
    kept = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    try:
        return [ref for bundle in source.iter_internal_ref_bundles() for ref in bundle.block_refs]
    finally:
        context.execution_options.preserve_order = kept


def _numbered_blocks(blocks: list[Any], sizes: list[int], runs: list[tuple[int, int]]) -> list[Any]:
    """References to the rows of ``runs``, sliced out of their blocks with their numbers."""
    refs = []
    offset = 0
    for ref, size in zip(blocks, sizes):
        local = [
            (max(start, offset) - offset, min(stop, offset + size) - offset)
            for start, stop in runs
            if start < offset + size and stop > offset
        ]
        if local:
            refs.append(_task(_slice_block).remote(ref, offset, local))
        offset += size
    return refs


def _as_arrow(block: Any) -> pa.Table:
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(block).to_arrow()


@functools.cache
def _task(fn: Callable[..., Any]) -> Any:
    """``fn`` as a Ray task taking no CPU of its own (Ray is imported only on the Ray path)."""
    import ray

    return ray.remote(num_cpus=0)(fn)


def _describe_block(block: Any) -> tuple[int, str]:
    table = _as_arrow(block)
    return table.num_rows, tables_identity([table])


def _slice_block(block: Any, offset: int, runs: list[tuple[int, int]]) -> pa.Table:
    table = _as_arrow(block)
    pieces = [
        table.slice(start, stop - start).append_column(
            ROW_NUMBER, pa.array(range(offset + start, offset + stop), pa.int64())
        )
        for start, stop in runs
    ]
    return pa.concat_tables(pieces)
