"""A generated customers table with the columns of the public ``customers-N.csv`` files.

Rows are a function of (seed, row index) only: the same seed gives the same rows whatever the
batch size. Everything is vectorised (numpy + pyarrow.compute), so millions of rows take seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from llmbatch.data.blocks import rebatch

CUSTOMERS_SCHEMA = pa.schema(
    [
        ("Index", pa.int64()),
        ("Customer Id", pa.string()),
        ("First Name", pa.string()),
        ("Last Name", pa.string()),
        ("Company", pa.string()),
        ("City", pa.string()),
        ("Country", pa.string()),
        ("Phone 1", pa.string()),
        ("Phone 2", pa.string()),
        ("Email", pa.string()),
        ("Subscription Date", pa.date32()),
        ("Website", pa.string()),
    ]
)

FIRST_NAMES = pa.array(
    "Ada Alan Amara Anders Aiko Bianca Bruno Camila Chen Dara Diego Elif Emeka Erin Farah Felix "
    "Greta Hana Hugo Ines Isaac Jamal Jana Kai Kofi Lara Leon Lucia Malik Marta Mateo Mei Nadia "
    "Noah Olga Omar Priya Rafael Rosa Sami Sofia Tariq Tomas Uma Vera Wei Yara Yusuf Zoe "
    "Zara".split()
)
LAST_NAMES = pa.array(
    "Abbott Alvarez Bauer Becker Brennan Castillo Chowdhury Costa Dubois Eriksen Fischer Garcia "
    "Haddad Hansen Ibrahim Ito Jensen Kaplan Kim Kowalski Larsen Lopez Mahmoud Moreau Nakamura "
    "Nguyen Novak Okafor Olsen Petrov Quinn Ramos Rossi Sato Schmidt Silva Singh Sokolov Tanaka "
    "Torres Usman Varga Vogel Walsh Weber Xu Yilmaz Zhang Zimmer Ziegler".split()
)
CITIES = pa.array(
    "Accra Amsterdam Auckland Bangalore Barcelona Bogota Boston Cairo Cape-Town Chicago Denver "
    "Dublin Hanoi Helsinki Istanbul Jakarta Kyoto Lagos Lima Lisbon Lyon Manila Melbourne Montreal "
    "Mumbai Nairobi Osaka Oslo Porto Prague Quito Riga Santiago Seoul Tallinn Toronto Tunis "
    "Valencia Vienna Zagreb".replace("-", " ").split()
)
COUNTRIES = pa.array(
    [
        "Argentina", "Australia", "Austria", "Brazil", "Canada", "Chile", "Colombia", "Croatia",
        "Czech Republic", "Denmark", "Egypt", "Estonia", "Finland", "France", "Germany", "Ghana",
        "India", "Indonesia", "Ireland", "Italy", "Japan", "Kenya", "Latvia", "Mexico",
        "Netherlands", "New Zealand", "Nigeria", "Norway", "Peru", "Philippines", "Poland",
        "Portugal", "South Africa", "South Korea", "Spain", "Sweden", "Tunisia", "Turkey",
        "United States of America", "Vietnam",
    ]
)  # fmt: skip
COMPANY_SUFFIXES = pa.array(["Group", "LLC", "Ltd", "Inc", "PLC", "and Sons", "Partners"])
DOMAINS = pa.array(["example.com", "mail.org", "post.net", "inbox.io", "letters.info"])
TOP_LEVEL_DOMAINS = pa.array([".com", ".net", ".org", ".biz", ".info"])

# Rows are generated in chunks of this many, each from its own (seed, chunk) random stream.
_CHUNK_ROWS = 16_384
_ID_BITS = 60  # 15 hex digits
_ID_MULTIPLIER = np.uint64(0x5DEECE66D2F1B3A5 | 1)  # odd, so a bijection modulo 2**60


def generate_customers(
    num_rows: int, seed: int = 0, batch_size: int = 65_536
) -> Iterator[pa.Table]:
    """Yields ``num_rows`` customers in tables of ``batch_size`` rows; ``Customer Id`` is unique."""
    if num_rows < 0 or batch_size < 1 or seed < 0:
        raise ValueError(
            f"need num_rows >= 0, seed >= 0 and batch_size >= 1; "
            f"got {num_rows}, {seed}, {batch_size}"
        )
    chunks = (
        _chunk(seed, start).slice(0, num_rows - start) for start in range(0, num_rows, _CHUNK_ROWS)
    )
    yield from rebatch(chunks, batch_size)


def write_customers_csv(path: str | os.PathLike[str], num_rows: int, seed: int = 0) -> None:
    """Streams ``num_rows`` generated customers into one CSV file, which appears when complete."""
    path = os.fspath(path)
    temporary = f"{path}.tmp"
    with pacsv.CSVWriter(temporary, CUSTOMERS_SCHEMA) as writer:
        for table in generate_customers(num_rows, seed):
            writer.write_table(table)
    os.replace(temporary, path)


def _chunk(seed: int, start: int) -> pa.Table:
    size = _CHUNK_ROWS
    rng = np.random.default_rng([seed, start // _CHUNK_ROWS])
    index = np.arange(start, start + size, dtype=np.int64)
    first = _pick(rng, FIRST_NAMES, size)
    last = _pick(rng, LAST_NAMES, size)
    other_last = _pick(rng, LAST_NAMES, size)
    company = pc.choose(
        pa.array(rng.integers(0, 3, size, dtype=np.int8)),
        _join(last, " ", _pick(rng, COMPANY_SUFFIXES, size)),
        _join(last, "-", other_last),
        _join(last, ", ", other_last, " and ", _pick(rng, LAST_NAMES, size)),
    )
    email = pc.utf8_lower(
        _join(first, ".", last, _digits(rng, size, 2), "@", _pick(rng, DOMAINS, size))
    )
    website = pc.choose(
        pa.array(rng.integers(0, 2, size, dtype=np.int8)),
        _join("http://www.", pc.utf8_lower(other_last), _pick(rng, TOP_LEVEL_DOMAINS, size), "/"),
        _join("https://", pc.utf8_lower(last), _pick(rng, TOP_LEVEL_DOMAINS, size), "/"),
    )
    days = rng.integers(0, 3 * 365 + 1, size)
    columns = [
        pa.array(index + 1),
        _customer_ids(seed, index, rng),
        first,
        last,
        company,
        _pick(rng, CITIES, size),
        _pick(rng, COUNTRIES, size),
        _phones(rng, size),
        _phones(rng, size),
        email,
        pa.array(np.datetime64("2020-01-01") + days.astype("timedelta64[D]"), pa.date32()),
        website,
    ]
    return pa.Table.from_arrays(columns, schema=CUSTOMERS_SCHEMA)


def _pick(rng: np.random.Generator, words: pa.Array, size: int) -> pa.Array:
    return words.take(pa.array(rng.integers(0, len(words), size)))


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _ascii(matrix: np.ndarray) -> pa.Array:
    """Rows of a (n, width) uint8 matrix of ASCII codes as strings."""
    matrix = np.ascontiguousarray(matrix, dtype=np.uint8)
    return pa.array(matrix.view(f"S{matrix.shape[1]}").ravel()).cast(pa.string())


def _digits(rng: np.random.Generator, size: int, count: int) -> pa.Array:
    return _ascii(rng.integers(ord("0"), ord("9") + 1, (size, count)))


def _customer_ids(seed: int, index: np.ndarray, rng: np.random.Generator) -> pa.Array:
    """15 hex digits of a bijection of (seed, index), in random letter case: unique per seed."""
    mask = np.uint64((1 << _ID_BITS) - 1)
    offset = np.uint64(((seed + 1) * 0x9E3779B97F4A7C15) & ((1 << 64) - 1))
    scrambled = (index.astype(np.uint64) * _ID_MULTIPLIER + offset) & mask
    shifts = np.arange(_ID_BITS - 4, -1, -4, dtype=np.uint64)
    nibbles = ((scrambled[:, None] >> shifts) & np.uint64(0xF)).astype(np.uint8)
    codes = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]
    upper = (codes >= ord("a")) & rng.integers(0, 2, codes.shape, dtype=bool)
    return _ascii(np.where(upper, codes - 32, codes))


def _phones(rng: np.random.Generator, size: int) -> pa.Array:
    area, exchange, line = (_digits(rng, size, n) for n in (3, 3, 4))
    extension = _digits(rng, size, 4)
    return pc.choose(
        pa.array(rng.integers(0, 4, size, dtype=np.int8)),
        _join(area, "-", exchange, "-", line),
        _join("(", area, ")", exchange, "-", line),
        _join("001-", area, "-", exchange, "-", line, "x", extension),
        _join("+1-", area, ".", exchange, ".", line),
    )
