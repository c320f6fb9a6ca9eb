"""evaluate: 1.0 for an untouched copy, far less for a ruined one; task metric vs fidelity; typed errors.

Metrics that fit the output, on library models from evals.zoo (a BERT sentence embedder, a ViT
classifier): embeddings by centered cosine and nearest-neighbour agreement, logits by top-1 / top-5
agreement and KL; several outputs each with its own metric, the worst (or a named one) gating;
request-time checks (`output_specs`, `check_metric`) that refuse what evaluate would.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from evals.zoo import ZooModel
from evals.zoo import build as build_zoo
from tests.tools.conftest import assert_same_weights, build_mlp, mlp_handle, weights_snapshot
from tools.architectures import build_model, input_specs
from tools.errors import DataMismatchError, InvalidArgumentError, InvalidModelError
from tools.evaluation import EvalResult, check_metric, evaluate, output_specs
from tools.handle import ArchitectureRef, EvalData, InputSpec, ModelHandle
from tools.pruning import prune
from tools.quantization import quantize
from tools.runtime import forward, forward_all, synthesize_inputs


def _registry_handle(name: str, **config: object) -> ModelHandle:
    ref = ArchitectureRef(name=name, config=dict(config))
    return ModelHandle(
        runtime="torch",
        format="state_dict",
        model=build_model(ref),
        inputs=input_specs(ref),
        architecture=ref,
    )


def test_untouched_copy_is_one_and_97_percent_pruned_is_far_less() -> None:
    reference = mlp_handle()
    before = weights_snapshot(reference)
    same = evaluate(reference.clone(), reference=reference)
    assert isinstance(same, EvalResult)
    assert same.metric == "top1_agreement" and not same.uses_targets
    assert same.value == 1.0 and same.accuracy_retained == 1.0
    assert same.cosine_similarity == pytest.approx(1.0) and same.relative_error == pytest.approx(
        0.0, abs=1e-6
    )
    assert same.num_samples == 256 and same.data_source == "synthesized"
    ruined = evaluate(prune(reference, "magnitude", 0.97), reference=reference)
    assert ruined.accuracy_retained < 0.5  # measured 0.012
    assert ruined.relative_error > 0.1 and ruined.cosine_similarity < 0.99
    assert_same_weights(before, weights_snapshot(reference))


def test_classification_targets_give_task_accuracy() -> None:
    reference = mlp_handle()
    x = synthesize_inputs(reference.inputs, 200, seed=5)
    labels = forward(reference, x).argmax(-1)
    labels[:50] = (labels[:50] + 1) % 16  # the reference gets 75% right
    data = EvalData(inputs=x, targets=labels)
    same = evaluate(reference.clone(), reference=reference, data=data)
    assert same.metric == "accuracy" and same.uses_targets and same.data_source == "given"
    assert same.reference_value == pytest.approx(0.75) and same.accuracy_retained == 1.0
    pruned = prune(reference, "magnitude", 0.97)
    pruned.eval_data = data
    worse = evaluate(pruned, reference=reference)
    assert worse.data_source == "eval_data"
    assert worse.value < 0.9 * 0.75 and worse.accuracy_retained == pytest.approx(worse.value / 0.75)


def test_vla_action_token_accuracy() -> None:
    reference = _registry_handle("vla", preset="vla_mini", llm_layers=2)
    x = synthesize_inputs(reference.inputs, 12, seed=2)
    bins = forward(reference, x).argmax(-1)
    data = EvalData(inputs=x, targets=bins.astype(np.int64))
    same = evaluate(reference.clone(), reference=reference, data=data, batch_size=12)
    assert same.metric == "action_token_accuracy" and same.output_kind == "action_tokens"
    assert same.value == 1.0 and same.accuracy_retained == 1.0
    pruned = evaluate(prune(reference, "structured", 0.9), reference=reference, data=data, batch_size=12)
    assert pruned.accuracy_retained < 0.9
    # Continuous actions in [-1, 1] are scored in the same 256 bins (bin centres map back exactly).
    actions = ((bins + 0.5) / 256 * 2 - 1).astype(np.float32)
    continuous = evaluate(reference.clone(), reference=reference, data=EvalData(inputs=x, targets=actions))
    assert continuous.metric == "action_token_accuracy" and continuous.value == 1.0


def test_regression_within_tolerance_and_fidelity() -> None:
    reference = _registry_handle("mlp_policy", obs_dim=8, act_dim=4)
    x = synthesize_inputs(reference.inputs, 128, seed=3)
    actions = forward(reference, x)
    rng = np.random.default_rng(0)
    targets = actions + rng.normal(0, 0.05, actions.shape).astype(np.float32) * actions.std(0)
    same = evaluate(reference.clone(), reference=reference, data=EvalData(inputs=x, targets=targets))
    assert same.metric == "within_tolerance" and same.tolerance == 0.25
    assert same.reference_value > 0.9 and same.accuracy_retained == 1.0 and same.mse is not None
    assert same.top1_agreement is None
    ruined = prune(reference, "magnitude", 0.97)
    assert (
        evaluate(ruined, reference=reference, data=EvalData(inputs=x, targets=targets)).accuracy_retained
        < 0.9
    )
    fidelity = evaluate(ruined, reference=reference)
    assert fidelity.metric == "within_tolerance_of_reference" and fidelity.accuracy_retained < 0.9
    assert evaluate(reference.clone(), reference=reference).accuracy_retained == 1.0


def test_onnx_candidate_against_torch_reference(model_files: dict[str, Path]) -> None:
    reference = mlp_handle()
    candidate = ModelHandle(
        runtime="onnx", format="onnx", model=onnx.load(str(model_files["mlp_onnx"])), inputs=reference.inputs
    )
    result = evaluate(candidate, reference=reference, num_samples=64)
    assert result.accuracy_retained == 1.0 and result.relative_error < 1e-5


def test_mismatched_data_raises_typed_errors() -> None:
    reference = mlp_handle()
    with pytest.raises(DataMismatchError, match="names"):
        evaluate(
            reference, reference=reference, data=EvalData(inputs={"image": np.zeros((4, 64), np.float32)})
        )
    with pytest.raises(DataMismatchError, match="axis 1"):
        evaluate(reference, reference=reference, data=EvalData(inputs={"obs": np.zeros((4, 63), np.float32)}))
    with pytest.raises(DataMismatchError, match="targets"):
        data = EvalData(inputs={"obs": np.zeros((4, 64), np.float32)}, targets=np.zeros(5, np.int64))
        evaluate(reference, reference=reference, data=data)
    with pytest.raises(DataMismatchError, match="targets"):
        data = EvalData(inputs={"obs": np.zeros((4, 64), np.float32)}, targets=np.zeros((4, 3), np.float32))
        evaluate(reference, reference=reference, data=data)
    other = _registry_handle("mlp_policy", obs_dim=64, act_dim=3)
    with pytest.raises(InvalidArgumentError, match="output shape"):
        evaluate(other, reference=reference, num_samples=8)


def test_reference_outputs_are_cached_per_data() -> None:
    reference = mlp_handle()
    first = evaluate(prune(reference, "magnitude", 0.5), reference=reference, num_samples=32)
    cached = reference.cache["evaluate_reference_outputs"][-1][2]
    assert cached.arrays["output"].shape == (32, 16)
    again = evaluate(prune(reference, "magnitude", 0.5), reference=reference, num_samples=32)
    assert reference.cache["evaluate_reference_outputs"][-1][2] is cached and again == first
    x = synthesize_inputs(reference.inputs, 8, seed=9)
    given = evaluate(reference.clone(), reference=reference, data=EvalData(inputs=x))
    assert given.num_samples == 8
    assert reference.cache["evaluate_reference_outputs"][-1][2].arrays["output"].shape == (8, 16)


# --------------------------------------------------------------------------------------------------
# Metrics that fit the output: library models (evals.zoo), several outputs, request-time checks.
# --------------------------------------------------------------------------------------------------


def _zoo_handle(model: ZooModel) -> ModelHandle:
    specs = []
    for name in model.input_names:
        arr = model.inputs[name]
        low, high = model.input_ranges.get(name, (1, 2) if name == "attention_mask" else (None, None))
        specs.append(
            InputSpec(name=name, shape=[None, *arr.shape[1:]], dtype=str(arr.dtype), low=low, high=high)
        )
    return ModelHandle(runtime="torch", format="state_dict", model=model.module, inputs=specs)


@pytest.fixture(scope="module")
def bert() -> ModelHandle:
    return _zoo_handle(build_zoo("bert"))


@pytest.fixture(scope="module")
def vit() -> ModelHandle:
    return _zoo_handle(build_zoo("vit"))


def _shuffled(handle: ModelHandle) -> ModelHandle:
    """The same weights, each tensor's values permuted: the statistics stay, the function is gone."""
    out = handle.clone()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in out.model.parameters():
            flat = p.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel(), generator=gen)])
    return out


