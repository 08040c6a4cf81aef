"""Image references parsed exactly as the container runtimes parse them, and where workloads hold them.

The image gate must judge the image a node will pull, so a reference is read with the
docker/distribution reference grammar and normalised the way ``ParseNormalizedNamed``
does (``nginx`` is ``docker.io/library/nginx:latest``); any other reading would let a
manifest name one image to gitward and another to the kubelet. Anything the grammar
refuses is refused here, with the reason. Pure: strings and mappings only.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

DEFAULT_REGISTRY: Final = "docker.io"
LEGACY_DEFAULT_REGISTRY: Final = "index.docker.io"
OFFICIAL_REPOSITORY_PREFIX: Final = "library/"
DEFAULT_TAG: Final = "latest"
REPOSITORY_LENGTH_MAX: Final = 255  # distribution's RepositoryNameTotalLengthMax: the path, not the host
# Longer than any valid reference (name, a 128-character tag, a sha512 digest), checked before the
# grammar so a hostile manifest cannot make the regular expression work on a megabyte string.
REFERENCE_LENGTH_MAX: Final = 1024
SUPPORTED_DIGEST_ALGORITHM: Final = "sha256"

# distribution/reference regexp.go, with Go's ASCII-only classes spelled out (Python's \w is Unicode).
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6_ADDRESS = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6_ADDRESS})"
_DOMAIN_AND_PORT = rf"{_HOST}(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN_AND_PORT}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_DOMAIN_AND_PORT_WHOLE = re.compile(_DOMAIN_AND_PORT)
_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?")
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")  # a bare image ID, which distribution refuses as a name
# go-digest's encodings of the algorithms it knows; gitward pins to sha256 only.
_DIGEST_HEX_LENGTH: Final = {"sha256": 64, "sha384": 96, "sha512": 128}
SHA256_DIGEST: Final = re.compile(r"sha256:[a-f0-9]{64}")


class InvalidImageReferenceError(ValueError):
    """A string that is not an image reference under the docker/distribution grammar."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image reference, normalised.

    ``registry`` is the host as the runtime contacts it (``docker.io`` for Docker Hub),
    ``repository`` the path inside it (``library/nginx``). ``tag`` is the tag as written,
    or ``latest`` when neither a tag nor a digest is written; with a digest the tag is
    kept for people but ignored for deploying, as the runtimes do. ``written`` is the
    text from the manifest.
    """

    registry: str
    repository: str
    tag: str | None
    digest: str | None
    written: str

    @property
    def name(self) -> str:
        """``registry/repository``: what the tenant's repository globs are matched against."""
        return f"{self.registry}/{self.repository}"

    @property
    def pinned(self) -> bool:
        """Whether the reference names a digest (what is deployed cannot change under it)."""
        return self.digest is not None

    @property
    def reference(self) -> str:
        """What the registry is asked for: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.name}{tag}{digest}"

    def with_digest(self, digest: str) -> str:
        """The reference as written, pinned: ``nginx:1.25`` → ``nginx:1.25@sha256:...``.

        The name stays as written, so what a person reads in Git and in the cluster is
        the same image; runtimes pull ``name:tag@digest`` by the digest alone.
        """
        if not SHA256_DIGEST.fullmatch(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        if self.digest is not None:
            raise ValueError(f"{self.written} is already pinned to a digest")
        return f"{self.written}@{digest}"


def _split_registry(name: str) -> tuple[str, str]:
    """Distribution's ``splitDockerDomain``: the first component is a host if it looks like one."""
    first, slash, rest = name.partition("/")
    is_host = "." in first or ":" in first or first == "localhost" or first.lower() != first
    if not slash or not is_host:
        registry, remainder = DEFAULT_REGISTRY, name
    else:
        registry, remainder = first, rest
    if registry == LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in remainder:
        remainder = OFFICIAL_REPOSITORY_PREFIX + remainder
    return registry, remainder


def _check_digest(digest: str) -> None:
    algorithm, _, encoded = digest.partition(":")
    expected = _DIGEST_HEX_LENGTH.get(algorithm)
    if expected is None:
        raise InvalidImageReferenceError(f"unknown digest algorithm {algorithm!r}")
    if len(encoded) != expected or encoded != encoded.lower():
        raise InvalidImageReferenceError(
            f"a {algorithm} digest is {expected} lowercase hexadecimal characters, not {encoded!r}"
        )
    if algorithm != SUPPORTED_DIGEST_ALGORITHM:
        raise InvalidImageReferenceError(f"only sha256 digests are supported, not {algorithm}")


def parse_image_ref(text: str) -> ImageRef:
    """Parse and normalise an image reference like ``ParseNormalizedNamed`` + ``TagNameOnly``.

    Raises :class:`InvalidImageReferenceError` naming what is wrong.
    """
    if not text:
        raise InvalidImageReferenceError("empty image reference")
    if len(text) > REFERENCE_LENGTH_MAX:
        raise InvalidImageReferenceError(f"longer than {REFERENCE_LENGTH_MAX} characters")
    if _IDENTIFIER.fullmatch(text):
        raise InvalidImageReferenceError("a 64-character hexadecimal string is an image ID, not a name")
    registry, remainder = _split_registry(text)
    remote = remainder.partition(":")[0]
    if remote.lower() != remote:
        raise InvalidImageReferenceError(f"repository name {remote!r} must be lowercase")
    match = _REFERENCE.fullmatch(f"{registry}/{remainder}")
    if match is None:
        raise InvalidImageReferenceError("not a valid image reference (registry/repository[:tag][@digest])")
    name, tag, digest = match.group("name"), match.group("tag"), match.group("digest")
    repository = name[len(registry) + 1 :]
    # distribution counts the host into the path when the grammar cannot read it as a host
    # (``my_registry.com/x``: an underscore); the runtimes still contact it as the registry.
    path = repository if _DOMAIN_AND_PORT_WHOLE.fullmatch(registry) else name
    if len(path) > REPOSITORY_LENGTH_MAX:
        raise InvalidImageReferenceError(f"repository name is longer than {REPOSITORY_LENGTH_MAX} characters")
    if digest is not None:
        _check_digest(digest)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageRef(registry, repository, tag, digest, text)


