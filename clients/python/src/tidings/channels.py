"""Channel names for users, groups and everyone, as the gateway's routing
rules build them (docs/routing.md).

The defaults follow the gateway's default rules (``Rule::defaults``):
``/app/broadcast`` for everyone and ``/app/user/{user}/notifications`` for a
logged-in user. ``/app/group/{group}`` is the group rule of docs/routing.md
("The ws4redis facilities"); the gateway only joins it when its routing lists
that rule. Pass your own :class:`Channels` when your rules differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigurationError, InvalidValue

BROADCAST = "/app/broadcast"
USER = "/app/user/{user}/notifications"
GROUP = "/app/group/{group}"

_GLOB = set("*?[]\\")


def check_value(kind: str, value: object) -> str:
    """The value as the gateway would put it in a template, or InvalidValue
    when the gateway would refuse it (then the template grants nothing, so a
    publish to it would reach nobody: better to fail loudly)."""
    text = str(value)
    problem = None
    if not text:
        problem = "is empty"
    elif len(text.encode("utf-8")) > 128:
        problem = "is longer than 128 bytes"
    elif "/" in text or ".." in text:
        problem = "contains '/' or '..'"
    elif any(c in _GLOB for c in text):
        problem = "contains a glob character (* ? [ ] \\)"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        problem = "contains a control character"
    if problem:
        raise InvalidValue(
            f"{kind} {text!r} {problem}: the gateway puts no such value in a channel"
        )
    return text


@dataclass(frozen=True)
class Channels:
    """Where a user's, a group's and everyone's messages are published."""

    broadcast: str = BROADCAST
    user: str = USER
    group: str = GROUP

    def __post_init__(self) -> None:
        if "{user}" not in self.user:
            raise ConfigurationError(f"the user channel template {self.user!r} lacks {{user}}")
        if "{group}" not in self.group:
            raise ConfigurationError(f"the group channel template {self.group!r} lacks {{group}}")

    def for_user(self, user: object) -> str:
        """The channel of one user (a user id, or anything with a ``pk``)."""
        uid = getattr(user, "pk", user)
        return self.user.replace("{user}", check_value("user id", uid))

    def for_group(self, group: object) -> str:
        """The channel of one group (a name, or anything with a ``name``)."""
        name = getattr(group, "name", group)
        return self.group.replace("{group}", check_value("group", name))


DEFAULT_CHANNELS = Channels()
