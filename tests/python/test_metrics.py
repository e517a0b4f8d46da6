"""Metric specs: what the core receives for each spelling, and the typed errors for bad ones."""

import numpy as np
import pytest

from mindscope.errors import DataError, InvalidArgumentError, ShapeError
from mindscope.metrics import metric_name, resolve_metric


def test_spellings_resolve_to_token_ids(model):
    paris = model.token_id(" Paris")
    assert resolve_metric(model, ("logprob", " Paris")) == {"kind": "logprob", "target": paris, "position": None}
    assert resolve_metric(model, ("logprob", paris), position=3)["position"] == 3
    spec = resolve_metric(model, ("logit_diff", " Mary", " John"))
    assert (spec["a"], spec["b"]) == (model.token_id(" Mary"), model.token_id(" John"))
    w = np.zeros(model.cfg["vocab_size"])
    w[paris] = 2.0
    spec = resolve_metric(model, ("logits_dot", w))
    assert spec["weights"][paris] == 2.0 and len(spec["weights"]) == model.cfg["vocab_size"]
    assert metric_name(("logit_diff", " Mary", " John")) == "logit(' Mary') - logit(' John')"


@pytest.mark.parametrize(
    "metric, error, text",
    [
        (("logprob", " Eiffel Tower"), InvalidArgumentError, "not one"),
        (("logprob", 10**9), InvalidArgumentError, "out of range"),
        (("prob", " Paris"), InvalidArgumentError, "logit_diff"),
        (("logit_diff", " Mary"), InvalidArgumentError, "takes 2"),
        (("logits_dot", [1.0, 2.0]), ShapeError, "[vocab]"),
        ("logprob", InvalidArgumentError, "a metric is"),
    ],
)
def test_bad_metrics_raise_typed_errors(model, metric, error, text):
    with pytest.raises(error, match=None) as info:
        resolve_metric(model, metric)
    assert text in str(info.value)


def test_non_finite_weights_and_negative_positions(model):
    w = np.zeros(model.cfg["vocab_size"])
    w[0] = np.nan
    with pytest.raises(DataError):
        resolve_metric(model, ("logits_dot", w))
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        resolve_metric(model, ("logprob", " Paris"), position=-1)
