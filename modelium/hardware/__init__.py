"""Hardware: the device inventory and the ledger of Modelium's reservations.

Reports facts only; deciding where a model goes is the brain's job.
"""

from modelium.hardware.devices import Device, Inventory
from modelium.hardware.inventory import GIB, detect_inventory, gpu_memory_usage, host_device
from modelium.hardware.ledger import MemoryLedger

__all__ = [
    "GIB",
    "Device",
    "Inventory",
    "MemoryLedger",
    "detect_inventory",
    "gpu_memory_usage",
    "host_device",
]
