"""Reading a spec file: a YAML loader that refuses what a spec never needs (duplicate keys, alias
bombs, endless nesting, huge integers), and load_spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from acpsearch.errors import SpecError
from acpsearch.errors import echo as _fmt
from acpsearch.service.spec.study_spec import StudySpec, parse_spec

# A spec is a few dozen values. Aliases let a 1 KB file stand for billions of values (the
# "billion laughs": 9 levels of 9 aliases = 9**9 leaves), which every later step that walks the
# value (validation, the error line, json for the storage) would expand; so the expanded size of
# the document is bounded before anything is built from it.
MAX_YAML_VALUES = 100_000  # values (scalars, lists, mappings) once every alias is expanded
MAX_YAML_ALIASES = 10_000  # uses of an anchor
MAX_YAML_DEPTH = 100  # nesting levels


class YamlRefused(yaml.YAMLError):  # type: ignore[misc]
    """A YAML document refused before it is built (alias bomb, recursion, too deep): one line."""

    def __init__(self, problem: str, detail: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem, self.detail, self.mark = problem, detail, mark

    def __str__(self) -> str:
        where = f" at line {self.mark.line + 1}" if self.mark is not None else ""
        return f"{self.problem}{where} ({self.detail})"


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose alias expansion is too large, recursive or too deep, in time
    proportional to the graph (the file), not to its expansion."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    visiting: set[int] = set()
    aliases = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        if finished:
            visiting.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_YAML_VALUES:
                raise YamlRefused(
                    "too many YAML aliases",
                    f"they expand the document to more than {MAX_YAML_VALUES:,} values",
                    node.start_mark,
                )
            if depth[key] > MAX_YAML_DEPTH:
                raise YamlRefused("YAML nested too deeply", f"more than {MAX_YAML_DEPTH} levels", node.start_mark)
            continue
        if key in size:  # a node met again: an alias
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise YamlRefused(
                    "too many YAML aliases", f"more than {MAX_YAML_ALIASES:,} uses of anchors", node.start_mark
                )
            continue
        if key in visiting:
            raise YamlRefused("recursive YAML alias", "an anchor is used inside itself", node.start_mark)
        visiting.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children)


class SpecLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """yaml.safe_load's loader (libyaml when available) that also refuses duplicate keys (YAML
    would keep the last one silently), integers Python cannot print, and documents whose aliases
    expand to too many values (see _check_expansion)."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return self.construct_document(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overriding keys is meant
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first
                except TypeError:  # unhashable: the base class words it
                    continue
                if seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_fmt(key)}, first at line {first[key] + 1}", key_node.start_mark
                    )
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return int(super().construct_yaml_int(node))
        except ValueError:  # more than 4300 digits
            raise yaml.constructor.ConstructorError(
                None, None, "integer with too many digits", node.start_mark
            ) from None


SpecLoader.add_constructor("tag:yaml.org,2002:int", SpecLoader.construct_yaml_int)


def safe_yaml_load(text: str) -> Any:
    """yaml.safe_load with SpecLoader's refusals (yaml.YAMLError subclasses)."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a YAML spec file (paths inside it are relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec {str(path)!r}: file not found")
    try:
        data = safe_yaml_load(path.read_text())
    except YamlRefused as exc:
        raise SpecError(f"spec {str(path)!r}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"spec {str(path)!r}: not valid YAML{where} ({problem})") from None
    except RecursionError:  # the pure-Python parser (no libyaml) on very deep nesting
        raise SpecError(f"spec {str(path)!r}: YAML nested too deeply") from None
    except UnicodeDecodeError:
        raise SpecError(f"spec {str(path)!r}: not a text file") from None
    return parse_spec(data, base_dir=path.parent)
