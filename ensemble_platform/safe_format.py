"""A serialisation format for fitted ensemble parts (members, combiner, calibrator) that does not
execute code when it is loaded.

The bytes are a skops archive (a zip of `schema.json` plus `.npy`/`.bin` blobs; no pickle anywhere),
rewritten into a canonical form so that the same fitted object always gives the same bytes.

Threat model: an attacker can rewrite the payload (e.g. a file in a bundle directory) but cannot
change the installed code. `loads` then guarantees:

* Nothing is imported, called or constructed before the whole payload has been audited. The
  audit reads `schema.json` itself: every node must be one of the skops node kinds this module
  writes (no bound methods, `operator` callables, reduce-constructors, ...) and every type or
  function it names must be in the explicit allow-list: `SKLEARN_ALLOWED` (exact names, no
  prefixes), this module's own `XGBoostModelState`, and the caller's `allowed` names. skops's own
  audit (which `sio.loads` runs on its tree before constructing anything) must agree. Anything
  else raises `UnsafeModelError` naming the types, so a payload naming `posix.system`,
  `builtins.eval` or `subprocess.Popen` never runs.
* Only skops's pickle-free loaders run, and arrays are read with `allow_pickle=False`. A pickle or
  cloudpickle file, a truncated or garbled archive, or a compressed (zip-bomb-shaped) entry is
  refused with `MalformedModelError` (an `UnsafeModelError`), never with a raw zip/JSON error.
* XGBoost models are stored as XGBoost's own UBJSON model bytes plus plain-data hyper-parameters
  (no `xgboost` class is ever rebuilt from attacker-chosen attributes), and are reloaded only from
  an in-memory `bytearray`, never from a path or URL.
* After construction, the index arrays that compiled scikit-learn / SciPy code reads without bounds
  checks are validated: decision-tree children/features, histogram-gradient-boosting predictor
  nodes and category bitsets, KD/Ball-tree index arrays, B-spline knots and coefficients.

Not protected:

* Wrong numbers. An allowed type with forged contents (weights, thresholds, categories) loads
  and predicts garbage; integrity is the job of the bundle's SHA-256 manifest, not of this format.
* Memory-safety of native parsers and kernels beyond the checks above: XGBoost's UBJSON model
  parser and predictor, NumPy's `.npy` reader, and any index not listed above (e.g. a forged
  internal preprocessor of a HistGradientBoosting model that narrows its input).
* Denial of service: huge arrays, deep nesting, slow models.
* Code that is already installed: an allowed class runs its own methods (`__setstate__`,
  `predict`, ...), so every name in the allow-list, including the caller's, must be a class whose
  methods are safe on attacker-chosen attribute values.
"""

from __future__ import annotations

import copy
import io
import json
import math
import re
import zipfile
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import numpy as np
import skops
import skops.io as sio
from skops.io.exceptions import UntrustedTypesFoundException

from ensemble_platform.errors import PlatformError

__all__ = [
    "SKLEARN_ALLOWED",
    "MalformedModelError",
    "UnsafeModelError",
    "UnsupportedModelError",
    "XGBoostModelState",
    "allowed_names",
    "dumps",
    "loads",
]


class UnsafeModelError(PlatformError):
    """A payload that will not be loaded: it names a type outside the allow-list, uses a node
    kind this format never writes, or fails an integrity check. Nothing in it was executed."""


class MalformedModelError(UnsafeModelError):
    """A payload that is not a well-formed safe-format archive (truncated, garbage, pickle, ...)."""


class UnsupportedModelError(PlatformError):
    """`dumps` was given something this format cannot store as plain data."""


