"""The connection layer: sessions (one authenticated connection each), the pool that keeps
them alive, and the deadline-bound waits every request makes.

Above the pure layer (`wire`, `protocol`, `tensors`) and the transports; below the public
client. Nothing here is public API.
"""
