"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml; not a page).

Checks that make ``mkdocs build --strict`` fail (each logs a warning, and strict
mode turns warnings into errors):

- every name in ``stability.__all__`` has a docstring, and so has every public
  method of a public class;
- every name in ``stability.__all__`` has an entry ``::: stability.NAME`` on an
  API reference page (so a new public name cannot go undocumented);
- every parameter a docstring documents (``Args:``; grouped entries such as
  ``beta, momentum:`` name by name) is a parameter of the function, so a renamed
  argument cannot leave a stale description behind.

The package is read statically with griffe (nothing is imported, no JAX), by
public name: a move of the implementation between modules changes nothing here.

Rendering: the package's docstrings use Sphinx roles (``:func:`x```); the
rendered ``:func:<code>x</code>`` becomes a cross-reference to ``x`` when the
site documents it, and plain code otherwise.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.stability_docs")

PACKAGE = "stability"
API_DIR = "api"
_ENTRY = re.compile(r"^:::\s+(\S+)", re.MULTILINE)
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):<code>([^<]+)</code>")


def _public_members(obj):
    for name, member in obj.members.items():
        if name.startswith("_"):
            continue
        try:
            target = member.final_target if member.is_alias else member
        except Exception:  # an alias to something outside the package
            continue
        yield name, target


def _documented_parameters(function) -> list[str]:
    from griffe import DocstringSectionKind, Parser

    if function.docstring is None:
        return []
    names = []
    for section in function.docstring.parse(Parser.google, warnings=False):
        if section.kind is DocstringSectionKind.parameters:
            for item in section.value:
                names.extend(part.strip() for part in item.name.split(","))
    return names


def problems(docs_dir: str | Path, package: str = PACKAGE, search_paths=None) -> list[str]:
    """Every reason the API reference of ``package`` is incomplete or stale (empty:
    none). ``search_paths``: where griffe looks for the package (default: sys.path)."""
    import griffe

    root = griffe.load(
        package, search_paths=search_paths, resolve_aliases=True, resolve_external=False
    )
    exported = [str(name) for name in root.exports or ()]
    if not exported:
        return [f"{package}.__all__ is empty or could not be read"]
    out = []
    pages = sorted((Path(docs_dir) / API_DIR).glob("*.md"))
    entries = {m for page in pages for m in _ENTRY.findall(page.read_text(encoding="utf-8"))}
    for name in exported:
        public = f"{package}.{name}"
        if public not in entries:
            out.append(f"{public} is public but has no '::: {public}' on an API page")
        obj = root[name]
        obj = obj.final_target if obj.is_alias else obj
        if not obj.docstring or not obj.docstring.value.strip():
            out.append(f"{public} has no docstring")
        functions = [(public, obj)] if obj.is_function else []
        if obj.is_class:
            for member_name, member in _public_members(obj):
                if member.is_function:
                    functions.append((f"{public}.{member_name}", member))
                    if not member.docstring:
                        out.append(f"{public}.{member_name} (a public method) has no docstring")
        for label, function in functions:
            signature = {p.name for p in function.parameters}
            for param in _documented_parameters(function):
                if param and param not in signature:
                    out.append(f"{label}: the docstring documents '{param}', not a parameter")
    prefix = f"{package}."
    for entry in sorted(e for e in entries if e.startswith(prefix)):
        try:
            root[entry.removeprefix(prefix)]
        except KeyError:
            out.append(f"'::: {entry}' names nothing in {package}")
    return out


def on_pre_build(config, **kwargs):
    import sys

    root = str(Path(config["config_file_path"]).resolve().parent)  # this checkout first
    for problem in problems(config["docs_dir"], search_paths=[root, *sys.path]):
        log.warning("API reference: %s", problem)


def on_page_content(html, page, config, files, **kwargs):
    return _ROLE.sub(r'<autoref identifier="\1" optional><code>\1</code></autoref>', html)
