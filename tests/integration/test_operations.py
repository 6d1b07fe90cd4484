"""Extended operations framework (operations.html): $name at system, type and instance level."""

from __future__ import annotations

import httpx

from tests.integration.test_errors import assert_outcome


def test_unknown_operation_is_404_outcome(client: httpx.Client) -> None:
    """operations.html#executing: an operation the server does not know is not found."""
    for path in ("/$no-such-op", "/Patient/$no-such-op", "/Patient/1/$no-such-op"):
        body = assert_outcome(client.get(path), 404, "not-found")
        assert "$no-such-op" in body["issue"][0]["diagnostics"]


def test_operation_on_unknown_type_is_404(client: httpx.Client) -> None:
    assert_outcome(client.get("/Unicorn/$meta"), 404, "not-found")


def test_operation_methods_other_than_get_post_are_405(client: httpx.Client) -> None:
    r = client.delete("/Patient/$no-such-op")
    assert_outcome(r, 405)
    assert "POST" in r.headers["allow"]
