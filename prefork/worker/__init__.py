"""One worker process: event loop, connections, WebSocket sessions, handler pool."""
