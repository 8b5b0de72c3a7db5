"""A strict renderer for the subset of kustomize that k8s/ uses, so tests need no kubectl.

Supported in ``kustomization.yaml``: ``apiVersion``/``kind`` (Kustomization), ``resources``
(YAML files inside the kustomization's directory, or directories holding a kustomization),
``namespace``, ``patches`` (JSON6902 operation lists from a ``path``, with a ``target`` by
group/version/kind/name) and ``images`` (``name`` with ``newName``/``newTag``/``digest``).
Anything else - an unknown key, a strategic-merge or inline patch, a patch target that
matches nothing, a failed ``test`` operation, a duplicate resource, a file outside the
kustomization's directory - raises KustomizeError, so a manifest using a feature this
renderer lacks fails loudly instead of rendering differently from kustomize.

Order within one kustomization, as kustomize's built-in transformers run: resources (each
sub-kustomization fully rendered first), patches, namespace, images. The namespace
transformer sets ``metadata.namespace`` on every namespaced object and renames Namespace
objects to the namespace, as kustomize does. Where ``kubectl`` is on PATH the tests also
compare this output with ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_KEYS = {"apiVersion", "kind", "resources", "namespace", "patches", "images"}
_TARGET_KEYS = {"group", "version", "kind", "name"}
_IMAGE_KEYS = {"name", "newName", "newTag", "digest"}
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                   "PersistentVolume", "StorageClass", "PriorityClass"}
# Kinds whose references the real namespace transformer rewrites; not implemented here.
_UNSUPPORTED_KINDS = {"RoleBinding", "ClusterRoleBinding", "ValidatingWebhookConfiguration",
                      "MutatingWebhookConfiguration", "APIService"}


class KustomizeError(ValueError):
    """The kustomization uses something this renderer does not implement, or is wrong."""


def find_kustomization(directory: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def render(directory: str | Path) -> list[dict[str, Any]]:
    """Render the kustomization in ``directory``; returns the objects (fresh copies)."""
    objects = _build(Path(directory).resolve(), stack=())
    _check_unique(objects, Path(directory))
    return objects


def resource_id(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    return (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace", ""),
            meta.get("name", ""))


def _build(directory: Path, stack: tuple[Path, ...]) -> list[dict[str, Any]]:
    if directory in stack:
        raise KustomizeError(f"{directory}: kustomization cycle")
    path = find_kustomization(directory)
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(spec, dict):
        raise KustomizeError(f"{path}: not a mapping")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise KustomizeError(f"{path}: unsupported keys {unknown}")
    if spec.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{path}: kind {spec.get('kind')!r} is not supported")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources") or []:
        objects.extend(_load_resource(directory, entry, (*stack, directory)))
    _check_unique(objects, path)
    for patch in spec.get("patches") or []:
        _apply_patch(directory, path, patch, objects)
    if "namespace" in spec:
        _set_namespace(objects, spec["namespace"], path)
    for image in spec.get("images") or []:
        _set_image(objects, image, path)
    return objects


def _inside(directory: Path, relative: str, where: Path) -> Path:
    target = (directory / relative).resolve()
    if target != directory and directory not in target.parents:
        raise KustomizeError(f"{where}: {relative} is outside {directory} (load restrictor)")
    return target


def _load_resource(directory: Path, entry: Any, stack: tuple[Path, ...]) -> list[dict[str, Any]]:
    if not isinstance(entry, str):
        raise KustomizeError(f"{directory}: resource entries must be paths, got {entry!r}")
    target = (directory / entry).resolve()
    if target.is_dir():
        return _build(target, stack)
    target = _inside(directory, entry, directory)
    if not target.is_file():
        raise KustomizeError(f"{directory}: resource {entry} does not exist")
    docs = [d for d in yaml.safe_load_all(target.read_text(encoding="utf-8")) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= set(doc):
            raise KustomizeError(f"{target}: every document needs apiVersion, kind, metadata")
        if doc["kind"] in _UNSUPPORTED_KINDS or doc["kind"] == "List":
            raise KustomizeError(f"{target}: kind {doc['kind']} is not supported here")
    return docs


def _check_unique(objects: list[dict[str, Any]], where: Path) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        rid = resource_id(obj)
        if rid in seen:
            raise KustomizeError(f"{where}: duplicate resource {rid}")
        seen.add(rid)


# --------------------------------------------------------------------------- patches


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": obj["kind"],
              "name": obj["metadata"].get("name")}
    return all(wanted[key] == value for key, value in target.items())


def _apply_patch(directory: Path, where: Path, patch: Any, objects: list[dict[str, Any]]) -> None:
    if not isinstance(patch, dict) or set(patch) != {"path", "target"}:
        raise KustomizeError(f"{where}: each patch needs exactly `path` and `target` "
                             "(inline and strategic-merge patches are not supported)")
    target = patch["target"]
    if not isinstance(target, dict) or not set(target) <= _TARGET_KEYS or "kind" not in target:
        raise KustomizeError(f"{where}: patch target needs kind (and group, version, name)")
    file = _inside(directory, patch["path"], where)
    ops = yaml.safe_load(file.read_text(encoding="utf-8"))
    if not isinstance(ops, list):
        raise KustomizeError(f"{file}: not a JSON6902 operation list")
    hits = [obj for obj in objects if _matches(obj, target)]
    if not hits:
        raise KustomizeError(f"{where}: patch {patch['path']} matches no resource")
    for i, obj in enumerate(objects):
        if obj in hits:
            patched = copy.deepcopy(obj)
            for op in ops:
                _apply_op(patched, op, file)
            objects[i] = patched


def _pointer(path: Any, file: Path) -> list[str]:
    if not isinstance(path, str) or not path.startswith("/"):
        raise KustomizeError(f"{file}: bad JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], file: Path, path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise KustomizeError(f"{file}: path {path} does not exist") from None
    return node


def _index(node: list[Any], part: str, file: Path, path: str, *, append: bool) -> int:
    if append and part == "-":
        return len(node)
    if not part.isdigit() or int(part) > len(node) - (0 if append else 1):
        raise KustomizeError(f"{file}: bad array index in {path}")
    return int(part)


def _apply_op(doc: dict[str, Any], op: Any, file: Path) -> None:
    if not isinstance(op, dict) or "op" not in op or "path" not in op:
        raise KustomizeError(f"{file}: each operation needs op and path")
    kind, path = op["op"], op["path"]
    allowed = {"op", "path", "value"} if kind in ("add", "replace", "test") else {"op", "path"}
    if kind not in ("add", "remove", "replace", "test") or set(op) - allowed:
        raise KustomizeError(f"{file}: unsupported operation {op!r}")
    if kind != "remove" and "value" not in op:
        raise KustomizeError(f"{file}: {kind} {path} needs a value")
    parts = _pointer(path, file)
    parent, last = _parent(doc, parts, file, path), parts[-1]
    value = copy.deepcopy(op.get("value"))
    if isinstance(parent, list):
        i = _index(parent, last, file, path, append=kind == "add")
        if kind == "add":
            parent.insert(i, value)
        elif kind == "remove":
            del parent[i]
        elif kind == "replace":
            parent[i] = value
        elif parent[i] != value:
            raise KustomizeError(f"{file}: test failed at {path}: {parent[i]!r} != {value!r}")
        return
    if not isinstance(parent, dict):
        raise KustomizeError(f"{file}: path {path} does not exist")
    if kind == "add":
        parent[last] = value
        return
    if last not in parent:
        raise KustomizeError(f"{file}: path {path} does not exist")
    if kind == "remove":
        del parent[last]
    elif kind == "replace":
        parent[last] = value
    elif parent[last] != value:
        raise KustomizeError(f"{file}: test failed at {path}: {parent[last]!r} != {value!r}")


# --------------------------------------------------------------------------- namespace, images


def _set_namespace(objects: list[dict[str, Any]], namespace: Any, where: Path) -> None:
    if not isinstance(namespace, str) or not namespace:
        raise KustomizeError(f"{where}: namespace must be a name")
    for obj in objects:
        if obj["kind"] == "Namespace":
            obj["metadata"]["name"] = namespace
        elif obj["kind"] not in _CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` -> (name, tag, digest); a registry port is part of the name."""
    name, _, digest = image.partition("@")
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest or None


def pod_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container (and init container) of a Pod or a pod template, in order."""
    if obj["kind"] == "Pod":
        spec = obj.get("spec") or {}
    else:
        spec = (((obj.get("spec") or {}).get("template") or {}).get("spec")) or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _set_image(objects: list[dict[str, Any]], image: Any, where: Path) -> None:
    if not isinstance(image, dict) or "name" not in image or set(image) - _IMAGE_KEYS:
        raise KustomizeError(f"{where}: bad images entry {image!r}")
    for obj in objects:
        for container in pod_containers(obj):
            name, tag, digest = split_image(container.get("image", ""))
            if name != image["name"]:
                continue
            new = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{new}@{image['digest']}"
            elif "newTag" in image:
                container["image"] = f"{new}:{image['newTag']}"
            else:
                container["image"] = new + (f":{tag}" if tag else "") + (
                    f"@{digest}" if digest else "")
