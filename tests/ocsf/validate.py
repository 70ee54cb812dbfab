#!/usr/bin/env python3
"""Validate OCSF events with pydantic-ocsf, an OCSF implementation we did not write.

    python validate.py EVENTS.jsonl

Each line of EVENTS.jsonl is one OCSF event. The OCSF version is the event's
`metadata.version`; the class is its `class_uid`. Prints one line per event that fails
(`line N: <where>: <why>`) and a summary; exits 0 when every event validates, 1 otherwise.

pydantic-ocsf (the models, built from the OCSF schema it bundles) checks: the class's required
attributes, every attribute's type, the integer enums of the class and of its objects
(activity_id, severity_id, status_id, direction_id, ...), each `_id`'s sibling caption,
category_uid/class_uid/type_uid, and nested objects against their own models.

It has three gaps, which this script closes from the same bundled schema (and nothing else):
1. Profile attributes (security_control's action_id, disposition_id, firewall_rule; host's
   actor) are not in its models: the bundled schema has no profile files, so they pass as
   "extra" fields unchecked. Here every attribute an event has beyond its model must be an
   attribute of the schema's dictionary; its value is checked like a modelled one (an object
   against that object's model, an enum against the dictionary's values, else its type).
   An extra attribute inside an object fails.
2. The schema lists 0 (Unknown) and 99 (Other) for every `activity_id` in its dictionary, and
   OCSF's compiler adds them to each class's own values; pydantic-ocsf uses the class's values
   alone and refuses 0. An enum error is set aside only when the dictionary lists the value.
4. It resolves each model's enum annotations (`StatusId | None`) by name in one namespace
   shared by every model loaded, so with several classes loaded a model can end up checking
   another model's values (Detection Finding's status_id against 0, 1, 2, 3, 99 after other
   classes were loaded; alone it is 1 to 6, 99). Each model used here is rebuilt with its own
   enums first (`own_enums`), and the result is checked.
3. It types every attribute with listed values as an integer, also the string ones
   (http_request.http_method). An integer error on an attribute whose schema type is a string
   is replaced by a check that the value is a string (OCSF's listed strings are the common
   values, not a closed set: WebDAV's PROPFIND is an HTTP method).
"""

import json
import sys
from importlib import import_module

from enum import IntEnum
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, SerializeAsAny, ValidationError

import ocsf
from ocsf._utils import snake_to_pascal

SCHEMA_DIR = __import__("pathlib").Path(ocsf.__file__).parent / "schemas"
_cache = {}


class Version:
    """One OCSF version: its schema (as pydantic-ocsf bundles it) and its models."""

    def __init__(self, version):
        tag = "v" + version.replace(".", "_")
        path = SCHEMA_DIR / f"{tag}.json"
        if not path.exists():
            raise KeyError(f"pydantic-ocsf bundles no OCSF {version}")
        self.schema = json.loads(path.read_text())
        self.dictionary = self.schema["dictionary"]["attributes"]
        self.module = import_module(f"ocsf.{tag}")
        self.events = import_module(f"ocsf.{tag}.events")
        self.objects = import_module(f"ocsf.{tag}.objects")
        self.pinned = set()
        categories = {
            n: c["uid"] for n, c in self.schema["categories_meta"]["attributes"].items()
        }
        self.classes = {}
        events = self.schema["events"]

        def category_of(spec):
            # A class names its category, or inherits its parent's (`extends`).
            while spec is not None and not spec.get("category"):
                spec = events.get(spec.get("extends"))
            return spec and spec.get("category")

        for name, spec in events.items():
            category = category_of(spec)
            if category in categories and "uid" in spec:
                uid = categories[category] * 1000 + spec["uid"]
                self.classes[uid] = snake_to_pascal(name)

    def event_class(self, uid):
        name = self.classes.get(uid)
        return None if name is None else self.own_enums(getattr(self.events, name))

    def own_enums(self, model):
        """`model`, and every model under it, rebuilt so each enum annotation is its own (gap 4)."""
        todo = [model]
        while todo:
            m = todo.pop()
            if m in self.pinned:
                continue
            self.pinned.add(m)
            own = {n: a for n, a in vars(m).items() if isinstance(a, type) and issubclass(a, IntEnum)}
            if own:
                # As pydantic-ocsf's own rebuild builds it, then this model's enums on top.
                namespace = {"Any": Any, "SerializeAsAny": SerializeAsAny}
                for key, cls in self.module._model_cache.items():
                    namespace[key.split(":", 1)[-1]] = cls
                namespace.update(own)
                m.model_rebuild(_types_namespace=namespace, force=True)
                for field in m.model_fields.values():
                    for enum in enums_in(field.annotation):
                        if enum.__name__ in own and enum is not own[enum.__name__]:
                            raise RuntimeError(f"{m.__name__}: {enum.__name__} is not its own")
            for field in m.model_fields.values():
                todo.extend(models_in(field.annotation))
        return model


