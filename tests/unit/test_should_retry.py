"""`x-should-retry` (obeyed by the openai SDK) says true only where nothing was enqueued."""

import falcon
import pytest
from falcon import testing

from services.api import errors
from services.common.errors import APIError, ClientGone, GatewayTimeout, InvalidRequest, RateLimited, ServiceUnavailable


def answer(error: APIError) -> falcon.testing.Result:
    class Raises:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            raise error

    app = falcon.App()
    errors.install(app)
    app.add_route("/x", Raises())
    return testing.TestClient(app).simulate_get("/x")


@pytest.mark.parametrize(
    ("error", "header"),
    [
        (RateLimited("busy"), "true"),
        (ServiceUnavailable("no worker", code="model_not_loaded"), "true"),
        (InvalidRequest("bad"), None),
        (GatewayTimeout("slow"), None),
        (ClientGone("gone"), None),
    ],
)
def test_should_retry_header(error: APIError, header: str | None) -> None:
    result = answer(error)
    assert result.status_code == error.status
    assert result.headers.get("x-should-retry") == header
