"""The web UI words what the server says with a fixed vocabulary in the user's language (``frontend/src/i18n``):
these tests fail when the server gains a word the UI's French catalogue lacks. Error codes and the 422 field
types of our own validators (``apiErrors.fr.ts``), a deployment's step titles (``serverWords.ts``), and why a
connection test failed (``targets.failure`` in ``en.ts`` and ``fr.ts``) and why the services' output ended
(``logs.ended``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from backend.app.schemas.events import ServiceLogsEndData
from backend.app.schemas.targets import TestFailure
from backend.app.services.deployments.runner import STEPS

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "backend" / "app"
I18N = ROOT / "frontend" / "src" / "i18n"

#: Where the server names an error's code: ``code="..."`` (an exception's argument or class attribute), a
#: real-time ``error`` frame (``_error("...")``, ``"code": "..."``).
CODE_PATTERNS = (
    re.compile(r"""\bcode\s*=\s*["']([a-z][a-z0-9_]*)["']"""),
    re.compile(r"""\b_error\(\s*["']([a-z][a-z0-9_]*)["']"""),
    re.compile(r"""["']code["']\s*:\s*["']([a-z][a-z0-9_]*)["']"""),
)
CUSTOM_TYPE = re.compile(r"""PydanticCustomError\(\s*["']([a-z][a-z0-9_]*)["']""")
#: Field types whose message is the schema author's own (the stack editor shows them at their line).
AUTHOR_FACING = {"windflow"}


def _catalogue(name: str) -> set[str]:
    """The keys of one of ``apiErrors.fr.ts``'s two objects."""
    text = (I18N / "apiErrors.fr.ts").read_text(encoding="utf-8")
    body = text.split(f"export const {name}", 1)[1].split("\n}", 1)[0]
    return set(re.findall(r"^\s{2}([a-z][a-z0-9_]*):", body, re.M))