class EmbedAndClassify(nn.Module):
    """An encoder's embedding and a classifier head on it, returned together (as a dict or a tuple)."""

    def __init__(self, embedder: nn.Module, as_dict: bool) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embedder, self.head, self.as_dict = embedder, nn.Linear(128, 10), as_dict

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        emb = self.embedder(input_ids, attention_mask)
        logits = self.head(emb)
        return {"embedding": emb, "logits": logits} if self.as_dict else (emb, logits)


def _two_outputs(bert: ModelHandle, as_dict: bool = True) -> ModelHandle:
    model = EmbedAndClassify(bert.model, as_dict).eval()
    return ModelHandle(runtime="torch", format="state_dict", model=model, inputs=list(bert.inputs))


def test_sentence_embedding_is_scored_by_centered_cosine_and_neighbours_not_argmax(bert: ModelHandle) -> None:
    q = evaluate(quantize(bert, "dynamic_int8"), reference=bert, num_samples=128)
    assert q.metric == "centered_cosine" and q.output_kind == "embedding" and not q.uses_targets
    assert "BertModel" in q.metric_reason and "hidden size 128" in q.metric_reason
    assert q.top1_agreement is None and q.top5_agreement is None and q.kl_divergence is None
    assert q.accuracy_retained == pytest.approx(q.centered_cosine) and q.accuracy_retained > 0.999
    assert q.nn_agreement is not None and q.nn_agreement > 0.95  # measured 0.99
    pruned = evaluate(prune(bert, "magnitude", 0.95), reference=bert, num_samples=128)
    # Plain cosine barely moves (every sample shares one direction); the centered cosine and the
    # neighbours do.
    assert pruned.cosine_similarity > 0.99  # measured 0.996
    assert pruned.accuracy_retained < 0.95 and pruned.accuracy_retained < q.accuracy_retained - 0.05
    assert pruned.nn_agreement is not None and pruned.nn_agreement < 0.9  # measured 0.83
    shuffled = evaluate(_shuffled(bert), reference=bert, num_samples=128)
    assert (
        shuffled.accuracy_retained < 0.2 and shuffled.nn_agreement is not None and shuffled.nn_agreement < 0.1
    )


