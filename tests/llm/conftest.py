"""Shared pieces of the processor tests: engine settings, a reference LLM, the tutorial's rows."""

from __future__ import annotations

import functools
import http.server
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from image_testing import http_server

SYSTEM_PROMPT = "You are a helpful assistant."


def _tutorial_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": f"Convert this date:\n{row['Subscription Date']}\n\n as the format:MM-DD-YYYY",
        },
    ]


@pytest.fixture(scope="session")
def tutorial_messages() -> Callable[[dict[str, Any]], list[dict[str, str]]]:
    """The tutorial's chat messages for a customers row."""
    return _tutorial_messages


@pytest.fixture(scope="session")
def customers_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmbatch._fixtures.customers import write_customers_csv

    path = tmp_path_factory.mktemp("customers") / "customers.csv"
    write_customers_csv(str(path), num_rows=50, seed=7)
    return path


@pytest.fixture(scope="session")
def http_folder_url(customers_csv: Path) -> Iterator[str]:
    """A local HTTP server (127.0.0.1, own thread) serving the folder of `customers_csv`."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(customers_csv.parent)
    )
    with http_server(handler) as url:
        yield url