def _server_words(pattern: re.Pattern[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in APP.rglob("*.py"):
        for word in pattern.findall(path.read_text(encoding="utf-8")):
            found.setdefault(word, str(path.relative_to(ROOT)))
    return found


def test_every_error_code_of_the_server_reads_in_french() -> None:
    codes: dict[str, str] = {}
    for pattern in CODE_PATTERNS:
        codes.update(_server_words(pattern))
    assert len(codes) > 40 and "role_required" in codes and "bad_frame" in codes  # the sources were read
    french = _catalogue("apiErrorsFr")
    assert {code: where for code, where in codes.items() if code not in french} == {}


def test_every_field_type_of_our_validators_reads_in_french() -> None:
    types = _server_words(CUSTOM_TYPE)
    assert "invalid_endpoint" in types
    french = _catalogue("apiFieldsFr")
    assert {t: where for t, where in types.items() if t not in french and t not in AUTHOR_FACING} == {}


def test_the_runners_steps_are_the_ones_the_ui_translates() -> None:
    text = (I18N / "serverWords.ts").read_text(encoding="utf-8")
    keys = dict(re.findall(r"^\s+'([^']+)': '([a-z_]+)',$", text, re.M))
    assert keys == {title: method for title, method in STEPS}
    for catalogue in ("en.ts", "fr.ts"):
        steps = (I18N / catalogue).read_text(encoding="utf-8").split("\n  steps: {", 1)[1].split("\n  },", 1)[0]
        assert set(re.findall(r"^\s+([a-z_]+):", steps, re.M)) == set(keys.values()), catalogue


def test_every_connection_test_failure_reads_in_both_languages() -> None:
    for catalogue in ("en.ts", "fr.ts"):
        failure = (I18N / catalogue).read_text(encoding="utf-8").split("\n    failure: {", 1)[1].split("\n    },", 1)[0]
        assert set(re.findall(r"^\s+([a-z_]+):", failure, re.M)) == {c.value for c in TestFailure}, catalogue


def test_every_end_of_the_services_output_reads_in_both_languages() -> None:
    codes = {c for c in get_args(get_args(ServiceLogsEndData.model_fields["code"].annotation)[0])}
    assert "containers_stopped" in codes
    for catalogue in ("en.ts", "fr.ts"):
        ended = (I18N / catalogue).read_text(encoding="utf-8").split("\n    ended: {", 1)[1].split("\n    },", 1)[0]
        assert set(re.findall(r"^\s+([a-z_]+):", ended, re.M)) == codes, catalogue


def _keys_of(catalogue: str, block: str) -> set[str]:
    """The keys of ``system.<block>`` in one of the catalogues."""
    text = (I18N / catalogue).read_text(encoding="utf-8")
    body = text.split("\n  system: {", 1)[1].split(f"\n    {block}: {{", 1)[1].split("\n    },", 1)[0]
    return set(re.findall(r"^\s{6}([a-z_]+):", body, re.M))


def test_every_execution_mode_reason_and_worker_problem_reads_in_both_languages() -> None:
    from backend.app.core.celery_manager import REASON_CODES
    from backend.app.runtime.worker_watchdog import PROBLEM_CODES

    assert "broker_unreachable" in REASON_CODES and "pool_not_refilled" in PROBLEM_CODES
    for catalogue in ("en.ts", "fr.ts"):
        assert _keys_of(catalogue, "reasons") == set(REASON_CODES), catalogue
        assert _keys_of(catalogue, "problems") == set(PROBLEM_CODES), catalogue


#: Where the template, YAML and compose refusals the stack editor shows name their ``params.reason``.
REASON_SOURCES = (
    "services/stacks/templating/sandbox.py",
    "services/stacks/templating/documents.py",
    "services/stacks/bounded_render.py",
    "engines/compose_yaml.py",
    "services/targets/compose_policy.py",
)
REASON_PATTERNS = (
    re.compile(r"""\breason\s*=\s*["']([a-z][a-z0-9_]*)["']"""),
    re.compile(r"""["']reason["']\s*:\s*["']([a-z][a-z0-9_]*)["']"""),
)


def test_every_reason_of_a_refused_document_reads_in_french() -> None:
    reasons = {word for source in REASON_SOURCES for p in REASON_PATTERNS for word in p.findall((APP / source).read_text(encoding="utf-8"))}
    assert {"syntax", "undefined", "nodes", "memory", "no_services", "killed"} <= reasons  # the sources were read
    text = (I18N / "apiErrors.fr.ts").read_text(encoding="utf-8")
    body = text.split("export const apiReasonsFr", 1)[1].split("\n}", 1)[0]
    french = set(re.findall(r"^\s{4}([a-z][a-z0-9_]*):", body, re.M))
    assert reasons - french == set()


def _variable_reasons(catalogue: str) -> set[str]:
    """The keys of ``variableReasons.ts``'s object for one language."""
    text = (I18N / "variableReasons.ts").read_text(encoding="utf-8")
    body = text.split(f"export const variableReasons{catalogue}", 1)[1].split("\n}", 1)[0]
    return set(re.findall(r"^\s{2}([a-z][a-z0-9_]*):", body, re.M))


def _reason_argument(node, position: int):
    """The ``reason`` of a call: its keyword, else its positional argument at ``position``."""
    for keyword in node.keywords:
        if keyword.arg == "reason":
            return keyword.value
    return node.args[position] if len(node.args) > position else None


def test_every_reason_of_a_refused_variable_value_reads_in_both_languages() -> None:
    """Every ``ValueProblem(text, reason, ...)``, schema ``problem(text, at, reason=...)`` and
    ``SchemaProblem(path, text, reason, params)`` the server raises names its reason as a literal, and the UI
    words it in English and French (``invalid_variables`` and ``invalid_variable_schema`` carry them): a
    variable schema's problems (min above max, a duplicate name, an unknown field) as well as a value's."""
    import ast

    positions = {"ValueProblem": 1, "problem": 2, "SchemaProblem": 2}
    reasons: dict[str, str] = {}
    for path in APP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = getattr(node.func, "id", None) if isinstance(node, ast.Call) else None
            if name not in positions:
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            reason = _reason_argument(node, positions[name])
            if name == "problem" and ast.unparse(reason) in ("exc.reason", "ctx['reason']"):
                continue  # a ValueProblem's, passed on
            if name == "SchemaProblem" and reason is not None and ast.unparse(reason) == "ctx['reason']":
                continue  # a problem()'s, passed on
            assert isinstance(reason, ast.Constant) and isinstance(reason.value, str), f"{where}: no literal reason"
            reasons.setdefault(reason.value, where)
    assert {"not_integer", "min_length", "pattern", "not_a_choice", "required", "generator_failed"} <= set(reasons)
    assert {"min_above_max", "duplicate_name", "unknown_field", "field_type", "not_a_list"} <= set(reasons)
    for catalogue in ("En", "Fr"):
        assert {r: where for r, where in reasons.items() if r not in _variable_reasons(catalogue)} == {}, catalogue


def _ts_object(path: Path, name: str) -> dict[str, str]:
    """The ``key: 'text'`` pairs of an exported object of a catalogue (texts on one line or the next)."""
    body = path.read_text(encoding="utf-8").split(f"export const {name}", 1)[1].split("\n}", 1)[0]
    return dict(re.findall(r"^\s{2}([a-z_]+):\s*'((?:[^'\\]|\\.)*)',$", body, re.M))


def test_every_deployment_error_and_log_sentence_reads_in_french() -> None:
    """A deployment's ``error_message``, the lines WindFlow writes into its log and why the watcher says a service
    is not up have a code
    (``core/deployment_words.py``); the UI words each in French (``i18n/deploymentWords.ts``) with no parameter
    the server's sentence does not give."""
    from backend.app.core.deployment_words import ERRORS, LOG_LINES, SERVICE_REASONS

    words = I18N / "deploymentWords.ts"
    from backend.app.core.deployment_words import CONTAINER_STATES, PREPARE_DETAILS, WAITING_DETAILS

    tables = (
        (ERRORS, "deploymentErrorsFr"),
        (LOG_LINES, "logLinesFr"),
        (SERVICE_REASONS, "serviceReasonsFr"),
        (PREPARE_DETAILS, "prepareDetailsFr"),
        (CONTAINER_STATES, "containerStatesFr"),
        (WAITING_DETAILS, "waitingDetailsFr"),
    )
    for table, name in tables:
        french = _ts_object(words, name)
        assert set(table) - set(french) == set(), name
        for code, text in french.items():
            assert code in table, f"{name}.{code}: no such sentence on the server"
            given = set(re.findall(r"\{(\w+)\}", table[code]))
            assert set(re.findall(r"\{(\w+)\}", text)) <= given, f"{name}.{code}"
    quoted = re.search(r"QUOTED = new Set\(\[([^\]]*)\]\)", words.read_text(encoding="utf-8"))
    from backend.app.core.deployment_words import QUOTED

    assert quoted is not None and set(re.findall(r"'(\w+)'", quoted.group(1))) == set(QUOTED)


def test_every_delivery_error_reads_in_french() -> None:
    """Why a notification's delivery failed has a code (``core/delivery_words.py``); the Notifications page words
    each in French (``i18n/deliveryWords.ts``) with no parameter the server's sentence does not give."""
    from backend.app.core.delivery_words import DELIVERY_ERRORS, QUOTED

    words = I18N / "deliveryWords.ts"
    french = _ts_object(words, "deliveryErrorsFr")
    assert set(DELIVERY_ERRORS) - set(french) == set()
    for code, text in french.items():
        assert code in DELIVERY_ERRORS, f"deliveryErrorsFr.{code}: no such sentence on the server"
        assert set(re.findall(r"\{(\w+)\}", text)) <= set(re.findall(r"\{(\w+)\}", DELIVERY_ERRORS[code])), code
    quoted = re.search(r"QUOTED = new Set\(\[([^\]]*)\]\)", words.read_text(encoding="utf-8"))
    assert quoted is not None and set(re.findall(r"'(\w+)'", quoted.group(1))) == set(QUOTED)
    kinds = set(re.findall(r'kind = "([^"]+)"', (APP / "services" / "notifications" / "egress.py").read_text(encoding="utf-8")))
    assert "loopback" in kinds  # the source was read
    body = words.read_text(encoding="utf-8").split("const KINDS_FR", 1)[1].split("\n}", 1)[0]
    assert kinds - set(re.findall(r"^\s{2}'?([^':]+)'?:", body, re.M)) == set(), "an address kind egress names lacks French"


#: Docker's words for a container's status and health (the Engine API's ``State.Status`` and
#: ``State.Health.Status``), which a waiting line's states quote.
ENGINE_STATES = {"created", "restarting", "running", "removing", "paused", "exited", "dead", "starting", "healthy", "unhealthy"}


def test_every_container_state_the_health_gate_names_reads_in_french() -> None:
    french = _ts_object(I18N / "deploymentWords.ts", "engineStatesFr")
    assert ENGINE_STATES - set(french) == set()


def test_every_status_history_reason_reads_in_both_languages() -> None:
    """A status change's reason (``core/deployment_words.py`` ``HISTORY_REASONS``: the history's ``reason_code``, a
    ``[RECOVERY]`` log line's ``reason.0.code``) has its words in ``history.<code>`` of both catalogues, with no
    parameter the server's reason does not give."""
    from backend.app.core.deployment_words import HISTORY_REASONS

    assert "executor_lost_failed" in HISTORY_REASONS
    for catalogue in ("en.ts", "fr.ts"):
        body = (I18N / catalogue).read_text(encoding="utf-8").split("\n  history: {", 1)[1].split("\n  },", 1)[0]
        words = dict(re.findall(r"^\s{4}([a-z_]+):\s*'((?:[^'\\]|\\.)*)',$", body, re.M))
        words.update(re.findall(r"^\s{4}([a-z_]+):\n\s+'((?:[^'\\]|\\.)*)',$", body, re.M))
        assert set(words) == set(HISTORY_REASONS), catalogue
        for code, text in words.items():
            assert set(re.findall(r"\{(\w+)\}", text)) <= set(re.findall(r"\{(\w+)\}", HISTORY_REASONS[code])), f"{catalogue} {code}"