def test_metrics_forced_on_an_embedding_and_refused_when_they_do_not_fit(bert: ModelHandle) -> None:
    pruned = prune(bert, "magnitude", 0.95)
    default = evaluate(pruned, reference=bert, num_samples=64)
    nn_forced = evaluate(pruned, reference=bert, num_samples=64, metric="nn_agreement")
    assert (
        nn_forced.metric == "nn_agreement"
        and nn_forced.value == nn_forced.nn_agreement == default.nn_agreement
    )
    assert (
        nn_forced.accuracy_retained == nn_forced.value and "named by the request" in nn_forced.metric_reason
    )
    plain = evaluate(pruned, reference=bert, num_samples=64, metric="cosine_similarity")
    assert plain.accuracy_retained == pytest.approx(default.cosine_similarity)
    with pytest.raises(InvalidArgumentError, match="exact_agreement.*float32"):
        evaluate(pruned, reference=bert, num_samples=8, metric="exact_agreement")
    with pytest.raises(InvalidArgumentError, match="targets"):
        evaluate(pruned, reference=bert, num_samples=8, metric="accuracy")
    with pytest.raises(InvalidArgumentError, match="metric"):
        evaluate(pruned, reference=bert, num_samples=8, metric="f1")  # type: ignore[arg-type]