# Every type (or function) our member pipelines need, by its exact `module.name` as skops records
# it. Reviewed one by one: constructing any of these from attacker-chosen attribute values runs
# only the class's own code. Changing library versions can rename private modules; the round-trip
# tests then fail naming the new type, which must be reviewed before it is added here.
SKLEARN_ALLOWED: tuple[str, ...] = (
    # containers and scalars
    "builtins.bool",
    "builtins.bytes",
    "builtins.dict",
    "builtins.float",
    "builtins.int",
    "builtins.list",
    "builtins.slice",
    "builtins.str",
    "builtins.tuple",
    "numpy.bool",
    "numpy.dtype",
    "numpy.float32",
    "numpy.float64",
    "numpy.int32",
    "numpy.int64",
    "numpy.ndarray",
    "numpy.uint32",
    "numpy.uint64",
    "numpy.uint8",
    "numpy.random._generator.Generator",
    # functions referenced (not called) by fitted transformers
    "functools.partial",
    "sklearn.utils.validation.check_array",
    "scipy._lib.array_api_compat.numpy._aliases.asarray",
    # preprocessing
    "scipy.interpolate._bsplines.BSpline",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.impute._base.MissingIndicator",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.preprocessing._encoders.OrdinalEncoder",
    "sklearn.preprocessing._function_transformer.FunctionTransformer",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn.preprocessing._polynomial.SplineTransformer",
    # logistic regression (also the stacking meta-model and the sigmoid calibrator)
    "sklearn.linear_model._logistic.LogisticRegression",
    # isotonic calibrator
    "sklearn.isotonic.IsotonicRegression",
    # random forest / extra trees
    "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.ExtraTreeClassifier",
    "sklearn.tree._tree.Tree",
    # hist gradient boosting
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # k-nearest neighbours
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.neighbors._kd_tree.KDTree",
)

# The skops node kinds `dumps` can write for the objects above. Deliberately absent: MethodNode
# (getattr of an arbitrary name), OperatorFuncNode (operator.methodcaller & co),
# ConstructorFromReduceNode (calls a type with stored arguments), CachedNode, DefaultDictNode,
# BytearrayNode, MaskedArrayNode, RandomStateNode.
_ALLOWED_NODE_KINDS = frozenset({
    "DictNode", "ListNode", "TupleNode", "SetNode", "JsonNode", "SliceNode", "BytesNode",
    "NdArrayNode", "DTypeNode", "RandomGeneratorNode", "TypeNode", "FunctionNode", "PartialNode",
    "ObjectNode", "TreeNode", "LossNode",
})
_SCHEMA = "schema.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def allowed_names(*classes: type) -> tuple[str, ...]:
    """The allow-list entries for the given classes: `module.qualname`, sorted, no duplicates.

    Pass class objects (not strings) so that a class moving module keeps loading."""
    names = set()
    for cls in classes:
        if not isinstance(cls, type):
            raise TypeError(f"allowed_names takes classes, got {cls!r}")
        names.add(f"{cls.__module__}.{cls.__qualname__}")
    return tuple(sorted(names))


# --- XGBoost as plain data ---------------------------------------------------------------------

