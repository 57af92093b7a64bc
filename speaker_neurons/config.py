"""The configuration's one source of truth: `config.schema.yaml` beside this file.

Snakemake validates the workflow's config against it (filling every default), and the package reads
its defaults from the same file, so a default is written once. `defaults("pretrain.train")` gives a
section's defaults; `resolve("pretrain.train", given)` overlays what a caller gave and names any key
the schema does not know.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any, Mapping

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    import yaml

    # libyaml's loader where PyYAML has it: the same document, read ~10x faster (every job reads it)
    return yaml.load(SCHEMA_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def schema() -> dict[str, Any]:
    """The JSON schema of the workflow's configuration (a copy)."""
    return copy.deepcopy(_schema())


def _section_schema(section: str | None) -> dict[str, Any]:
    node = _schema()
    for part in (section.split(".") if section else []):
        try:
            node = node["properties"][part]
        except KeyError:
            raise KeyError(f"no config section {section!r} in {SCHEMA_PATH}") from None
    return node


def _defaults_of(node: Mapping[str, Any]) -> Any:
    props = node.get("properties")
    if props is None or node.get("type") != "object":
        return copy.deepcopy(node.get("default"))
    out = {}
    for key, sub in props.items():
        if sub.get("type") == "object" and "properties" in sub:
            out[key] = _defaults_of(sub)
        elif "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
    return out


def key(path: str) -> dict[str, Any]:
    """The schema of one config key (a copy), by dotted path; `name[]` steps into an array's items, e.g.
    `key("models[].format")["enum"]`, `key("sid.layer_sets[]")["enum"]`."""
    node = _schema()
    for part in path.split("."):
        items = part.endswith("[]")
        try:
            node = node["properties"][part[:-2] if items else part]
        except KeyError:
            raise KeyError(f"no config key {path!r} in {SCHEMA_PATH}") from None
        if items:
            node = node["items"]
    return copy.deepcopy(node)


def choices(path: str) -> tuple:
    """The values a config key allows (its schema `enum`, in the schema's order), e.g. `choices("ivector.cmn")`."""
    return tuple(key(path)["enum"])


def defaults(section: str | None = None) -> dict[str, Any]:
    """Every default of a section (dotted path, e.g. "pretrain.train"; None = the whole config)."""
    return _defaults_of(_section_schema(section))


def resolve(section: str, given: Mapping[str, Any] | None = None, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """A section's defaults overlaid with `given`; a key the schema does not list raises ValueError
    naming it and the section. `exclude`: keys of the section that the caller does not take."""
    cfg = {k: v for k, v in defaults(section).items() if k not in exclude}
    unknown = sorted(set(given or {}) - set(cfg))
    if unknown:
        raise ValueError(f"unknown {section} config key(s) {unknown}; known: {sorted(cfg)} (see {SCHEMA_PATH.name})")
    cfg.update(copy.deepcopy(dict(given or {})))
    return cfg


def _overlay(base: Any, given: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(given, Mapping):
        out = copy.deepcopy(dict(base))
        for k, v in given.items():
            out[k] = _overlay(out[k], v) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(given)


def complete(given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A whole configuration with every default filled in, as Snakemake's validation fills it: the
    schema's defaults overlaid with `given`, and each entry of `models` and `corpora` completed with
    its item defaults (for programs and tests that build the catalogue without Snakemake)."""
    cfg = _overlay(defaults(), dict(given or {}))
    items = _schema()["properties"]["models"]["items"]
    cfg["models"] = [_overlay(_defaults_of(items), m) for m in cfg["models"]]
    cfg["corpora"] = [_overlay(defaults("corpus"), c) for c in cfg.get("corpora") or []]
    return cfg


def check_resource_rules(resources: Mapping[str, Any], rule_names) -> None:
    """Every rule named under the config's `resources` must be a rule of the workflow: a misspelt name
    would otherwise be ignored silently and its job run with the default resources. Raises ValueError
    naming the key, the closest rule names and the list of rules."""
    import difflib

    known = sorted(set(rule_names))
    for name in sorted(resources or {}):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"Invalid configuration at key 'resources.{name}': no rule is called {name!r}{hint}; "
                             f"the rules are: {', '.join(known)}")


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PlaceholderError(ValueError):
    """A `{name}` in the config that `paths` does not define: `key` is the dotted key that uses it."""

    def __init__(self, key: str, message: str):
        super().__init__(f"Invalid configuration at key '{key}': {message}")
        self.key, self.message = key, message


def expand_paths(config: dict[str, Any]) -> dict[str, Any]:
    """Replace `{name}` in every string value of the config (in place) by `paths.<name>`, so a config
    names its folders once at its top (`paths: {data: /data, checkpoints: /models}`) or on the command
    line (`--config 'paths={data: /mnt/data}'`); `$VARS` and `~` in the paths themselves are expanded.
    A name that `paths` does not define raises PlaceholderError naming the key that uses it."""
    import os

    paths = {k: os.path.expanduser(os.path.expandvars(str(v))) for k, v in (config.get("paths") or {}).items()}
    config["paths"] = paths

    def sub(value: Any, where: str) -> Any:
        if isinstance(value, str):
            def one(m):
                if m.group(1) not in paths:
                    raise PlaceholderError(where, f"{{{m.group(1)}}} names no entry of 'paths' (defined: "
                                           f"{', '.join(sorted(paths)) or 'none'}); set it at the config's top or "
                                           f"with --config 'paths={{{m.group(1)}: /your/folder}}'")
                return paths[m.group(1)]
            return _PLACEHOLDER.sub(one, value)
        if isinstance(value, Mapping):
            for k in list(value):
                value[k] = sub(value[k], f"{where}.{k}" if where else str(k))
            return value
        if isinstance(value, list):
            for i, v in enumerate(value):
                value[i] = sub(v, f"{where}.{i}")
            return value
        return value

    for k in list(config):
        if k != "paths":
            config[k] = sub(config[k], k)
    return config


class ConfigError(ValueError):
    """A configuration the workflow cannot run: `key` is the dotted key to fix."""

    def __init__(self, key: str, message: str):
        super().__init__(f"Invalid configuration at key '{key}': {message}")
        self.key = key
