"""Who holds an address, and the scalar types every command and event is made of.

Nested structs here follow the schema-evolution policy (docs/events.md#schema-evolution): they
may gain fields with defaults, so decoders never forbid unknown fields; a consumer built on an
older schema reads a newer owner and ignores what it does not know.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

Name = Annotated[str, Meta(min_length=1, max_length=253)]
CommandId = Annotated[str, Meta(min_length=1, max_length=128)]
Millis = Annotated[int, Meta(ge=0, description="milliseconds since the Unix epoch")]
CanonicalMac = Annotated[str, Meta(pattern="^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", description="lower-case colon form")]

# Owners made by the admission webhook before the VM has a uid carry this prefix on vm_uid.
PROVISIONAL_UID_PREFIX = "admission:"


# gc=False: an Owner holds only strings, so the cycle collector need not track the millions an allocator keeps.
class Owner(Struct, frozen=True, gc=False):
    """Who holds a lease: one interface of one VM incarnation."""

    namespace: Name
    vm: Name
    vm_uid: Name
    interface: Name

    def describe(self) -> str:
        return f"{self.namespace}/{self.vm} (uid {self.vm_uid}) interface {self.interface}"


def binds(holder: Owner, owner: Owner) -> bool:
    """Whether a provisional holder (made at admission, before the VM had a uid, and perhaps a
    name: generateName) is the VM ``owner`` that now shows up holding its address."""
    return (
        holder.vm_uid.startswith(PROVISIONAL_UID_PREFIX)
        and not owner.vm_uid.startswith(PROVISIONAL_UID_PREFIX)
        and holder.namespace == owner.namespace
        and holder.interface == owner.interface
        and owner.vm.startswith(holder.vm)
    )


def is_provisional(uid: str) -> bool:
    return uid.startswith(PROVISIONAL_UID_PREFIX)
