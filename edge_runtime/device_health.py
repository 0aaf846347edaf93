"""The device's health, sampled when a telemetry window closes and when /metrics is scraped.

    health = HealthSampler(data_dir)       # counts this start in data_dir/starts.json
    health.sample()                        # core.window_quality.DeviceHealth

CPU load is the 1-minute load average per core (1.0: every core busy), memory the share in use, disk the
free bytes of the filesystem holding the data directory (the outbox and model slots live there: a full
disk stops updates and telemetry), all from psutil. Temperature is the hottest of the kernel's thermal
zones (/sys/class/thermal/thermal_zone*/temp, millidegrees: the SoC sensor of a Raspberry Pi or a
Jetson), None where the OS exposes none (most servers and containers). Uptime is the agent's, restarts
how many times it started before on this data directory; a start is counted when the sampler is made, so
a crash loop shows as a restart count climbing between windows.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import psutil

from edgefleet.core.window_quality import DeviceHealth

log = logging.getLogger(__name__)
THERMAL_ROOT = Path("/sys/class/thermal")


class HealthSampler:
    def __init__(self, data_dir: Path, *, thermal_root: Path = THERMAL_ROOT) -> None:
        self.data_dir = Path(data_dir)
        self.thermal_root = thermal_root
        self.started = time.monotonic()
        self.restarts = self._count_start()

    def sample(self) -> DeviceHealth:
        cores = os.cpu_count() or 1
        return DeviceHealth(
            cpu_load=psutil.getloadavg()[0] / cores, memory_used=psutil.virtual_memory().percent / 100.0,
            disk_free_bytes=int(psutil.disk_usage(str(self.data_dir)).free), temperature_c=self.temperature(),
            uptime_seconds=time.monotonic() - self.started, restarts=self.restarts,
        )

    def temperature(self) -> float | None:
        """The hottest thermal zone in degrees Celsius, or None without any readable zone."""
        readings = []
        for zone in sorted(self.thermal_root.glob("thermal_zone*/temp")):
            try:
                readings.append(int(zone.read_text().strip()) / 1000.0)
            except (OSError, ValueError):  # a zone whose sensor is off reads EINVAL or nothing
                continue
        readings = [value for value in readings if -273.15 <= value <= 1000.0]
        return max(readings) if readings else None

    def _count_start(self) -> int:
        """Adds this start to data_dir/starts.json; returns the starts before it."""
        path = self.data_dir / "starts.json"
        try:
            before = int(json.loads(path.read_text()).get("starts", 0))
        except (OSError, ValueError, AttributeError):
            before = 0
        try:
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps({"starts": before + 1}))
            os.replace(temporary, path)
        except OSError as err:  # a read-only data dir: health still reports, restarts stay as read
            log.warning("cannot record this start in %s: %s", path, err)
        return max(before, 0)
