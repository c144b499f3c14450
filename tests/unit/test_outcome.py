"""Every step ends in one ``Outcome``, concluded in one place: its notices published, its
metrics counted, and an outcome that owes a notice refused when it has none."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from chalicelib import clients
from chalicelib.notify import Notice, parse_message
from chalicelib.outcome import Outcome, RetryLater, concluded, metrics
from chalicelib.settings import Settings


class _Topic:
    def __init__(self):
        self.published: list[dict] = []

    def publish(self, **params) -> dict:
        self.published.append(params)
        return {"MessageId": str(len(self.published))}


@pytest.fixture
def topic():
    sns = _Topic()
    clients.use_factory({"sns": sns}.__getitem__)
    metrics.clear_metrics()
    yield sns
    metrics.clear_metrics()
    clients.use_factory(None)


SETTINGS = Settings(topic_arn="arn:aws:sns:eu-west-1:123456789012:sagedrop")
NOTICE = Notice(stage="deploy", status="deploying", summary="Endpoint e updating to serve v2.")


def test_an_outcome_that_owes_a_notice_cannot_be_made_without_one():
    with pytest.raises(ValueError, match="'updating' owes a notice"):
        Outcome("updating")
    assert Outcome("duplicate").notices == []  # nothing happened: nothing to say


def test_an_outcome_ends_with_one_of_the_result_words():
    """A misspelt word would slip past every test that asserts the right one."""
    with pytest.raises(ValueError, match="'deployed' is not a step's result"):
        Outcome("deployed", [NOTICE])  # type: ignore[arg-type]


def test_a_concluded_step_publishes_its_notices_and_counts_once(topic):
    @concluded
    def step(name: str, settings: Settings) -> Outcome:
        later = Outcome("updating", [NOTICE], ["Deployments"])
        return Outcome("ready", [NOTICE], ["EndpointsReady"]).followed_by(later)

    assert step("x", SETTINGS) == "ready"
    assert [parse_message(p["Message"])["status"] for p in topic.published] == ["deploying"] * 2
    assert set(metrics.metric_set) == {"EndpointsReady", "Deployments"}


def test_a_step_retried_by_lambda_still_concludes_what_it_did(topic):
    cause = ClientError({"Error": {"Code": "ThrottlingException"}}, "InvokeEndpoint")

    @concluded
    def step(settings: Settings) -> Outcome:
        raise RetryLater(cause, Outcome("throttled", counts=["PredictionsThrottled"]))

    with pytest.raises(ClientError) as raised:
        step(SETTINGS)
    assert raised.value is cause
    assert set(metrics.metric_set) == {"PredictionsThrottled"}
