"""Job payloads and stream events survive the trip through Redis's field encoding."""

from services.common import events
from services.common.errors import GatewayTimeout, InternalError, InvalidRequest, ServiceUnavailable, from_status
from services.common.jobs import ChatMessage, Job, SamplingParams


def test_job_round_trip_is_versioned_json():
    job = Job(
        request_id="chatcmpl-1",
        model="m",
        kind="chat",
        messages=(ChatMessage(role="user", content="hi"),),
        params=SamplingParams(max_tokens=4, stop=("\n",), seed=3),
        accepted_at=1.0,
        deadline=2.0,
    )
    wire = job.to_wire()
    assert wire["v"] == 1 and wire["params"]["stop"] == ["\n"]
    assert Job.from_wire(wire) == job


def test_events_round_trip_through_bytes():
    for event in (
        events.Started("w1", 1.5),
        events.Delta("héllo", 2),
        events.Delta("Once upon", 2, ("Once", " upon")),
        events.Done("length", events.Usage(3, 4), {"accepted": 1.0}),
        events.Failed("bad", "invalid_request_error", "context_length_exceeded", "max_tokens", 400),
    ):
        fields = {k.encode(): v.encode() for k, v in events.encode(event).items()}
        assert events.decode(fields) == event


def test_a_single_piece_delta_keeps_the_old_wire_form_and_a_batch_lists_its_pieces():
    assert events.encode(events.Delta("hi", 1)) == {"kind": "delta", "data": '{"text":"hi","tokens":1}'}
    assert events.Delta("hi", 1).chunks() == ("hi",)
    assert events.Delta("", 1).chunks() == ()
    assert events.Delta("ab", 3, ("a", "", "b")).chunks() == ("a", "b")
    old_reader = events.decode({"kind": "delta", "data": '{"text":"ab","tokens":2,"pieces":["a","b"]}'})
    assert old_reader.text == "ab", "a reader that ignores pieces still gets the whole text"


def test_usage_total():
    assert events.Usage(3, 4).to_openai() == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_errors_map_to_status_and_envelope():
    err = from_status(400, "too long", code="context_length_exceeded", param="max_tokens")
    assert isinstance(err, InvalidRequest)
    assert err.envelope() == {
        "error": {
            "message": "too long",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "context_length_exceeded",
        }
    }
    assert isinstance(from_status(504, "slow"), GatewayTimeout)
    assert isinstance(from_status(418, "odd"), InternalError)
    assert ServiceUnavailable("down").headers["Retry-After"] == "5"
