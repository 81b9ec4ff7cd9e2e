"""Compose YAML, read one way everywhere: the templating, the compose policy, the drivers and the catalogue.

The security policy must judge exactly the document the deployer runs, so there is one reader, under the
rules compose itself uses:

* **YAML 1.2's core schema**, as compose and ``docker stack`` (Go, yaml.v3) read it, not PyYAML's default
  YAML 1.1: an unquoted ``22:22`` stays the string ``"22:22"`` (YAML 1.1 reads the sexagesimal integer 1342)
  and ``yes``/``on``/``no``/``off`` stay strings. Where compose expects a boolean it then casts such a string
  itself; :func:`compose_bool` is that cast (``privileged: yes`` is true for compose, with a warning).
* **Bounded alias expansion** ("billion laughs"): a document whose anchors and aliases expand to more than
  :data:`YAML_MAX_NODES` nodes or :data:`YAML_MAX_EXPANDED_CHARS` characters of scalars is refused before
  anything walks it; so is a recursive alias, and a document nested deeper than :data:`MAX_DEPTH` (the
  policy, the labelling and the dumping walk documents recursively).
* **libyaml's parser** when PyYAML has it (about ten times faster: the policy reads every document on the
  request path), PyYAML's pure-Python port of the same parser otherwise. When libyaml refuses a document, the
  pure-Python parser reads it again for the message, which names the token it stumbled on and where.

Every problem is a ``ValidationFailed``: ``invalid_yaml`` (naming the line and column) or ``yaml_limit``
(naming the setting). Dumping quotes every string that either YAML version could read as something else, so
a document survives our round trip unchanged for the Go tools.

Pure logic: the limits are set from the settings by ``services/stacks/bounded_render.py`` (``configure``).
"""

from __future__ import annotations

import copy
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import yaml

from backend.app.core.exceptions import ValidationFailed

__all__ = [
    "YAML_MAX_EXPANDED_CHARS",
    "YAML_MAX_NODES",
    "compose_bool",
    "configure",
    "dump",
    "load",
]

#: Bounds on what a document may expand to through anchors and aliases: nodes, and characters of scalars,
#: counted as if every alias were a copy (settings ``YAML_MAX_NODES`` / ``YAML_MAX_EXPANDED_CHARS``).
YAML_MAX_NODES = 100_000
YAML_MAX_EXPANDED_CHARS = 4 * 1_048_576


def configure(*, max_nodes: int, max_expanded_chars: int) -> None:
    """Make these the bounds of every read in this process."""
    global YAML_MAX_NODES, YAML_MAX_EXPANDED_CHARS
    YAML_MAX_NODES, YAML_MAX_EXPANDED_CHARS = max_nodes, max_expanded_chars


# --- the YAML 1.2 core schema -------------------------------------------------------------------------


#: Nesting deeper than this is refused (a compose document nests a dozen levels at most).
MAX_DEPTH = 200


class _Loader(yaml.SafeLoader):
    """PyYAML's pure-Python safe loader (its messages name the token it stumbled on) with the 1.2 resolvers."""


_CSafeLoader = getattr(yaml, "CSafeLoader", None)
_FastLoader = type("_FastLoader", (_CSafeLoader,), {}) if _CSafeLoader is not None else None


class _Dumper(yaml.SafeDumper):
    pass


_CORE_RESOLVERS = [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:merge", r"^(?:<<)$", ["<"]),  # compose honours merge keys
]

_LOADERS = [loader for loader in (_FastLoader, _Loader) if loader is not None]
for _loader in _LOADERS:
    _loader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in _CORE_RESOLVERS:
    for _loader in _LOADERS:
        _loader.add_implicit_resolver(_tag, re.compile(_pattern), _first)
    # The dumper keeps PyYAML's YAML 1.1 resolvers and adds the 1.2 ones: a string is written quoted
    # whenever either reading would turn its plain form into something else.
    _Dumper.add_implicit_resolver(_tag, re.compile(_pattern), _first)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value = loader.construct_scalar(node)
    if value.startswith("0o"):
        return int(value[2:], 8)
    if value.startswith("0x"):
        return int(value[2:], 16)
    return int(value, 10)


for _loader in _LOADERS:
    _loader.add_constructor("tag:yaml.org,2002:int", _construct_int)

_TRUE = frozenset({"true", "y", "yes", "on"})
_FALSE = frozenset({"false", "n", "no", "off"})