def test_logits_get_top1_top5_and_kl(vit: ModelHandle) -> None:
    q = evaluate(quantize(vit, "dynamic_int8"), reference=vit, num_samples=128)
    assert q.metric == "top1_agreement" and q.output_kind == "logits"
    assert "ViTForImageClassification" in q.metric_reason and "10 labels" in q.metric_reason
    assert q.top1_agreement is not None and q.top5_agreement is not None and q.kl_divergence is not None
    assert q.top1_agreement > 0.95 and q.top5_agreement >= q.top1_agreement and q.kl_divergence < 1e-3
    assert q.centered_cosine is None and q.nn_agreement is None
    ruined = prune(vit, "magnitude", 0.95)
    bad = evaluate(ruined, reference=vit, num_samples=128)
    assert (
        bad.top1_agreement is not None
        and bad.top1_agreement < 0.5
        and bad.accuracy_retained == bad.top1_agreement
    )
    assert bad.kl_divergence is not None and bad.kl_divergence > 10 * q.kl_divergence
    kl = evaluate(ruined, reference=vit, num_samples=128, metric="kl_divergence")
    assert kl.value == bad.kl_divergence and kl.reference_value == 0.0
    assert kl.accuracy_retained == pytest.approx(math.exp(-bad.kl_divergence))
    top5 = evaluate(ruined, reference=vit, num_samples=128, metric="top5_agreement")
    assert top5.value == bad.top5_agreement and top5.accuracy_retained == top5.value


def test_several_outputs_each_scored_with_their_metric_worst_or_named_gates(bert: ModelHandle) -> None:
    two = _two_outputs(bert)
    head_pruned = prune(two, "magnitude", 0.9, include=["head"])
    worst = evaluate(head_pruned, reference=two, num_samples=128)
    by_name = {o.name: o for o in worst.outputs}
    assert list(by_name) == ["embedding", "logits"]
    assert by_name["embedding"].metric == "centered_cosine" and by_name["embedding"].accuracy_retained == 1.0
    assert by_name["logits"].metric == "top1_agreement" and by_name["logits"].accuracy_retained < 0.95
    assert by_name["logits"].top5_agreement is not None and by_name["embedding"].top1_agreement is None
    assert worst.gating == "worst" and worst.output == "logits"
    assert worst.accuracy_retained == by_name["logits"].accuracy_retained and worst.metric == "top1_agreement"
    assert "worst of 2 outputs" in worst.metric_reason
    named = evaluate(head_pruned, reference=two, num_samples=128, output="embedding")
    assert named.gating == "named" and named.output == "embedding" and named.accuracy_retained == 1.0
    assert len(named.outputs) == 2  # the others are still reported
    # A forced metric applies to the named output only; a name the model lacks is refused.
    kl = evaluate(head_pruned, reference=two, num_samples=32, output="logits", metric="kl_divergence")
    assert (
        kl.metric == "kl_divergence"
        and {o.name: o.metric for o in kl.outputs}["embedding"] == "centered_cosine"
    )
    with pytest.raises(InvalidArgumentError, match="no output 'pooled'.*'embedding', 'logits'"):
        evaluate(head_pruned, reference=two, num_samples=8, output="pooled")
    with pytest.raises(InvalidArgumentError, match="'exact_agreement' does not fit output 'embedding'"):
        evaluate(head_pruned, reference=two, num_samples=8, metric="exact_agreement")
    # A tuple: positional names; the embedding is recognized from BERT's config, the user's head is not
    # BERT's, so it stays logits (said to be ambiguous).
    pair = _two_outputs(bert, as_dict=False)
    tup = evaluate(prune(pair, "magnitude", 0.9, include=["head"]), reference=pair, num_samples=64)
    kinds = {o.name: (o.output_kind, o.metric_reason) for o in tup.outputs}
    assert kinds["output_0"][0] == "embedding" and kinds["output_1"][0] == "logits"
    assert "ambiguous" in kinds["output_1"][1] and tup.output == "output_1"