class XGBoostModelState:
    """A fitted xgboost scikit-learn estimator as plain data: XGBoost's own UBJSON model bytes,
    the hyper-parameters (JSON-like values only) and the remaining fitted attributes."""

    estimator: str  # a key of _xgboost_classes()
    params: dict[str, Any]
    attributes: dict[str, Any]
    model_ubj: bytes

    def __init__(self, estimator: str, params: dict[str, Any], attributes: dict[str, Any], model_ubj: bytes):
        self.estimator = estimator
        self.params = params
        self.attributes = attributes
        self.model_ubj = model_ubj

    @classmethod
    def from_estimator(cls, model: Any) -> XGBoostModelState:
        name = type(model).__name__
        if _xgboost_classes().get(name) is not type(model):
            raise UnsupportedModelError(f"cannot store {type(model).__module__}.{name}: only "
                                        f"{sorted(_xgboost_classes())} are supported")
        if not model.__sklearn_is_fitted__():
            raise UnsupportedModelError(f"cannot store an unfitted {name}")
        params = model.get_params(deep=False)
        for key, value in params.items():
            if not _is_plain(value):
                raise UnsupportedModelError(f"cannot store {name} parameter {key}={value!r}: only numbers, "
                                            "strings, None and lists/dicts of them can be stored as data")
        attributes = {k: v for k, v in vars(model).items() if k not in params and k != "_Booster"}
        if "kwargs" in attributes and not _is_plain(attributes["kwargs"]):
            raise UnsupportedModelError(f"cannot store {name} keyword arguments {attributes['kwargs']!r}")
        return cls(name, params, attributes, bytes(model.get_booster().save_raw("ubj")))

    def to_estimator(self) -> Any:
        """The estimator, rebuilt through XGBoost's public constructor and `load_model`."""
        classes = _xgboost_classes()
        if not isinstance(self.estimator, str) or self.estimator not in classes:
            raise UnsafeModelError(f"XGBoost state names estimator {self.estimator!r}, not one of {sorted(classes)}")
        if type(self.model_ubj) is not bytes:  # a str would be read as a file name or URL
            raise UnsafeModelError(f"XGBoost model must be stored as bytes, got {type(self.model_ubj).__name__}")
        for label, mapping in (("params", self.params), ("attributes", self.attributes)):
            if not isinstance(mapping, dict) or not all(isinstance(k, str) for k in mapping):
                raise UnsafeModelError(f"XGBoost {label} must be a dict with string keys")
        bad = [k for k, v in self.params.items() if not _is_plain(v)]
        if bad or "_Booster" in self.attributes or set(self.attributes) & set(self.params):
            raise UnsafeModelError(f"XGBoost state has parameters or attributes that are not plain data: {bad}")
        model = classes[self.estimator](**self.params)
        try:
            model.load_model(bytearray(self.model_ubj))
        except Exception as exc:  # xgboost.core.XGBoostError and friends
            raise MalformedModelError(f"XGBoost refused the stored model: {exc}") from exc
        # load_model re-derives a few hyper-parameters (objective, base_score, ...) from the booster:
        # put back exactly what was fitted, without pushing anything into the booster.
        for key, value in self.params.items():
            if key in vars(model):
                vars(model)[key] = value
        vars(model).update(self.attributes)
        return model


@cache
def _xgboost_classes() -> dict[str, Any]:
    from xgboost import XGBClassifier, XGBRegressor

    return {"XGBClassifier": XGBClassifier, "XGBRegressor": XGBRegressor}


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_plain(v) for k, v in value.items())
    return False


def _is_xgboost(obj: Any) -> bool:
    module = type(obj).__module__
    if not (module == "xgboost" or module.startswith("xgboost.")):
        return False
    from xgboost.sklearn import XGBModel

    return isinstance(obj, XGBModel)


def _map_graph(obj: Any, replace: Callable[[Any], Any], memo: dict[int, Any]) -> Any:
    """`obj` with every part for which `replace` returns something other than None swapped for
    that; containers and objects on the way are shallow-copied, `obj` itself is never mutated."""
    key = id(obj)
    if key in memo:
        return memo[key]
    swapped = replace(obj)
    if swapped is not None:
        memo[key] = swapped
        return swapped
    memo[key] = obj  # cycles resolve to the original
    result = obj
    if isinstance(obj, (list, tuple)):
        items = [_map_graph(v, replace, memo) for v in obj]
        if any(a is not b for a, b in zip(items, obj)):
            if type(obj) not in (list, tuple):
                raise UnsupportedModelError(f"cannot rewrite a {type(obj).__name__} holding an XGBoost model")
            result = type(obj)(items)
    elif isinstance(obj, dict):
        values = {k: _map_graph(v, replace, memo) for k, v in obj.items()}
        if any(values[k] is not v for k, v in obj.items()):
            if type(obj) is not dict:
                raise UnsupportedModelError(f"cannot rewrite a {type(obj).__name__} holding an XGBoost model")
            result = values
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, np.ndarray)) and not callable(obj):
        changed = {k: m for k, v in vars(obj).items() if (m := _map_graph(v, replace, memo)) is not v}
        if changed:
            result = copy.copy(obj)
            vars(result).update(changed)
    memo[key] = result
    return result