def _types_in(annotation):
    if get_origin(annotation) in (Union, list) or type(annotation).__name__ == "UnionType":
        for a in get_args(annotation):
            yield from _types_in(a)
    elif isinstance(annotation, type):
        yield annotation


def enums_in(annotation):
    return [t for t in _types_in(annotation) if issubclass(t, IntEnum)]


def models_in(annotation):
    return [t for t in _types_in(annotation) if issubclass(t, BaseModel)]


def version(v):
    if v not in _cache:
        _cache[v] = Version(v)
    return _cache[v]


def loc(parts):
    return ".".join(str(p) for p in parts)


def attr_type(ver, obj_name, attr):
    """The schema type of `attr` (in object `obj_name`, else the dictionary's)."""
    spec = {}
    if obj_name and obj_name in ver.schema["objects"]:
        spec = ver.schema["objects"][obj_name].get("attributes", {}).get(attr, {}) or {}
    if isinstance(spec, dict) and "type" in spec:
        return spec["type"]
    return (ver.dictionary.get(attr) or {}).get("type")


def owner_object(model_cls, path):
    """The OCSF object name that holds the attribute at `path` (under `model_cls`)."""
    cls = model_cls
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        inner = getattr(ann, "__args__", None) or (ann,)
        nxt = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nxt is None:
            return None
        cls = nxt
    return getattr(cls, "__ocsf_name__", None) or _snake(cls.__name__)


def _snake(name):
    import re

    s = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z0-9])([A-Z])", r"\1_\2", s).lower()