def test_onnx_export_with_two_outputs_pairs_by_position(tmp_path: Path) -> None:
    class Twin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body, self.head = nn.Linear(8, 32), nn.Linear(32, 4)

        def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = torch.nn.functional.layer_norm(torch.relu(self.body(obs)), (32,))
            return features, self.head(features)

    specs = [InputSpec(name="obs", shape=[None, 8])]
    reference = ModelHandle(runtime="torch", format="state_dict", model=Twin().eval(), inputs=specs)
    path = tmp_path / "twin.onnx"
    torch.onnx.export(
        reference.model, (torch.zeros(2, 8),), str(path), input_names=["obs"], output_names=["feat", "act"],
        dynamic_axes={"obs": {0: "b"}, "feat": {0: "b"}, "act": {0: "b"}}, dynamo=False,
    )  # fmt: skip
    exported = ModelHandle(runtime="onnx", format="onnx", model=onnx.load(str(path)), inputs=specs)
    assert list(forward_all(exported, synthesize_inputs(specs, 3))) == ["feat", "act"]
    result = evaluate(exported, reference=reference, num_samples=64)
    assert [o.name for o in result.outputs] == ["output_0", "output_1"]  # the reference's names
    assert all(o.accuracy_retained == 1.0 and o.relative_error < 1e-5 for o in result.outputs)
    # The ONNX graph says what produced each output: a layer norm (features), a linear head.
    kinds = {s["name"]: s["kind"] for s in output_specs(exported)}
    assert kinds == {"feat": "embedding", "act": "logits"}
    with pytest.raises(InvalidArgumentError, match="candidate has 2 outputs.*reference 1"):
        evaluate(exported, reference=_single_output(specs), num_samples=4)


def _single_output(specs: list[InputSpec]) -> ModelHandle:
    torch.manual_seed(0)
    return ModelHandle(runtime="torch", format="state_dict", model=nn.Linear(8, 4).eval(), inputs=specs)