def compose_bool(value: Any) -> bool | None:
    """A value where compose expects a boolean, as compose reads it: a YAML boolean, or a string it casts
    (case-insensitively ``true``/``y``/``yes``/``on``, ``false``/``n``/``no``/``off``; compose warns that
    the last six are not YAML 1.2). ``None`` for anything compose refuses there (``1``, ``maybe``, ``""``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return None


# --- reading, bounded ---------------------------------------------------------------------------------


def _limit(what: str, *, reason: str, **quoted: int) -> ValidationFailed:
    """A ``yaml_limit`` refusal: ``reason`` is a stable word (with the limit it ``quoted``) a client words itself."""
    return ValidationFailed(f"invalid YAML: {what}; the document is refused", code="yaml_limit", params={"reason": reason, **quoted})


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a composed graph whose expansion (aliases counted as copies) exceeds the bounds.

    PyYAML composes an alias as a second reference to the anchored node, so composing stays linear; the
    blow-up happens in whoever walks the result (``docker compose``, the policy, labelling, dumping). The
    sizes are computed once per distinct node (memoised, iterative), so a bomb is refused in linear time.
    """
    max_nodes, max_chars = YAML_MAX_NODES, YAML_MAX_EXPANDED_CHARS
    sizes: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            nodes, chars = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            for child in _children(node):
                child_nodes, child_chars = sizes[id(child)]
                nodes += child_nodes
                chars += child_chars
            if nodes > max_nodes:
                raise _limit(
                    f"anchors and aliases expand the document to more than {max_nodes} nodes (limit YAML_MAX_NODES)",
                    reason="nodes",
                    max=max_nodes,
                )
            if chars > max_chars:
                raise _limit(
                    f"anchors and aliases expand the document to more than {max_chars} characters (limit YAML_MAX_EXPANDED_CHARS)",
                    reason="chars",
                    max=max_chars,
                )
            sizes[key] = (nodes, chars)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _limit("an alias refers to a node that contains it (recursive alias)", reason="recursive_alias")
        if len(on_path) >= MAX_DEPTH:  # on_path is the path from the root to this node
            raise _limit("the document is nested too deeply", reason="depth")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _syntax_error(exc: yaml.YAMLError) -> ValidationFailed:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        params = {"line": mark.line + 1, "column": mark.column + 1} if mark is not None else {}
        return ValidationFailed(f"invalid YAML: {where}{problem}{context}", code="invalid_yaml", params={**params, "problem": problem})
    return ValidationFailed(f"invalid YAML: {exc}", code="invalid_yaml")


# --- documents read before ----------------------------------------------------------------------------
# A deployment's document is read by the compose policy, the labelling and several steps of the driver (a
# dozen reads per deploy, each a parse and a walk of the expansion bounds). The last documents read are kept
# by the hash of their text and the bounds they were read under, and each caller gets its own deep copy (the
# callers change what they read). A document read under other bounds is read again; a refusal is not kept.

_READ_MAX_ENTRIES = 64
_READ_MAX_CHARS = 256 * 1024  # longer texts are read every time
_read_documents: OrderedDict[tuple[bytes, int, int], Any] = OrderedDict()
_read_lock = threading.Lock()


def load(text: str) -> Any:
    """``text`` read as compose reads it, its alias expansion bounded (see the module docstring): a new
    object for each call (a text read before under the same bounds is copied from that reading).

    ``None`` for an empty document. Raises ``ValidationFailed`` (``invalid_yaml`` or ``yaml_limit``).
    """
    if not isinstance(text, str) or len(text) > _READ_MAX_CHARS:
        return _load(text)
    key = (hashlib.sha256(text.encode()).digest(), YAML_MAX_NODES, YAML_MAX_EXPANDED_CHARS)
    with _read_lock:
        known = _read_documents.get(key, _read_documents)
        if known is not _read_documents:
            _read_documents.move_to_end(key)
    if known is not _read_documents:
        return copy.deepcopy(known)
    doc = _load(text)
    kept = copy.deepcopy(doc)
    with _read_lock:
        _read_documents[key] = kept
        while len(_read_documents) > _READ_MAX_ENTRIES:
            _read_documents.popitem(last=False)
    return doc


def _load(text: str) -> Any:
    if _FastLoader is None:
        return _read(_Loader, text)
    try:
        return _read(_FastLoader, text)
    except ValidationFailed as exc:
        if exc.code != "invalid_yaml":
            raise
        refused = exc
    _read(_Loader, text)  # raises with the pure-Python parser's message (it names the token and the place) ...
    raise refused  # ... or, should it accept what libyaml refused, libyaml's refusal stands


def _read(loader_class: type, text: str) -> Any:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except RecursionError:
        raise _limit("the document is nested too deeply", reason="depth") from None
    except yaml.YAMLError as exc:
        raise _syntax_error(exc) from None
    finally:
        loader.dispose()


def dump(doc: Mapping[str, Any]) -> str:
    """``doc`` as YAML that compose reads back unchanged (ambiguous strings quoted)."""
    return yaml.dump(dict(doc), Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
