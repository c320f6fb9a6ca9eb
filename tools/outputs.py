"""What each output of a model is (an embedding, logits, a regression, action tokens, labels), and why.

`evaluate` scores an output with the metric of its kind, so the kind must be right on models users
bring: a sentence encoder's pooled vector is an embedding (cosine), a classifier head's vector is
logits (arg-max agreement), whatever their shapes have in common. `guess_kinds` reads the evidence
in this order and says which piece decided (`KindGuess.reason`), and when the evidence is thin
(`ambiguous`):

1. The output's name: `logits`, `scores`, `probs` -> logits; `embedding(s)`, `pooler_output`,
   `last_hidden_state`, `hidden_state(s)`, `features` -> embedding (dict keys, transformers
   `ModelOutput` fields, ONNX output names).
2. A transformers model inside an eager torch module, with its config: an output whose last axis is
   the head's `num_labels` (a `...ForXClassification`) or the `vocab_size` (a `...ForCausalLM`,
   `...ForMaskedLM`) is logits; one whose last axis is the `hidden_size` (or the last of
   `hidden_sizes`, `projection_dim`) is an embedding.
3. The operation that produced the output in the model's graph (ONNX nodes, TorchScript's inlined
   graph, a torch.export program), looking through reshapes, indexing (`[:, 0]`), casts and
   scalings by constants: pooling (mean, sum, average pool), normalization (layer norm, division by
   a computed norm or count) and residual sums give features -> embedding; softmax -> logits;
   arg-max -> labels; a linear projection (Gemm, MatMul, linear) is a head -> logits, or an
   embedding when the layer is named like a projection of features (`proj`, `pooler`, `embed`);
   tanh is a bounded head: an embedding when wide (>= 64, BERT's pooler), a regression when narrow
   (bounded actions).
4. The library class alone, where no config is at hand (a TorchScript file's type names, a
   torch.export program's module stack): a base model without a task head (`BertModel`,
   `Dinov2Model`, `SiglipVisionModel`) gives embeddings, a `...For...` class logits. A projection
   that lies outside such a base model (the user's own head on top of an encoder) is a head.
5. The dtype: integer and boolean outputs are labels (ids, decisions), scored by exact agreement.
6. The values on the evaluation inputs: rows of unit L2 norm are normalized embeddings; rows of
   non-negative values summing to 1 are probabilities (logits' family).
7. The shape: one value per sample is a regression; [batch, d, bins] action tokens; four or more axes
   a feature map (embedding); [batch, n] with n > 1 logits, said to be ambiguous (an embedding or a
   regression head looks the same).

Explicit information wins over all of this and is applied by the caller (tools.evaluation): the
`output_kind` / `metric` arguments, a handle's `metadata["output_kind"]`, a registered architecture,
the evaluation targets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tools.handle import ModelHandle

OutputKind = Literal["logits", "regression", "action_tokens", "embedding", "labels"]
OUTPUT_KINDS: tuple[str, ...] = ("logits", "regression", "action_tokens", "embedding", "labels")


@dataclass(frozen=True)
class KindGuess:
    kind: OutputKind
    reason: str
    ambiguous: bool = False


@dataclass(frozen=True)
class Producer:
    """The operation an output comes from: its op name, what family it is, and its scope (layer path)."""

    op: str
    family: str  # projection, pooling, normalization, residual, softmax, tanh, sigmoid, argmax, other
    scope: str = ""


@dataclass(frozen=True)
class LibraryModel:
    """The outermost transformers model inside a torch model (config only for eager modules)."""

    class_name: str
    path: str
    config: Any = None

    @property
    def has_head(self) -> bool:
        return "For" in self.class_name or self.class_name.endswith("LMHeadModel")

    @property
    def lm(self) -> bool:
        n = self.class_name
        return any(k in n for k in ("CausalLM", "MaskedLM", "LMHead", "Generation", "ForPreTraining"))


_LOGIT_NAMES = re.compile(r"(^|[._/])(logits?|scores?|probs?|probabilities)($|[._/0-9])|logits")
_EMBED_NAMES = re.compile(
    r"embed|pooler|pooled|last_hidden_state|hidden_states?($|[._0-9])|(^|[._/])features?($|[._/0-9])"
)
_HEAD_SCOPES = re.compile(r"classifier|lm_head|(^|[._/])(score|logits?|cls)($|[._/])")
_FEATURE_SCOPES = re.compile(r"proj|pooler|embed")
_LIB_PREFIX = "transformers."


def guess_kinds(
    handle: ModelHandle, outputs: dict[str, np.ndarray], *, reference: ModelHandle | None = None
) -> dict[str, KindGuess]:
    """The kind of each output of `outputs` (the reference model's outputs on the evaluation inputs).

    Structural evidence (library classes, producing operations) is read from `reference` when given
    (the original model, which carries the most structure), else from `handle`; it is cached on the
    handle it was read from.
    """
    source = reference if reference is not None else handle
    library = _cached(source, "library_model", lambda: library_model(source))
    prods = _cached(source, "output_producers", lambda: output_producers(source))
    return {
        name: guess_kind(name, arr, library=library, producer=prods.get(i))
        for i, (name, arr) in enumerate(outputs.items())
    }


def guess_kind(
    name: str, arr: np.ndarray, *, library: LibraryModel | None = None, producer: Producer | None = None
) -> KindGuess:
    """The kind of one output (`arr`: its values on the evaluation inputs, samples first)."""
    shape = list(arr.shape)
    features = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    floating = np.issubdtype(arr.dtype, np.floating)
    desc = f"a {_shape_text(shape)} {arr.dtype} output"
    lower = name.lower()
    if floating and features > 1:
        if _LOGIT_NAMES.search(lower):
            return KindGuess("logits", f"{desc} named '{name}': logits")
        if _EMBED_NAMES.search(lower):
            return KindGuess("embedding", f"{desc} named '{name}': an embedding")
        hit = _library_dims(library, shape, desc)
        if hit is not None:
            return hit
        hit = _from_producer(producer, shape, desc, library)
        if hit is not None:
            return hit
        if library is not None and library.config is None:
            # Only the class name is known (TorchScript, torch.export). With a config (an eager module),
            # an output that matches none of its sizes comes from the user's own layers: no evidence.
            if library.has_head:
                return KindGuess(
                    "logits", f"{desc} of {library.class_name}, a model with a task head: logits"
                )
            return KindGuess(
                "embedding", f"{desc} of {library.class_name}, an encoder without a task head: an embedding"
            )
    if not floating:
        return KindGuess("labels", f"{desc}: integer or boolean values are labels (ids), compared exactly")
    if features <= 1:
        return KindGuess("regression", f"{desc}: one value per sample, a regression")
    if len(shape) == 2 and arr.shape[0] >= 2:
        rows = arr.astype(np.float64)
        norms = np.linalg.norm(rows, axis=1)
        if np.all(np.abs(norms - 1.0) < 1e-3):
            return KindGuess("embedding", f"{desc} whose rows have unit L2 norm: a normalized embedding")
        if np.all(rows >= 0) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-4):
            return KindGuess("logits", f"{desc} whose rows are probabilities (>= 0, sum 1): class scores")
    if len(shape) == 3:
        return KindGuess(
            "action_tokens",
            f"{desc}: scores over the last axis for each of {shape[1]} positions (action tokens), "
            "by shape alone",
            ambiguous=True,
        )
    if len(shape) >= 4:
        return KindGuess(
            "embedding",
            f"{desc}: a feature map, compared as features (by shape alone; segmentation logits look the "
            "same: name metric 'top1_agreement' for those)",
            ambiguous=True,
        )
    return KindGuess(
        "logits",
        f"ambiguous: {desc} with nothing in its name or graph to tell class logits from an embedding "
        "or a regression head; taken as logits. Name the metric (e.g. 'centered_cosine' for an "
        "embedding, 'within_tolerance_of_reference' for a regression) to choose",
        ambiguous=True,
    )


def _library_dims(library: LibraryModel | None, shape: list[Any], desc: str) -> KindGuess | None:
    if library is None or library.config is None:
        return None
    cfg, last = library.config, shape[-1]
    hidden = {
        int(v)
        for v in (
            getattr(cfg, "hidden_size", None),
            (getattr(cfg, "hidden_sizes", None) or [None])[-1],
            getattr(cfg, "projection_dim", None),
            getattr(cfg, "embed_dim", None),
        )
        if isinstance(v, int)
    }
    if library.lm and last == getattr(cfg, "vocab_size", None):
        return KindGuess("logits", f"{desc} of {library.class_name}: its last axis is the vocabulary, logits")
    labels = getattr(cfg, "num_labels", None) if library.has_head and not library.lm else None
    if labels is not None and last == labels and last not in hidden:
        return KindGuess(
            "logits", f"{desc} of {library.class_name}: its last axis is the head's {last} labels, logits"
        )
    if last in hidden and (labels is None or last != labels):
        return KindGuess(
            "embedding",
            f"{desc} of {library.class_name}: its last axis is its hidden size {last}: an embedding",
        )
    return None


def _from_producer(
    producer: Producer | None, shape: list[Any], desc: str, library: LibraryModel | None
) -> KindGuess | None:
    if producer is None:
        return None
    fam, op, last = producer.family, producer.op, shape[-1]
    where = f"{desc} produced by {op}" + (f" in '{producer.scope}'" if producer.scope else "")
    if fam in ("pooling", "normalization"):
        return KindGuess("embedding", f"{where} ({fam}): pooled or normalized features, an embedding")
    if fam == "residual":
        return KindGuess("embedding", f"{where} (a residual sum, the end of a block): features, an embedding")
    if fam == "softmax":
        return KindGuess("logits", f"{where}: probabilities over classes, logits' family")
    if fam == "projection":
        scope = producer.scope.lower()
        if _HEAD_SCOPES.search(scope):
            return KindGuess("logits", f"{where}: a classifier / LM head, logits")
        if _FEATURE_SCOPES.search(scope):
            return KindGuess("embedding", f"{where}: a projection of features, an embedding")
        if library is not None and not library.has_head and _inside(producer.scope, library.path):
            return KindGuess("embedding", f"{where} of {library.class_name} (no task head): an embedding")
        return KindGuess(
            "logits",
            f"{where}: a linear head, taken as logits (ambiguous: a regression head ends the same way; "
            "name metric 'within_tolerance_of_reference' for one)",
            ambiguous=True,
        )
    if fam == "tanh":
        if last >= 64:
            return KindGuess("embedding", f"{where}: a wide tanh (a pooler), an embedding", ambiguous=True)
        return KindGuess("regression", f"{where}: bounded values (actions), a regression", ambiguous=True)
    if fam == "sigmoid":
        return KindGuess("regression", f"{where}: values in (0, 1), a regression", ambiguous=True)
    return None


def _inside(scope: str, path: str) -> bool:
    """Whether a layer (its scope: a module path, or parameter paths) lies inside the module at `path`."""
    if not path:
        return True
    return any(part == path or part.startswith(path + ".") for part in scope.split())


def _shape_text(shape: list[Any]) -> str:
    return "[" + ", ".join(["batch", *(str(d) for d in shape[1:])]) + "]"


def _cached(handle: ModelHandle, key: str, make: Any) -> Any:
    full = f"outputs.{key}"
    if full not in handle.cache:
        try:
            handle.cache[full] = make()
        except Exception:  # noqa: BLE001 - a hint that cannot be read is no hint
            handle.cache[full] = None if key == "library_model" else {}
    return handle.cache[full]


# --------------------------------------------------------------------------------------------------
# Library classes
# --------------------------------------------------------------------------------------------------


def library_model(handle: ModelHandle) -> LibraryModel | None:
    """The outermost transformers model in the handle's torch model (eager, TorchScript or torch.export)."""
    if handle.runtime != "torch":
        return None
    model = handle.model
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        for path, sub in model.named_modules():
            qualified = sub._c._type().qualified_name().removeprefix("__torch__.")
            if qualified.startswith(_LIB_PREFIX):
                return LibraryModel(qualified.rsplit(".", 1)[-1], path)
        return None
    if isinstance(model, torch.fx.GraphModule):
        best: tuple[str, str] | None = None
        for node in model.graph.nodes:
            for path, cls in (node.meta.get("nn_module_stack") or {}).values():
                qualified = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
                if qualified.startswith(_LIB_PREFIX) and (best is None or len(path) < len(best[0])):
                    best = (path, qualified)
        return LibraryModel(best[1].rsplit(".", 1)[-1], best[0]) if best else None
    if isinstance(model, torch.nn.Module):
        for path, sub in model.named_modules():
            if type(sub).__module__.startswith(_LIB_PREFIX) and hasattr(sub, "config"):
                return LibraryModel(type(sub).__name__, path, getattr(sub, "config", None))
    return None


# --------------------------------------------------------------------------------------------------
# Producing operations
# --------------------------------------------------------------------------------------------------

_FAMILIES: dict[str, str] = {}
for _fam, _ops in {
    "projection": "gemm matmul linear addmm mm bmm baddbmm einsum conv convolution conv1d conv2d conv3d "
    "_convolution matmulinteger qlinearmatmul dynamicquantizematmul",
    "pooling": "reducemean reducesum mean sum globalaveragepool averagepool adaptive_avg_pool1d "
    "adaptive_avg_pool2d adaptive_avg_pool3d avg_pool1d avg_pool2d globalmaxpool amax max_pool2d "
    "adaptive_max_pool2d",
    "normalization": "layernormalization layer_norm native_layer_norm group_norm groupnormalization "
    "lpnormalization normalize rms_norm simplifiedlayernormalization skiplayernormalization "
    "batchnormalization batch_norm _native_batch_norm_legit_no_training instance_norm",
    "softmax": "softmax log_softmax logsoftmax _softmax _log_softmax",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "argmax": "argmax argmin topk",
}.items():
    for _op in _ops.split():
        _FAMILIES[_op] = _fam

# Operations that pass a tensor through (reshape, index, cast): the walk continues to their input.
_PASS = set(
    "identity reshape flatten squeeze unsqueeze transpose permute cast to _to_copy type_as clone contiguous "
    "alias view view_as _unsafe_view expand select slice gather narrow detach dropout "
    "lift_fresh_copy _assert_tensor_metadata float".split()
)


_ARITHMETIC = ("mul", "add", "sub", "div")


def _op_key(op: str) -> str:
    """'aten::linear', 'aten.linear.default', 'Gemm' -> 'linear' / 'gemm'."""
    op = op.split("::")[-1]
    if op.startswith("aten."):
        op = op.split(".")[1]
    return op.lower().rstrip("_")


def output_producers(handle: ModelHandle) -> dict[int, Producer]:
    """The producing operation of each output, by output position (empty for eager torch modules)."""
    model = handle.model
    if handle.runtime == "onnx":
        return _onnx_producers(model)
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        return _script_producers(model)
    if isinstance(model, torch.fx.GraphModule):
        return _fx_producers(model)
    return {}


def _onnx_producers(model: Any) -> dict[int, Producer]:
    graph = model.graph
    made = {out: node for node in graph.node for out in node.output}
    constants = {i.name for i in graph.initializer} | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output
    }
    result: dict[int, Producer] = {}
    for i, out in enumerate(graph.output):
        name = out.name
        for _ in range(64):
            node = made.get(name)
            if node is None:
                break
            key = node.op_type.lower()
            live = [x for x in node.input if x and x not in constants]
            if key in _PASS and node.input:
                name = node.input[0]  # the data input of reshapes, casts, gathers, slices
                continue
            if key in _ARITHMETIC and len(live) == 1:
                name = live[0]  # scaled or shifted by a constant (a bias, a temperature)
                continue
            scope = " ".join([node.name, *(x for x in node.input if x in constants)])
            result[i] = Producer(node.op_type, _family(key, len(live)), scope)
            break
    return result


