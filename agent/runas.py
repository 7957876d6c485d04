"""Who an attempt's process runs as: the agent's own user, or the configured `run_as` user
when the agent may switch to it (uid, gid and supplementary groups, set before exec)."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass


@dataclass(frozen=True)
class RunAs:
    """A user an action runs as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @property
    def switches(self) -> bool:
        """Whether starting a process as this user changes who it runs as."""
        return self.uid != os.geteuid()

    @classmethod
    def agent(cls) -> RunAs:
        """The agent's own user: what actions run as without `run_as`."""
        return cls.of(pwd.getpwuid(os.geteuid()))

    @classmethod
    def named(cls, name: str) -> RunAs:
        """The user `name`, if the agent can start processes as it; ValueError saying why
        not (an unknown user, or an agent that may not switch users)."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ValueError(f"there is no user {name!r} on this machine") from None
        user = cls.of(entry)
        if user.switches and os.geteuid() != 0:
            raise ValueError(f"the agent runs as uid {os.geteuid()}, not root, so it cannot "
                             f"start processes as {name!r}")
        return user

    @classmethod
    def of(cls, entry: pwd.struct_passwd) -> RunAs:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)
