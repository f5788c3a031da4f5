"""What this machine can hold, without torch: host RAM (physical memory, or the container's cgroup limit when lower).

The memory checks of the command line and the pipelines compare the memory planner's predictions with it.
"""

from __future__ import annotations

import os
from pathlib import Path

# cgroup v2 and v1 memory limits; "max" or a huge number means unlimited.
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def host_memory_bytes() -> int | None:
    """Physical RAM in bytes (lowered to the cgroup memory limit in a container); ``None`` if the OS does not say."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system with these names
        return None
    for limit_file in CGROUP_LIMITS:
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total if total > 0 else None
