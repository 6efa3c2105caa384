"""How much memory a white-box step can still take on this machine, and keeping freed memory from inflating the
process (used by udcbench.models.memory and the run's --memory decision)."""
from __future__ import annotations

import ctypes
import ctypes.util
import resource

import torch

from udcbench.errors import SpecError

MMAP_THRESHOLD = 128 * 1024  # glibc: allocations from this size on are mmapped, and unmapped when freed


def return_freed_memory() -> bool:
    """Make glibc map every allocation of MMAP_THRESHOLD bytes or more separately and unmap it when freed.

    By default glibc raises that threshold as large blocks are freed (up to 32 MB), after which blocks freed by
    the backward pass stay in the heap: measured on Uformer-B at 512×512, peak RSS was then 2.4× the tensors
    alive at the peak with checkpointing (1.5× without); with the fixed threshold 1.3× (1.05×). Fresh mappings
    cost page faults, which importing udcbench keeps down by asking torch to put buffers of 2 MB and more on
    transparent huge pages (THP_MEM_ALLOC_ENABLE=1 unless set otherwise; see benchmarks/RESULTS.md). udcbench
    calls it for CPU runs that checkpoint or whose step is estimated above a quarter of the available memory
    (runner/accelerate.py); a no-op (False) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, MMAP_THRESHOLD))  # M_MMAP_THRESHOLD; also stops its dynamic adjustment
    except (OSError, AttributeError):
        return False


def _cgroup_headroom() -> int | None:
    """limit − usage of this process's memory cgroup (v2 memory.max, v1 memory.limit_in_bytes), if limited."""
    def read(path: str) -> int | None:
        try:
            with open(path) as handle:
                return int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):  # missing, or "max" (no limit)
            return None

    try:
        with open("/proc/self/cgroup") as handle:
            lines = [line.strip().split(":", 2) for line in handle if line.count(":") >= 2]
    except OSError:
        return None
    for _, controllers, path in lines:
        if controllers == "" or "memory" in controllers.split(","):
            root, files = (("/sys/fs/cgroup", ("memory.max", "memory.current")) if controllers == "" else
                           ("/sys/fs/cgroup/memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")))
            for folder in (root + path, root):  # inside a container the own cgroup is often mounted as the root
                limit, usage = (read(f"{folder}/{name}") for name in files)
                if limit is not None and usage is not None and limit < 2 ** 60:
                    return max(0, limit - usage)
    return None


def _address_space_headroom() -> int | None:
    """RLIMIT_AS − the address space in use (VmSize), if the process has such a cap (e.g. `ulimit -v`)."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    with open("/proc/self/status") as handle:
        return max(0, limit - next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmSize:")))


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Memory a step on `device` can still take. CPU: the least of MemAvailable (/proc/meminfo), the memory
    cgroup's limit − usage and an address-space rlimit's headroom. CUDA: free device memory
    (torch.cuda.mem_get_info) plus what PyTorch's caching allocator holds unused."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        raise SpecError(f"memory estimates support cpu and cuda devices, not {device.type}")
    with open("/proc/meminfo") as handle:
        available = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemAvailable:"))
    return min(x for x in (available, _cgroup_headroom(), _address_space_headroom()) if x is not None)
