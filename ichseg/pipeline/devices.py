"""The app's devices, per user: the FCM registration tokens that hear when a job ends.

One item per user in the jobs table (single-table design: the key is ``devices#<uid>``, which no
job id can be). It has no ``owner``, ``state`` or ``created_at``, so no job query, list or
watchdog scan ever sees it. It holds a map of at most :data:`MAX_DEVICES` devices by
``device_id`` (a hash of the token: the API never echoes a token back, and a DELETE names a device
without putting the token in a URL). Registering a new one beyond the cap drops the one registered
longest ago: an app reinstalled again and again cannot grow the item without bound.

Writes are optimistic: each one is conditional on the item's ``version``, and a lost race is read
again and redone (two phones registering at once both land).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError

from ichseg.pipeline.jobs import JobStore, utc_iso

MAX_DEVICES = 10
"""Devices one user may register; the oldest goes when an eleventh registers."""
KEY_PREFIX = "devices#"
WRITE_ATTEMPTS = 5
"""Optimistic writes retried after a concurrent one (each is a read and a conditional write)."""


class Platform(StrEnum):
    """Where the app runs (FCM delivers through APNs for iOS)."""

    ANDROID = "android"
    IOS = "ios"
    WEB = "web"


@dataclass(frozen=True)
class Device:
    """One registered app install."""

    device_id: str
    token: str
    platform: Platform
    registered_at: str


def device_id_of(token: str) -> str:
    """The device's id: a hash of its FCM token (stable, so a re-registration is the same device)."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class DeviceRegistry:
    """Each user's devices in the jobs table, through the :class:`JobStore`'s client."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def devices(self, uid: str) -> list[Device]:
        """The user's devices, oldest registration first."""
        devices, _ = self._read(uid)
        return sorted(devices.values(), key=lambda d: (d.registered_at, d.device_id))

    def register(self, uid: str, token: str, platform: Platform) -> Device:
        """Add (or refresh) the device with this token; the oldest goes beyond :data:`MAX_DEVICES`."""
        device = Device(device_id_of(token), token, platform, utc_iso(self.store.clock()))

        def change(devices: dict[str, Device]) -> dict[str, Device]:
            kept = {k: v for k, v in devices.items() if k != device.device_id}
            newest_first = sorted(kept.values(), key=lambda d: (d.registered_at, d.device_id), reverse=True)
            return {d.device_id: d for d in [device, *newest_first[: MAX_DEVICES - 1]]}

        self._write(uid, change)
        return device

    def remove(self, uid: str, device_id: str) -> bool:
        """Forget one of the user's devices; False if it was not registered."""
        removed = False

        def change(devices: dict[str, Device]) -> dict[str, Device]:
            nonlocal removed
            removed = device_id in devices
            return {k: v for k, v in devices.items() if k != device_id}

        self._write(uid, change)
        return removed

    def drop_tokens(self, uid: str, tokens: set[str]) -> int:
        """Forget the devices with these tokens (FCM said they are no longer registered); how many."""
        dropped = 0

        def change(devices: dict[str, Device]) -> dict[str, Device]:
            nonlocal dropped
            kept = {k: v for k, v in devices.items() if v.token not in tokens}
            dropped = len(devices) - len(kept)
            return kept

        self._write(uid, change)
        return dropped

    # ------------------------------------------------------------------ plumbing

    def _key(self, uid: str) -> dict[str, Any]:
        return {"job_id": {"S": KEY_PREFIX + uid}}

    def _read(self, uid: str) -> tuple[dict[str, Device], int]:
        item = self.store.client.get_item(TableName=self.store.table, Key=self._key(uid), ConsistentRead=True)
        item = item.get("Item") or {}
        devices = {
            device_id: Device(
                device_id,
                entry["M"]["token"]["S"],
                Platform(entry["M"]["platform"]["S"]),
                entry["M"]["registered_at"]["S"],
            )
            for device_id, entry in item.get("devices", {}).get("M", {}).items()
        }
        return devices, int(item.get("version", {}).get("N", 0))

    def _write(self, uid: str, change: Any) -> None:
        for _ in range(WRITE_ATTEMPTS):
            devices, version = self._read(uid)
            updated = change(devices)
            if updated == devices:
                return
            item = {
                **self._key(uid),
                "version": {"N": str(version + 1)},
                "devices": {
                    "M": {
                        d.device_id: {
                            "M": {
                                "token": {"S": d.token},
                                "platform": {"S": d.platform.value},
                                "registered_at": {"S": d.registered_at},
                            }
                        }
                        for d in updated.values()
                    }
                },
            }
            condition = "attribute_not_exists(version)" if version == 0 else "version = :version"
            values = {} if version == 0 else {":version": {"N": str(version)}}
            try:
                self.store.client.put_item(
                    TableName=self.store.table,
                    Item=item,
                    ConditionExpression=condition,
                    **({"ExpressionAttributeValues": values} if values else {}),
                )
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
        raise RuntimeError(f"the device list of one user changed {WRITE_ATTEMPTS} times during one write")