class WithExtras(nn.Module):
    """Actions plus things that are not per-sample tensors: a None, a string, a scalar loss."""

    def __init__(self, extra: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.policy, self.extra = nn.Linear(8, 4), extra

    def forward(self, obs: torch.Tensor) -> tuple[Any, ...]:
        actions = self.policy(obs)
        extra = {"none": None, "text": "ok", "loss": actions.pow(2).mean()}[self.extra]
        return actions, extra


@pytest.mark.parametrize(
    ("extra", "problem"), [("none", "NoneType"), ("text", "str"), ("loss", "shape \\[\\]")]
)
def test_outputs_that_cannot_be_compared_raise_unless_another_output_is_named(
    extra: str, problem: str
) -> None:
    specs = [InputSpec(name="obs", shape=[None, 8])]
    reference = ModelHandle(
        runtime="torch", format="state_dict", model=WithExtras(extra).eval(), inputs=specs
    )
    with pytest.raises(InvalidModelError, match=f"'output_1' is .*{problem}.*Name the output.*'output_0'"):
        evaluate(reference.clone(), reference=reference, num_samples=8)
    ok = evaluate(prune(reference, "magnitude", 0.5), reference=reference, num_samples=32, output="output_0")
    assert ok.output == "output_0" and [o.name for o in ok.outputs] == ["output_0"]
    assert "not compared: 'output_1'" in ok.metric_reason and 0.0 <= ok.accuracy_retained < 1.0
    with pytest.raises(InvalidModelError, match="output 'output_1' cannot be compared"):
        evaluate(reference.clone(), reference=reference, num_samples=8, output="output_1")
    specs_out = output_specs(reference)
    assert [s["comparable"] for s in specs_out] == [True, False] and problem.split()[0].strip("\\") in str(
        specs_out[1]["problem"] + specs_out[1]["dtype"]
    )
    with pytest.raises(InvalidModelError, match="'output_1'"):
        check_metric(None, specs_out)
    assert check_metric(None, specs_out, output="output_0") == {"output_0": "top1_agreement"}
    if extra != "loss":
        with pytest.raises(InvalidModelError, match="not tensors: 'output_1'"):
            forward_all(reference, synthesize_inputs(specs, 2))


def test_forward_all_names_every_output_and_forward_keeps_the_first(bert: ModelHandle) -> None:
    from transformers import BertModel

    encoder = bert.model.encoder
    assert isinstance(encoder, BertModel)
    handle = ModelHandle(runtime="torch", format="state_dict", model=encoder, inputs=list(bert.inputs))
    x = synthesize_inputs(handle.inputs, 3)
    outs = forward_all(handle, x)  # a transformers ModelOutput: its fields by name
    assert list(outs) == ["last_hidden_state"] and outs["last_hidden_state"].shape == (3, 16, 128)
    np.testing.assert_array_equal(forward(handle, x), outs["last_hidden_state"])
    pair = _two_outputs(bert, as_dict=False)
    assert [(k, v.shape) for k, v in forward_all(pair, x).items()] == [
        ("output_0", (3, 128)),
        ("output_1", (3, 10)),
    ]
    np.testing.assert_array_equal(forward(pair, x), forward_all(pair, x)["output_0"])
    # Token features of an encoder are embeddings too (by name here): compared by cosine, not arg-max.
    result = evaluate(quantize(handle, "dynamic_int8"), reference=handle, num_samples=32)
    assert result.metric == "centered_cosine" and result.output == "last_hidden_state"
    assert "named 'last_hidden_state'" in result.metric_reason and result.accuracy_retained > 0.99


def test_output_specs_and_check_metric_refuse_at_request_time_what_evaluate_would(bert: ModelHandle) -> None:
    two = _two_outputs(bert)
    specs = output_specs(two)
    assert [(s["name"], s["shape"], s["dtype"], s["kind"]) for s in specs] == [
        ("embedding", [None, 128], "float32", "embedding"),
        ("logits", [None, 10], "float32", "logits"),
    ]
    assert all(s["comparable"] and s["kind_reason"] for s in specs)
    json.dumps(specs)  # storable as it is
    assert check_metric(None, specs) == {"embedding": "centered_cosine", "logits": "top1_agreement"}
    assert check_metric("top5_agreement", specs, output="logits") == {"logits": "top5_agreement"}
    targets = {"shape": [100], "dtype": "int64"}
    assert check_metric(None, specs, output="logits", targets=targets) == {"logits": "accuracy"}
    assert check_metric("accuracy", specs, output="logits", targets=targets) == {"logits": "accuracy"}
    refused = [
        ("exact_agreement", None, None, "'exact_agreement' compares integer"),
        ("accuracy", "logits", None, "evaluation data has none"),
        ("action_token_accuracy", "logits", targets, "logits \\[batch, tokens, bins\\]"),
        (None, "pooled", None, "no output 'pooled'"),
        ("f1", None, None, "metric"),
    ]
    for metric, output, t, message in refused:
        with pytest.raises(InvalidArgumentError, match=message):
            check_metric(metric, specs, output=output, targets=t)
    # What the check lets through, evaluate runs; what it refuses, evaluate refuses the same way.
    x = synthesize_inputs(two.inputs, 16, seed=1)
    labels = forward_all(two, x)["logits"].argmax(-1)
    data = EvalData(inputs=x, targets=labels)
    ok = evaluate(two.clone(), reference=two, data=data, output="logits", metric="accuracy")
    assert ok.metric == "accuracy" and ok.uses_targets and ok.value == 1.0
    with pytest.raises(InvalidArgumentError, match="'exact_agreement' compares integer"):
        evaluate(two.clone(), reference=two, num_samples=8, metric="exact_agreement")
    # A regression policy: one value per dimension, too few for top-5, no vectors to compare for nn.
    policy = _registry_handle("mlp_policy", obs_dim=8, act_dim=4)
    policy_specs = output_specs(policy)
    assert policy_specs[0]["kind"] == "regression" and "mlp_policy" in policy_specs[0]["kind_reason"]
    assert check_metric(None, policy_specs) == {"output": "within_tolerance_of_reference"}
    with pytest.raises(InvalidArgumentError, match="more than 5 classes"):
        check_metric("top5_agreement", policy_specs)
    forced = evaluate(
        prune(policy, "magnitude", 0.5), reference=policy, metric="centered_cosine", num_samples=64
    )
    assert forced.metric == "centered_cosine" and forced.output_kind == "regression"


def test_an_unhinted_vector_output_is_said_to_be_ambiguous() -> None:
    reference = mlp_handle()
    result = evaluate(reference.clone(), reference=reference, num_samples=16)
    assert result.metric == "top1_agreement" and result.gating == "only" and result.output == "output"
    assert "ambiguous" in result.metric_reason and "centered_cosine" in result.metric_reason
    spec = output_specs(reference)[0]
    assert spec["ambiguous"] and spec["kind"] == "logits"


def test_output_specs_refuse_a_model_that_cannot_run_on_its_signature() -> None:
    wrong = ModelHandle(
        runtime="torch",
        format="state_dict",
        model=build_mlp(),
        inputs=[InputSpec(name="obs", shape=[None, 63])],
    )
    with pytest.raises(DataMismatchError, match="does not run on inputs of its signature"):
        output_specs(wrong)
    with pytest.raises(InvalidArgumentError, match="no input signature"):
        output_specs(ModelHandle(runtime="torch", format="torchscript", model=build_mlp(), inputs=[]))
    data = EvalData(inputs={"obs": np.ones((5, 64), np.float32)})
    from_data = ModelHandle(
        runtime="torch",
        format="torchscript",
        model=build_mlp(),
        inputs=list(mlp_handle().inputs),
        eval_data=data,
    )
    assert output_specs(from_data)[0]["shape"] == [None, 16]


def test_a_stated_kind_the_output_contradicts_is_refused_not_crashed_on() -> None:
    class Ids(nn.Module):
        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return (obs * 4).round().long()  # integer ids: labels

    specs = [InputSpec(name="obs", shape=[None, 6])]
    ids = ModelHandle(runtime="torch", format="state_dict", model=Ids(), inputs=specs)
    same = evaluate(ids.clone(), reference=ids, num_samples=16)
    assert same.metric == "exact_agreement" and same.output_kind == "labels" and same.accuracy_retained == 1.0
    with pytest.raises(InvalidArgumentError, match="taken for embedding.*needs a floating output"):
        evaluate(ids.clone(), reference=ids, num_samples=16, output_kind="embedding")
    ids.metadata["output_kind"] = "logits"
    with pytest.raises(InvalidArgumentError, match="metadata says 'logits'"):
        evaluate(ids.clone(), reference=ids, num_samples=16)


def test_logits_of_a_reference_that_answers_one_class_are_compared_as_vectors() -> None:
    """A random-weight classifier predicts one class for nearly every input: top-1 agreement would pass
    any damage there, so its logits are scored by centered cosine, and the reason says why."""
    from tools.evaluation import DEGENERATE_CLASS_SHARE, _score

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(64, 10)).astype(np.float32)
    ref[:, 3] += 10.0  # class 3 wins for every input
    damaged = ref + rng.normal(scale=3.0, size=ref.shape).astype(np.float32)
    damaged[:, 3] += 10.0
    result = _score("logits", damaged, ref, None, "logits", "a classifier head", None, 0.25)
    assert result.top1_agreement == 1.0  # blind to the damage
    assert result.metric == "centered_cosine" and result.accuracy_retained < 0.8
    assert "one class for 100%" in result.metric_reason and DEGENERATE_CLASS_SHARE == 0.9
    spread = rng.normal(size=(64, 10)).astype(np.float32)
    assert _score("logits", spread, spread, None, "logits", "x", None, 0.25).metric == "top1_agreement"
