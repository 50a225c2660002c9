"""Resource names the Bicep templates produce, worked out for given parameter values, and Azure's naming rules.

``names(docs, params)`` evaluates every resource's (and module deployment's) name the way ARM would for the given
main.bicep parameters: parameters and variables, string interpolation, toLower, take, replace, substring, concat,
uniqueString (13 characters, as ARM's) and guid, both branches of a ternary, module parameters passed down into the
module's own names. A name built from a run-time value (a resource's property, a module output) cannot be known
before deployment and is reported as unknown rather than guessed.

``LIMITS`` holds Azure's documented length and character rules per resource type ("Naming rules and restrictions for
Azure resources", learn.microsoft.com/azure/azure-resource-manager/management/resource-name-rules; systemTopics from
the Microsoft.EventGrid/systemTopics template reference).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from tests.infra import bicep_checks as c

UNIQUE_STRING = "abcdefghij0kl"  # uniqueString() is 13 lowercase letters and digits
GUID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class Limit:
    low: int
    high: int
    pattern: str  # the whole name must match
    rule: str  # the documented rule, for the failure message


_ALNUM_HYPHEN = r"[A-Za-z0-9-]+"
LIMITS: dict[str, Limit] = {
    "microsoft.resources/resourcegroups": Limit(1, 90, r"[-\w.()]*[-\w()]", "alphanumerics, _ ( ) - . ; not ending in ."),
    "microsoft.resources/deployments": Limit(1, 64, r"[-\w.()]+", "alphanumerics, _ ( ) - ."),
    "microsoft.managedidentity/userassignedidentities": Limit(3, 128, r"[A-Za-z0-9][A-Za-z0-9_-]*",
                                                              "alphanumerics, - _ ; start alphanumeric"),
    "microsoft.operationalinsights/workspaces": Limit(4, 63, r"[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]",
                                                      "alphanumerics and -, start and end alphanumeric"),
    "microsoft.insights/components": Limit(1, 260, r"[^<>*%&:?+/\\]*[^<>*%&:?+/\\ ]", "no <>*%&:?+/\\"),
    "microsoft.insights/actiongroups": Limit(1, 260, r"[^<>*%&:?+/\\]+", "no <>*%&:?+/\\"),
    "microsoft.storage/storageaccounts": Limit(3, 24, r"[a-z0-9]+", "lowercase letters and digits"),
    "microsoft.storage/storageaccounts/blobservices/containers": Limit(
        3, 63, r"(?!.*--)[a-z0-9][a-z0-9-]*", "lowercase letters, digits, single hyphens"),
    "microsoft.storage/storageaccounts/tableservices/tables": Limit(3, 63, r"[A-Za-z][A-Za-z0-9]*",
                                                                    "alphanumerics, start with a letter"),
    "microsoft.keyvault/vaults": Limit(3, 24, r"(?!.*--)[A-Za-z][A-Za-z0-9-]*[A-Za-z0-9]",
                                       "alphanumerics and -, start letter, end alphanumeric, no --"),
    "microsoft.keyvault/vaults/secrets": Limit(1, 127, _ALNUM_HYPHEN, "alphanumerics and -"),
    "microsoft.eventgrid/topics": Limit(3, 50, _ALNUM_HYPHEN, "alphanumerics and -"),
    "microsoft.eventgrid/systemtopics": Limit(3, 128, _ALNUM_HYPHEN, "alphanumerics and -"),
    "microsoft.machinelearningservices/workspaces": Limit(3, 33, r"[A-Za-z0-9][A-Za-z0-9-]*",
                                                          "alphanumerics and -"),
    "microsoft.machinelearningservices/workspaces/computes": Limit(2, 16, _ALNUM_HYPHEN, "alphanumerics and -"),
    "microsoft.web/serverfarms": Limit(1, 40, _ALNUM_HYPHEN, "alphanumerics and -"),
    "microsoft.web/sites": Limit(2, 60, r"[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]",
                                 "alphanumerics and -, not starting or ending with -"),
    "microsoft.network/virtualnetworks": Limit(2, 64, r"[A-Za-z0-9][\w.-]*\w", "alphanumerics _ . -"),
    "microsoft.network/networksecuritygroups": Limit(1, 80, r"[A-Za-z0-9][\w.-]*\w", "alphanumerics _ . -"),
    "microsoft.network/privateendpoints": Limit(2, 64, r"[A-Za-z0-9][\w.-]*\w", "alphanumerics _ . -"),
    "microsoft.authorization/policyassignments": Limit(1, 64, r"[^%]*[^%. ]", "no %, not ending in . or space"),
    "microsoft.authorization/roledefinitions": Limit(36, 36, r"[0-9a-f-]{36}", "a GUID"),
    "microsoft.authorization/policydefinitions": Limit(1, 64, r"[^%]*[^%. ]", "no %, not ending in . or space"),
}


class Unknown(Exception):
    """A value only known at deployment time (a property of a deployed resource, a module output)."""


def _decorator(param: dict[str, Any], kind: str) -> Any:
    return next((d.get("argument") for d in param.get("decorators", []) if isinstance(d, dict) and d.get("type") == kind),
                None)


def _json_value(node: Any, env: dict[str, list[str]]) -> Any:
    """loadJsonContent('<file>') followed by property accesses, read from the file next to the template."""
    if isinstance(node, dict) and isinstance(node.get("operator"), dict) and \
            node["operator"].get("type") == "property_accessor":
        ops = node["operator"]["operands"]
        return _json_value(ops["operand_1"], env)[ops["operand_2"]]
    fn = node.get("function", {}) if isinstance(node, dict) else {}
    if fn.get("type") != "load_json_content" or "__dir__" not in env:
        raise Unknown(c.render(node))
    import json

    value = json.loads((c.INFRA / env["__dir__"][0] / fn["parameters"]["file_path"]).read_text())
    return value[fn["property_name"]] if fn.get("property_name") else value


def evaluate(node: Any, env: dict[str, list[str]]) -> list[str]:
    """Every string ``node`` can evaluate to (a ternary gives both branches); Unknown for run-time values and for
    symbols of the template that could not be evaluated."""
    if isinstance(node, bool):
        return ["true" if node else "false"]
    if isinstance(node, (int, float)):
        return [str(node)]
    if isinstance(node, str):
        if node in env:
            return env[node]
        if node in env.get("__symbols__", ()):
            raise Unknown(node)  # a parameter, variable or loop item whose value is not known here
        if "${" not in node:
            if re.fullmatch(r"[A-Za-z_]\w*(\.\w+)+", node):
                raise Unknown(node)  # symbol.property: a deployed resource's or module's value
            return [node]
        parts: list[list[str]] = []
        pos = 0
        for m in re.finditer(r"\$\{([^{}]*)\}", node):
            parts.append([node[pos:m.start()]])
            inner = m.group(1).strip()
            if inner in env:
                parts.append(env[inner])
            else:
                parsed = c.parse_text(f"var x = {inner}\n")["variables"]["x"]["value"]
                parts.append(evaluate(parsed, env))
            pos = m.end()
        parts.append([node[pos:]])
        return ["".join(p) for p in itertools.product(*parts)]
    if isinstance(node, dict) and isinstance(node.get("operator"), dict):
        op = node["operator"]
        ops = op.get("operands", {})
        if op.get("type") == "conditional":
            return evaluate(ops.get("true_value"), env) + evaluate(ops.get("false_value"), env)
        value = _json_value(node, env)
        if isinstance(value, str):
            return [value]
        raise Unknown(c.render(node))
    if isinstance(node, dict) and isinstance(node.get("function"), dict):
        fn = node["function"]
        kind = fn.get("type")
        if fn.get("property_name"):
            raise Unknown(c.render(node))  # e.g. subscription().id
        args = list((fn.get("parameters") or {}).values())
        if kind == "to_lower":
            return [v.lower() for v in evaluate(args[0], env)]
        if kind == "to_upper":
            return [v.upper() for v in evaluate(args[0], env)]
        if kind == "take":
            n = int(evaluate(args[1], env)[0])
            return [v[:n] for v in evaluate(args[0], env)]
        if kind == "replace":
            olds, news = evaluate(args[1], env), evaluate(args[2], env)
            return [v.replace(o, n) for v in evaluate(args[0], env) for o in olds for n in news]
        if kind == "concat":
            return ["".join(p) for p in itertools.product(*(evaluate(a, env) for a in args if a is not None))]
        if kind == "unique_string":
            return [UNIQUE_STRING]
        if kind == "guid":
            return [GUID]
        raise Unknown(c.render(node))
    raise Unknown(c.render(node))


def _environment(doc: dict[str, Any], given: dict[str, list[str]]) -> dict[str, list[str]]:
    """Parameter values (given, else the default) and every variable that can be evaluated from them."""
    env: dict[str, list[str]] = {"__symbols__": [*(doc.get("parameters") or {}), *(doc.get("variables") or {})]}
    if "__dir__" in given:
        env["__dir__"] = given["__dir__"]
    for name, param in (doc.get("parameters") or {}).items():
        if name in given:
            env[name] = given[name]
        elif param.get("default") is not None:
            try:
                env[name] = evaluate(param["default"], env)
            except Unknown:
                pass
    pending = dict(doc.get("variables") or {})
    progress = True
    while pending and progress:  # variables may refer to later ones: evaluate until nothing more resolves
        progress = False
        for name, var in list(pending.items()):
            try:
                env[name] = evaluate(var.get("value"), env)
            except (Unknown, KeyError, IndexError, ValueError):
                continue
            del pending[name]
            progress = True
    return env


@dataclass(frozen=True)
class Name:
    path: str
    symbol: str
    type: str
    value: str


def names(docs: dict[str, dict], given: dict[str, list[str]], path: str = "main.bicep",
          unknown: list[str] | None = None) -> list[Name]:
    """Every name (resources not marked existing, and module deployments) ``path`` and the modules it deploys produce
    for the parameter values ``given``. Names that depend on run-time values go to ``unknown``."""
    unknown = [] if unknown is None else unknown
    doc = docs[path]
    env = _environment(doc, {**given, "__dir__": [str(c.Path(path).parent)]})
    out: list[Name] = []
    for symbol, res in c.resources(doc):
        loop = (res.get("config") or {}).get("loop_type") or {}
        item = (loop.get("detail") or {}).get("item_name")
        try:
            values = evaluate(c.body(res).get("name"), {**env, "__symbols__": [*env["__symbols__"], item]}
                              if item else env)
        except Unknown as why:
            unknown.append(f"{path}:{symbol} ({why})")
            continue
        out += [Name(path, symbol, res.get("type", ""), v) for v in values]
    for symbol, mod in (doc.get("modules") or {}).items():
        cfg = c.body(mod)
        try:
            out += [Name(path, symbol, "Microsoft.Resources/deployments", v) for v in evaluate(cfg.get("name"), env)]
        except Unknown as why:
            unknown.append(f"{path}:{symbol} ({why})")
        target = c.module_target(path, mod)
        passed: dict[str, list[str]] = {}
        for pname, expr in (cfg.get("params") or {}).items():
            try:
                passed[pname] = evaluate(expr, env)
            except Unknown:
                continue
        if target in docs:
            out += names(docs, passed, target, unknown)
    return out


def worst_case_parameters(doc: dict[str, Any], **values: list[str]) -> dict[str, list[str]]:
    """``values``, plus for every other string parameter with a @maxLength the longest value it allows."""
    given = dict(values)
    for name, param in (doc.get("parameters") or {}).items():
        longest = _decorator(param, "max_length")
        if name not in given and param.get("type") == "string" and longest:
            given[name] = ["c" * int(longest)]
    return given


def violations(found: list[Name]) -> list[str]:
    problems = []
    for n in found:
        limit = LIMITS.get(n.type.lower())
        if limit is None:
            continue
        if not limit.low <= len(n.value) <= limit.high:
            problems.append(f"{n.path}:{n.symbol}: {n.value!r} has {len(n.value)} characters; {n.type} allows "
                            f"{limit.low}-{limit.high}")
        elif not re.fullmatch(limit.pattern, n.value):
            problems.append(f"{n.path}:{n.symbol}: {n.value!r} breaks {n.type}'s rule: {limit.rule}")
    return problems