def _family(key: str, live_inputs: int) -> str:
    if key in _ARITHMETIC:
        # Two computed tensors: a division is a normalization (by a norm, by a token count), an
        # addition a residual connection.
        return {"div": "normalization", "add": "residual"}.get(key, "other")
    return _FAMILIES.get(key, "other")


def _script_producers(model: Any) -> dict[int, Producer]:
    graph = model.inlined_graph
    values = list(graph.return_node().inputs())
    if len(values) == 1 and values[0].node().kind() in ("prim::TupleConstruct", "prim::ListConstruct"):
        values = list(values[0].node().inputs())
    elif len(values) == 1 and values[0].node().kind() == "prim::DictConstruct":
        values = list(values[0].node().inputs())[1::2]
    result: dict[int, Producer] = {}
    for i, value in enumerate(values):
        for _ in range(64):
            node = value.node()
            kind = node.kind()
            if not kind.startswith("aten::"):
                break
            key = _op_key(kind)
            live = [v for v in node.inputs() if v.type().kind() == "TensorType" and not _script_constant(v)]
            if key in _PASS and live:
                value = live[0]
                continue
            if key in _ARITHMETIC and len(live) == 1:
                value = live[0]
                continue
            scope = " ".join(_attr_path(v) for v in node.inputs() if v.node().kind() == "prim::GetAttr")
            result[i] = Producer(kind, _family(key, len(live)), scope)
            break
    return result