def _to_state(obj: Any) -> Any:
    return XGBoostModelState.from_estimator(obj) if _is_xgboost(obj) else None


def _from_state(obj: Any) -> Any:
    return obj.to_estimator() if type(obj) is XGBoostModelState else None


# --- dumps -------------------------------------------------------------------------------------

def dumps(obj: Any) -> bytes:
    """The fitted object as canonical skops bytes: identical for the same object in any process
    with the same library versions (no timestamps, object ids or random file names)."""
    prepared = _map_graph(obj, _to_state, {})
    try:
        schema, blobs = _skops_state(prepared)
    except (TypeError, ValueError) as exc:  # skops's UnsupportedTypeException is a TypeError
        raise UnsupportedModelError(f"cannot store {type(obj).__name__} as plain data: {exc}") from exc
    return _canonical(schema, blobs)


class _BlobSink:
    """Where skops's state functions write their `.npy`/`.bin` blobs: a dict, not a zip archive
    (the only two calls they make on their `zip_file` are these)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def writestr(self, name: str, data: Any) -> None:
        self.blobs[name] = bytes(data)

    def namelist(self) -> list[str]:
        return list(self.blobs)


def _skops_state(obj: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    """What `skops.io.dumps` puts in its archive (schema and blobs), without the archive.

    `sio.dumps` encodes the schema with `json.dumps(indent=2)` (Python's pure-Python encoder) into
    a zip that `_canonical` then reads back and decodes: ~40% of `dumps` for a forest. So this calls skops's own `get_state` as `skops.io._persist._save` does (the
    skops version is pinned to one minor release) and round-trips the state through the C encoder,
    which gives the very structure `sio.dumps` + `json.loads` gives (tuples as lists, keys as str);
    a test checks the bytes equal the public path's."""
    from skops.io._utils import SaveContext, get_state  # skops.io (imported above) registered the dispatch

    sink = _BlobSink()
    context = SaveContext(zip_file=sink)
    state = get_state(obj, context)
    context.clear_memo()
    state["protocol"] = context.protocol
    state["_skops_version"] = skops.__version__
    return json.loads(json.dumps(state)), sink.blobs


def _canonical(schema: dict[str, Any], blobs: dict[str, bytes]) -> bytes:
    _sort_sets(schema)
    ids: dict[int, int] = {}
    files: dict[str, str] = {}
    _renumber(schema, ids, files)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        _write_entry(archive, _SCHEMA, json.dumps(schema, indent=1).encode())
        for old, new in files.items():
            _write_entry(archive, new, _zero_padding(blobs[old]) if new.endswith(".npy") else blobs[old])
    return buffer.getvalue()


def _zero_padding(blob: bytes) -> bytes:
    """Structured arrays (tree nodes, KD-tree nodes) have padding bytes between fields that hold
    whatever was in memory; rewrite them as zeros so equal arrays give equal bytes."""
    array = np.load(io.BytesIO(blob), allow_pickle=False)
    if array.dtype.names is None:
        return blob
    clean = np.zeros(array.shape, dtype=array.dtype)
    for name in array.dtype.names:
        clean[name] = array[name]
    out = io.BytesIO()
    np.save(out, clean, allow_pickle=False)
    return out.getvalue()


