"""Every test writes its image-folder caches under the session's temporary folder, not the user's ~/.cache."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # A session-wide patch of its own: a test's monkeypatch.undo() leaves it in place.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSLKIT_CACHE", str(tmp_path_factory.getbasetemp() / "sslkit-cache"))
        yield
