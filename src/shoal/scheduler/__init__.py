"""The scheduler: an I/O-free state machine (``state``) and the async driver that obeys it."""