# ----------------------------------------------------------------------------- where workloads hold images

# The pod spec of each workload kind, by ``group/Kind`` (``Kind`` for the core group). The
# ``extensions`` group's workloads are long gone from the API, but a manifest may still say so.
POD_SPEC_PATHS: Final[Mapping[str, tuple[str, ...]]] = {
    "Pod": ("spec",),
    "PodTemplate": ("template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    **{
        f"{group}/{kind}": ("spec", "template", "spec")
        for group in ("apps", "extensions")
        for kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")
    },
    "batch/Job": ("spec", "template", "spec"),
    "batch/CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
CONTAINER_LISTS: Final = ("initContainers", "containers", "ephemeralContainers")

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ImageField:
    """One container's image in an object: where it is, and the string found there.

    ``image`` is None when there is no string to judge (missing, not a string, or the
    structure around it is malformed); ``problem`` then says why.
    """

    path: Path
    image: str | None
    container: str = ""
    problem: str = ""

    @property
    def location(self) -> str:
        """``spec.template.spec.containers[0].image``."""
        return format_path(self.path)


def format_path(path: Path) -> str:
    """A JSON path in the dotted form Kubernetes uses in its own messages."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def workload_key(obj: Mapping[str, Any]) -> str:
    """``group/Kind`` of an object (``Kind`` for the core group)."""
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    kind = str(obj.get("kind", ""))
    return f"{group}/{kind}" if group else kind


def _containers(spec: Mapping[str, Any], spec_path: Path) -> list[ImageField]:
    found: list[ImageField] = []
    for list_name in CONTAINER_LISTS:
        containers = spec.get(list_name)
        list_path = (*spec_path, list_name)
        if containers is None:
            continue
        if not isinstance(containers, Sequence) or isinstance(containers, str | bytes):
            found.append(ImageField(list_path, None, problem="is not a list of containers"))
            continue
        for index, container in enumerate(containers):
            if not isinstance(container, Mapping):
                found.append(ImageField((*list_path, index), None, problem="is not a container object"))
                continue
            name = container.get("name")
            label = name if isinstance(name, str) else ""
            path = (*list_path, index, "image")
            image = container.get("image")
            if isinstance(image, str):
                found.append(ImageField(path, image, label))
            elif image is None:
                found.append(
                    ImageField(path, None, label, "is missing: gitward cannot verify an image it cannot see")
                )
            else:
                found.append(ImageField(path, None, label, f"is not a string ({type(image).__name__})"))
    return found


def image_fields(obj: Mapping[str, Any]) -> list[ImageField]:
    """Every container, init container and ephemeral container image of a workload, then its image volumes.

    Objects that are not workloads have none. A pod spec that is absent has none (the
    API server refuses such a workload); one that is present but malformed is reported
    as a field with a ``problem``, never skipped, so the gate fails closed.
    """
    path = POD_SPEC_PATHS.get(workload_key(obj))
    if path is None:
        return []
    current: object = obj
    for depth, key in enumerate(path):
        if not isinstance(current, Mapping):
            return [ImageField(path[:depth], None, problem="is not an object")]
        current = current.get(key)
        if current is None:
            return []
    if not isinstance(current, Mapping):
        return [ImageField(path, None, problem="is not an object")]
    return [*_containers(current, path), *_image_volumes(current, path)]


def _image_volumes(spec: Mapping[str, Any], spec_path: Path) -> list[ImageField]:
    """Image volumes (``volumes[].image.reference``): an image the kubelet pulls, like a container's."""
    volumes = spec.get("volumes")
    if not isinstance(volumes, Sequence) or isinstance(volumes, str | bytes):
        return []  # not a list: the API server refuses it; there is no image to judge
    found: list[ImageField] = []
    for index, volume in enumerate(volumes):
        source = volume.get("image") if isinstance(volume, Mapping) else None
        if source is None:
            continue
        path = (*spec_path, "volumes", index, "image", "reference")
        label = str(volume.get("name") or "")
        reference = source.get("reference") if isinstance(source, Mapping) else None
        if isinstance(reference, str):
            found.append(ImageField(path, reference, label))
        else:
            found.append(ImageField(path, None, label, "is not an image reference gitward can verify"))
    return found


def replace_images(obj: Mapping[str, Any], replacements: Mapping[Path, str]) -> dict[str, Any]:
    """A deep copy of ``obj`` with the image at each path (from :func:`image_fields`) replaced."""
    copied: dict[str, Any] = copy.deepcopy(dict(obj))
    for path, image in replacements.items():
        parent: Any = copied
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = image
    return copied