def _write_entry(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _is_node(state: Any) -> bool:
    return isinstance(state, dict) and isinstance(state.get("__loader__"), str)


def _sort_sets(state: Any) -> None:
    """Set members in a canonical order (set iteration order depends on the hash seed)."""
    if isinstance(state, dict):
        for value in state.values():
            _sort_sets(value)
        if _is_node(state) and state["__loader__"] == "SetNode":
            state["content"].sort(key=lambda s: json.dumps(_without_ids(s), sort_keys=True))
    elif isinstance(state, list):
        for value in state:
            _sort_sets(value)


def _without_ids(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: _without_ids(v) for k, v in state.items() if k != "__id__"}
    if isinstance(state, list):
        return [_without_ids(v) for v in state]
    return state


def _renumber(state: Any, ids: dict[int, int], files: dict[str, str]) -> None:
    """Object ids -> 1, 2, ... and blob names -> 000000.npy, ... in order of first appearance; the
    same old id (a shared object) keeps one new id, so sharing of containers and objects survives."""
    if isinstance(state, dict):
        if _is_node(state):
            if state["__loader__"] == "JsonNode":
                # Which equal str/int/float values were one object is an accident of how they were made
                # (interning, caches): meaningless for immutable values, and it would change the bytes.
                state.pop("__id__", None)
            elif isinstance(state.get("__id__"), int):
                state["__id__"] = ids.setdefault(state["__id__"], len(ids) + 1)  # skops ignores id 0
            if isinstance(state.get("file"), str):
                old = state["file"]
                state["file"] = files.setdefault(old, f"{len(files):06d}.{old.rsplit('.', 1)[-1]}")
        for value in state.values():
            _renumber(value, ids, files)
    elif isinstance(state, list):
        for value in state:
            _renumber(value, ids, files)


# --- loads -------------------------------------------------------------------------------------

def loads(data: bytes, allowed: Iterable[str]) -> Any:
    """The object in `data`, if every type it names is in `SKLEARN_ALLOWED` or `allowed` (exact
    `module.qualname` strings, see `allowed_names`); otherwise `UnsafeModelError`, raised before
    anything is imported or constructed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"loads takes bytes, got {type(data).__name__}")
    data = bytes(data)
    extra = tuple(allowed) if not isinstance(allowed, str) else (allowed,)
    bad_names = [n for n in extra if not isinstance(n, str) or not _NAME.fullmatch(n)]
    if bad_names:
        raise ValueError(f"allowed must be exact 'module.Name' strings, got {bad_names}")
    trusted = frozenset(SKLEARN_ALLOWED) | frozenset(allowed_names(XGBoostModelState)) | frozenset(extra)

    schema = _read_schema(data)
    named = _audit(schema)
    untrusted = sorted(named - trusted)
    if untrusted:
        raise UnsafeModelError(f"refusing to load: the payload names types outside the allow-list: {untrusted}")
    # skops's own audit runs inside `sio.loads`, on the tree it builds, before anything is
    # constructed: given the allow-list as `trusted`, it refuses what it considers unsafe outside it
    # (a separate `get_untrusted_types` pass built the same tree twice: ~40% of a forest's load).
    try:
        obj = sio.loads(data, trusted=sorted(trusted))
    except UntrustedTypesFoundException as exc:
        raise UnsafeModelError(f"refusing to load: skops reports types outside the allow-list: {exc}") from exc
    except Exception as exc:
        raise MalformedModelError(f"payload passed the audit but could not be built: "
                                  f"{type(exc).__name__}: {exc}") from exc
    obj = _map_graph(obj, _from_state, {})
    _check_integrity(obj)
    return obj


def _read_schema(data: bytes) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            compressed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
            if compressed:
                raise MalformedModelError(f"compressed entries are never written by this format: {compressed}")
            names = [i.filename for i in infos]
            if len(set(names)) != len(names) or _SCHEMA not in names:
                raise MalformedModelError("archive has duplicate entries or no schema.json")
            schema = json.loads(archive.read(_SCHEMA))
    except MalformedModelError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError, RecursionError,
            UnicodeDecodeError, NotImplementedError) as exc:
        raise MalformedModelError(f"not a safe-format payload (a skops zip archive): "
                                  f"{type(exc).__name__}: {exc}") from exc
    if not _is_node(schema):
        raise MalformedModelError("schema.json does not describe an object")
    if schema.get("protocol") != _skops_protocol() or type(schema.get("protocol")) is not int:
        raise MalformedModelError(f"payload uses skops protocol {schema.get('protocol')!r}; this installation "
                                  f"reads protocol {_skops_protocol()} only")
    referenced: set[str] = set()
    try:
        _collect_files(schema, referenced)
    except RecursionError as exc:
        raise MalformedModelError("schema.json is nested too deeply") from exc
    if referenced != set(names) - {_SCHEMA}:
        raise MalformedModelError("archive entries do not match the files schema.json refers to")
    return schema


def _collect_files(state: Any, files: set[str]) -> None:
    if isinstance(state, dict):
        if _is_node(state) and "file" in state:
            if not isinstance(state["file"], str):
                raise MalformedModelError("a node's file reference is not a string")
            files.add(state["file"])
        for value in state.values():
            _collect_files(value, files)
    elif isinstance(state, list):
        for value in state:
            _collect_files(value, files)


@cache
def _skops_protocol() -> int:
    with zipfile.ZipFile(io.BytesIO(sio.dumps(0))) as archive:
        return int(json.loads(archive.read(_SCHEMA))["protocol"])


def _audit(schema: dict[str, Any]) -> set[str]:
    """Every type/function name in the payload; refuses node kinds this format never writes.

    skops treats exactly the dicts carrying `__loader__` as nodes, and this visits every dict,
    so no node escapes the audit."""
    named: set[str] = set()
    kinds: set[str] = set()

    def visit(state: Any) -> None:
        if isinstance(state, dict):
            if "__loader__" in state:
                loader, module, name = state.get("__loader__"), state.get("__module__"), state.get("__class__")
                if not (isinstance(loader, str) and isinstance(module, str) and isinstance(name, str)):
                    raise MalformedModelError("a node of schema.json lacks a string __loader__/__module__/__class__")
                kinds.add(loader)
                named.add(f"{module}.{name}")
            for value in state.values():
                visit(value)
        elif isinstance(state, list):
            for value in state:
                visit(value)

    try:
        visit(schema)
    except RecursionError as exc:
        raise MalformedModelError("schema.json is nested too deeply") from exc
    if kinds - _ALLOWED_NODE_KINDS:
        raise UnsafeModelError(f"refusing to load: the payload uses skops node kinds this format never writes: "
                               f"{sorted(kinds - _ALLOWED_NODE_KINDS)} (types named: {sorted(named)})")
    return named


# --- integrity of indices that compiled code trusts --------------------------------------------

def _check_integrity(obj: Any) -> None:
    from scipy.interpolate import BSpline
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.neighbors import BallTree, KDTree
    from sklearn.tree._tree import Tree

    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, (str, bytes, int, float, np.ndarray, np.generic, type)):
            continue
        seen.add(id(item))
        if isinstance(item, Tree):
            _check_tree(item)
        elif isinstance(item, (KDTree, BallTree)):
            _check_binary_tree(item)
        elif isinstance(item, BSpline):
            _check_bspline(item, BSpline)
        elif isinstance(item, TreePredictor):
            pass  # checked with its estimator, which knows the feature count
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "__dict__") and not callable(item):
            attrs = vars(item)
            tree = attrs.get("tree_")
            if isinstance(tree, Tree) and attrs.get("n_features_in_") != tree.n_features:
                raise UnsafeModelError(f"{type(item).__name__}: n_features_in_ does not match its tree")
            if "_predictors" in attrs:
                _check_hist_gradient_boosting(item, TreePredictor)
            stack.extend(attrs.values())


def _check_tree(tree: Any) -> None:
    n = tree.node_count
    left, right, feature = tree.children_left, tree.children_right, tree.feature
    index = np.arange(n)
    leaf = left == -1
    ok = (
        n >= 1 and len(left) == len(right) == len(feature) == n and tree.value.shape[0] == n
        and np.array_equal(leaf, right == -1)
        and bool(np.all((left[~leaf] > index[~leaf]) & (left[~leaf] < n)))
        and bool(np.all((right[~leaf] > index[~leaf]) & (right[~leaf] < n)))
        and bool(np.all((feature[~leaf] >= 0) & (feature[~leaf] < tree.n_features)))
    )
    if not ok:
        raise UnsafeModelError("a decision tree has child or feature indices out of range")


def _check_hist_gradient_boosting(model: Any, predictor_type: Any) -> None:
    name = type(model).__name__
    n_features = getattr(model, "n_features_in_", None)
    mapper = getattr(model, "_bin_mapper", None)
    is_categorical = getattr(mapper, "is_categorical_", None)
    if not isinstance(n_features, int) or not isinstance(model._predictors, list):
        raise UnsafeModelError(f"{name}: malformed n_features_in_ or predictors")
    for predictors in model._predictors:
        stage: list[Any] = predictors if isinstance(predictors, list) else [None]
        for predictor in stage:
            if type(predictor) is not predictor_type:
                raise UnsafeModelError(f"{name}: a predictor is not a TreePredictor")
            nodes = predictor.nodes
            if not isinstance(nodes, np.ndarray) or nodes.ndim != 1 or len(nodes) == 0:
                raise UnsafeModelError(f"{name}: malformed predictor nodes")
            n = len(nodes)
            index = np.arange(n)
            split = nodes["is_leaf"] == 0
            ok = (
                bool(np.all((nodes["left"][split] > index[split]) & (nodes["left"][split] < n)))
                and bool(np.all((nodes["right"][split] > index[split]) & (nodes["right"][split] < n)))
                and bool(np.all(nodes["feature_idx"][split] < n_features))
            )
            categorical = split & (nodes["is_categorical"] != 0)
            if ok and categorical.any():
                bitsets = predictor.raw_left_cat_bitsets
                features = nodes["feature_idx"][categorical]
                ok = (
                    isinstance(bitsets, np.ndarray) and bitsets.ndim == 2 and bitsets.shape[1] == 8
                    and bool(np.all(nodes["bitset_idx"][categorical] < bitsets.shape[0]))
                    and isinstance(is_categorical, np.ndarray) and is_categorical.shape == (n_features,)
                    and bool(np.all(is_categorical[features]))
                )
            if not ok:
                raise UnsafeModelError(f"{name}: a boosted tree has node, feature or category indices out of range")


def _check_binary_tree(tree: Any) -> None:
    data, index, node_data, node_bounds, leaf_size, n_levels, n_nodes = tree.__getstate__()[:7]
    sample_weight = tree.__getstate__()[12]
    n = data.shape[0] if isinstance(data, np.ndarray) and data.ndim == 2 else -1
    ok = (
        n >= 1 and isinstance(index, np.ndarray) and index.shape == (n,)
        and np.array_equal(np.sort(index), np.arange(n))
        and leaf_size >= 1 and n_levels == int(math.log2(max(1.0, (n - 1) / leaf_size)) + 1)
        and n_nodes == 2 ** n_levels - 1 and node_data.shape == (n_nodes,)
        and node_bounds.ndim == 3 and node_bounds.shape[1:] == (n_nodes, data.shape[1])
        and bool(np.all((node_data["idx_start"] >= 0) & (node_data["idx_start"] <= node_data["idx_end"])
                        & (node_data["idx_end"] <= n)))
        and (sample_weight is None or np.shape(sample_weight) == (n,))
    )
    if not ok:
        raise UnsafeModelError(f"a {type(tree).__name__} has index arrays inconsistent with its data")


def _check_bspline(spline: Any, bspline_type: type) -> None:
    try:  # the constructor's own validation, which loading bypasses
        bspline_type(spline.t, spline.c, spline.k, extrapolate=spline.extrapolate, axis=spline.axis)
    except Exception as exc:
        raise UnsafeModelError(f"a B-spline has inconsistent knots, coefficients or degree: {exc}") from exc
