"""The part of a Label Studio labeling config that bayesal serves: one ``<Choices>`` over one ``<Text>``
or ``<Image>``.

Label Studio describes a project's labeling interface in XML, e.g.::

    <View>
      <Text name="text" value="$text"/>
      <Choices name="topic" toName="text" choice="single">
        <Choice value="business"/><Choice value="sport"/>
      </Choices>
    </View>

:func:`parse_label_config` finds the first ``<Choices>`` whose ``toName`` names a ``<Text>``,
``<HyperText>`` or ``<Image>`` tag and returns the class names, the control and object names (they go
into every prediction) and the task data key that holds the item (``$text`` → ``task["data"]["text"]``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from bayesal.exceptions import InvalidInputError

__all__ = ["ChoicesConfig", "parse_label_config", "SUPPORTED_CONFIG"]

TEXT_TAGS = ("Text", "HyperText")
IMAGE_TAGS = ("Image",)

#: A label config this backend accepts (shown in error messages and the README).
SUPPORTED_CONFIG = (
    '<View><Text name="text" value="$text"/>'
    '<Choices name="label" toName="text" choice="single"><Choice value="A"/><Choice value="B"/></Choices></View>'
)


@dataclass(frozen=True)
class ChoicesConfig:
    """A single-object classification interface.

    ``from_name``: the ``<Choices>`` name; ``to_name``: the object tag's name; ``kind``: ``"text"`` or
    ``"image"``; ``data_key``: the key of the item in ``task["data"]``; ``classes``: the ``C ≥ 2`` class
    names in config order; ``aliases``: ``alias → class name`` for ``<Choice alias=...>``.
    """

    from_name: str
    to_name: str
    kind: str
    data_key: str
    classes: tuple[str, ...]
    aliases: tuple[tuple[str, str], ...] = ()

    def class_index(self, name: str) -> int | None:
        """Index of a class given by its value or alias; None if the config has no such choice."""
        name = dict(self.aliases).get(name, name)
        try:
            return self.classes.index(name)
        except ValueError:
            return None

    def to_dict(self) -> dict[str, object]:
        return {
            "from_name": self.from_name,
            "to_name": self.to_name,
            "kind": self.kind,
            "data_key": self.data_key,
            "classes": list(self.classes),
            "aliases": [list(a) for a in self.aliases],
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ChoicesConfig:
        return cls(
            from_name=str(d["from_name"]),
            to_name=str(d["to_name"]),
            kind=str(d["kind"]),
            data_key=str(d["data_key"]),
            classes=tuple(str(c) for c in cast("Iterable[object]", d["classes"])),
            aliases=tuple((str(a), str(b)) for a, b in cast("Iterable[tuple[object, object]]", d.get("aliases", []))),
        )


def _unsupported(why: str) -> InvalidInputError:
    return InvalidInputError(
        f"the Label Studio labeling config is not supported: {why}; bayesal serves one <Choices> over one "
        f"<Text> or <Image>, e.g. {SUPPORTED_CONFIG}"
    )


def parse_label_config(xml: str) -> ChoicesConfig:
    """Parse a Label Studio labeling config (the project's ``label_config`` / ``/setup``'s ``schema``).

    Raises :class:`~bayesal.exceptions.InvalidInputError` when the XML is malformed or holds no
    ``<Choices>`` with at least two ``<Choice>`` over a text or image object.
    """
    if not isinstance(xml, str) or not xml.strip():
        raise _unsupported("it is empty")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise _unsupported(f"it is not well-formed XML ({err})") from err
    objects = {el.get("name"): el for el in root.iter() if el.tag in TEXT_TAGS + IMAGE_TAGS and el.get("name")}
    for choices in root.iter("Choices"):
        target = objects.get(choices.get("toName", ""))
        if target is None:
            continue
        value = target.get("value", "")
        if not value.startswith("$") or len(value) < 2:
            raise _unsupported(f"<{target.tag} name={target.get('name')!r}> must take its item from the task data ($key)")
        if target.get("valueType", "text") == "url" and target.tag in TEXT_TAGS:
            raise _unsupported("text given by URL (valueType=\"url\") would have to be downloaded")
        names: list[str] = []
        aliases: list[tuple[str, str]] = []
        for choice in choices.iter("Choice"):
            name = choice.get("value")
            if name is None:
                continue
            names.append(name)
            if choice.get("alias"):
                aliases.append((choice.get("alias", ""), name))
        if len(names) < 2:
            raise _unsupported(f"<Choices name={choices.get('name')!r}> has {len(names)} <Choice>; need at least 2")
        if len(set(names)) != len(names):
            raise _unsupported(f"<Choices name={choices.get('name')!r}> repeats a <Choice> value")
        return ChoicesConfig(
            from_name=str(choices.get("name")),
            to_name=str(target.get("name")),
            kind="image" if target.tag in IMAGE_TAGS else "text",
            data_key=value[1:],
            classes=tuple(names),
            aliases=tuple(aliases),
        )
    raise _unsupported("no <Choices> points (toName) at a <Text>, <HyperText> or <Image> tag")