def _script_constant(value: Any) -> bool:
    return value.node().kind() in ("prim::GetAttr", "prim::Constant")


def _attr_path(value: Any) -> str:
    """'classifier.weight' for a parameter read through prim::GetAttr nodes."""
    names = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        names.append(node.s("name"))
        node = next(iter(node.inputs())).node()
    return ".".join(reversed(names))


def _fx_producers(model: Any) -> dict[int, Producer]:
    import torch

    out = next((n for n in model.graph.nodes if n.op == "output"), None)
    if out is None:
        return {}
    flat, _ = torch.utils._pytree.tree_flatten(out.args[0])
    result: dict[int, Producer] = {}
    for i, node in enumerate(flat):
        for _ in range(64):
            if not isinstance(node, torch.fx.Node) or node.op != "call_function":
                break
            key = _op_key(str(node.target))
            live = [a for a in node.args if isinstance(a, torch.fx.Node) and a.op != "get_attr"]
            if key in _PASS and live:
                node = live[0]
                continue
            if key in _ARITHMETIC and len(live) == 1:
                node = live[0]
                continue
            stack = node.meta.get("nn_module_stack") or {}
            scope = list(stack.values())[-1][0] if stack else ""
            result[i] = Producer(str(node.target), _family(key, len(live)), scope)
            break
    return result