def value_at(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def check_value(ver, where, attr, value, problems):
    """An attribute the model does not know: check it against the dictionary."""
    spec = ver.dictionary.get(attr)
    if spec is None:
        problems.append(f"{where}: not an attribute of OCSF {ver.schema['version']}")
        return
    t = spec.get("type")
    if t in ver.schema["objects"]:
        model = getattr(ver.objects, snake_to_pascal(t), None)
        if model is None:
            problems.append(f"{where}: no model for object {t}")
            return
        model = ver.own_enums(model)
        items = value if spec.get("is_array") else [value]
        for item in items:
            validate_model(ver, model, item, where, problems)
        return
    if "enum" in spec and t == "integer_t":
        if not isinstance(value, int) or str(value) not in spec["enum"]:
            problems.append(f"{where}: {value!r} is not one of {sorted(spec['enum'], key=int)}")
        return
    expected = {"integer_t": int, "long_t": int, "timestamp_t": int, "string_t": str,
                "boolean_t": bool, "float_t": (int, float)}.get(t)
    if expected and not isinstance(value, expected):
        problems.append(f"{where}: {value!r} is not a {t}")


def validate_model(ver, model_cls, data, prefix, problems):
    """Validate `data` as `model_cls`; errors in the gaps above are checked here instead."""
    if isinstance(data, dict):
        for name, field in model_cls.model_fields.items():
            # The sibling reconciler fills a missing `_id` from its caption: on the wire the
            # attribute is still missing.
            key = field.alias or name
            if field.is_required() and key not in data:
                problems.append(f"{prefix + '.' if prefix else ''}{key}: required, missing")
    data = json.loads(json.dumps(data))
    for _ in range(8):
        try:
            m = model_cls.model_validate(data)
        except ValidationError as e:
            set_aside = []
            for err in e.errors():
                path = list(err["loc"])
                where = loc(([prefix] if prefix else []) + path)
                attr = next((p for p in reversed(path) if isinstance(p, str)), None)
                if err["type"] == "enum" and attr is not None:
                    allowed = (ver.dictionary.get(attr) or {}).get("enum", {})
                    if str(err.get("input")) in allowed:
                        set_aside.append(path)  # gap 2
                        # Its caption and (for activity_id) type_uid go with it: checked here.
                        owner = value_at(data, path[:-1])
                        sibling = ver.dictionary[attr].get("sibling")
                        if sibling:
                            set_aside.append(path[:-1] + [sibling])
                        if attr == "activity_id" and len(path) == 1:
                            expected = data.get("class_uid", 0) * 100 + owner[attr]
                            if data.get("type_uid") != expected:
                                problems.append(f"type_uid: {data.get('type_uid')!r}, expected {expected}")
                            set_aside.append(["type_uid"])
                        continue
                if err["type"] == "int_parsing" and attr is not None:
                    if attr_type(ver, owner_object(model_cls, path), attr) == "string_t":
                        set_aside.append(path)  # gap 3: a string is what the schema wants
                        continue
                problems.append(f"{where}: {err['msg']} (got {err.get('input')!r})"[:300])
            if any(p not in set_aside for p in (list(err["loc"]) for err in e.errors())):
                return
            # Every error was one of the gaps: validate the rest without those values, so
            # nothing else goes unchecked.
            for path in set_aside:
                parent = value_at(data, path[:-1])
                parent.pop(path[-1], None)
            continue
        extras(ver, m, prefix, problems, top=True)
        return
    problems.append(f"{prefix or 'event'}: still failing after setting aside the known gaps")


def extras(ver, m, prefix, problems, top):
    """Attributes beyond the models: profile attributes at the top (gap 1), none below. And
    the string attributes the models type as integers (gap 3) must hold strings."""
    obj = None if top else _snake(type(m).__name__)
    for k, v in (m.model_extra or {}).items():
        where = f"{prefix}.{k}" if prefix else k
        if k == "unmapped" and isinstance(v, dict):
            continue
        if top:
            check_value(ver, where, k, v, problems)
        else:
            problems.append(f"{where}: not an attribute of this object in OCSF {ver.schema['version']}")
    for name, field in type(m).model_fields.items():
        child = getattr(m, name)
        key = field.alias or name
        if key == "unmapped":
            continue  # OCSF's `object` type: any JSON object
        where = f"{prefix}.{key}" if prefix else key
        if child is not None and not isinstance(child, (str, BaseModel, list)):
            if attr_type(ver, obj, key) == "string_t":
                problems.append(f"{where}: {child!r} is not a string_t")
        if isinstance(child, BaseModel):
            extras(ver, child, where, problems, top=False)
        elif isinstance(child, list):
            for i, c in enumerate(child):
                if isinstance(c, BaseModel):
                    extras(ver, c, f"{where}.{i}", problems, top=False)


def validate(doc):
    problems = []
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    v = (doc.get("metadata") or {}).get("version")
    try:
        ver = version(v)
    except KeyError as e:
        return [f"metadata.version: {e}"]
    cls = ver.event_class(doc.get("class_uid"))
    if cls is None:
        return [f"class_uid: {doc.get('class_uid')!r} is no class of OCSF {v}"]
    validate_model(ver, cls, doc, "", problems)
    return problems


def main():
    if len(sys.argv) != 2:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    failed = total = 0
    with open(sys.argv[1]) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            total += 1
            problems = validate(json.loads(line))
            if problems:
                failed += 1
                for p in problems:
                    print(f"line {n}: {p}")
    print(f"{total - failed} of {total} events valid")
    return 1 if failed or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
