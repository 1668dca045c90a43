"""The embedded wiki corpus, loaded once for every activation test that needs real text."""

from __future__ import annotations

import pytest

from saescope.activations.documents import Document, load_documents


@pytest.fixture(scope="session")
def wiki() -> list[Document]:
    return load_documents("wiki")
